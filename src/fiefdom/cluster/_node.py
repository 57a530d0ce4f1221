"""``Node``: this process's membership of the store's cluster. It heartbeats its
node row, takes its fair share of the partitions (partition ``p`` belongs to the
``p % n``-th of the ``n`` live nodes, by id), renews those leases, hands over the
ones that are no longer its share, and fences itself: when it cannot renew, it
gives up every partition before the lease could expire, measured on its own
monotonic clock with a margin. A node alone holds every partition. Each round also
reads the partition table (one query), which with the node's counters and last
events (``_view``) makes what ``view()`` tells of the cluster."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Collection, Hashable
from typing import Any

import anyio

from .._errors import ConfigurationError, StoreError
from .._lifecycle import Lifecycle, State, StopMode
from .._log import get_logger
from .._throttle import Throttle
from ..actors import Domain
from ..jobs._ownership import ClusterView
from ..storage import PARTITIONS, Store, leases, partition_of
from ._view import Ledger, Row

log = get_logger("fiefdom.cluster")

_ALL = frozenset(range(PARTITIONS))


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Timing of membership. A lease lasts ``lease`` seconds and is renewed every
    ``renew`` seconds; a node that could not renew stops its work on the partitions
    ``margin`` seconds before the lease would expire. ``address`` is where other
    nodes reach this one (advertised in the node table)."""

    lease: float = 15.0
    renew: float = 5.0
    margin: float = 3.0
    address: str | None = None

    def __post_init__(self) -> None:
        if not self.margin > 0:
            raise ConfigurationError(f"cluster margin must be positive, got {self.margin}")
        if not 0 < self.renew < self.lease - self.margin:
            raise ConfigurationError(
                f"cluster renew ({self.renew}s) must be positive and shorter than the lease "
                f"({self.lease}s) minus the margin ({self.margin}s)"
            )


class Node:
    """One process's membership of the cluster of ``store`` (see the module doc).
    ``async with Node(store, name)``, or ``start()`` / ``stop()``; a ``JobEngine``
    serving a domain runs one by itself."""

    def __init__(self, store: Store, name: str, settings: ClusterSettings | None = None) -> None:
        self.id = name
        self.settings = settings or ClusterSettings()
        self._leases = leases(store)
        self._life = Lifecycle(
            f"cluster node {name}", "its JobEngine starts it, or use 'async with Node(store, name)'"
        )
        self._held: dict[int, int] = {}  # partition -> epoch
        self._all = False
        self._fresh_until = -math.inf  # set with _renewed_at
        self._renewed_at = -math.inf  # monotonic time the last successful round began
        self._callbacks: list[Callable[[frozenset[int], bool], Awaitable[None] | None]] = []
        self._task: asyncio.Task[None] | None = None
        self.live_nodes: list[str] = []
        self._throttle = Throttle()
        self._ledger = Ledger(name)

    # -- what others ask -------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._life.state

    @property
    def _renewed_at(self) -> float:
        return self._renewed

    @_renewed_at.setter
    def _renewed_at(self, at: float) -> None:
        # The fence time with it: a domain's actors ask is_local before each message.
        self._renewed = at
        self._fresh_until = at + self.settings.lease - self.settings.margin

    def _fresh(self) -> bool:
        """Whether the leases held are still this node's on its own monotonic clock:
        a process stopped past its fence time (SIGSTOP, a long pause) learns on
        resuming that they are not, before its lease loop has had a turn."""
        return time.monotonic() < self._fresh_until

    def claimable(self) -> Collection[int] | None:
        if not self._fresh():
            return frozenset()
        return None if self._all else frozenset(self._held)

    def owns(self, partition: int) -> bool:
        return (self._all or partition in self._held) and self._fresh()

    def is_local(self, key: Hashable) -> bool:
        """Whether this node owns ``key`` now (the actors' Placement port)."""
        return (self._all or partition_of(key) in self._held) and (
            time.monotonic() < self._fresh_until
        )

    def serve(self, name: str, domain: Domain[Any, Any]) -> Callable[[], None]:
        """Activate only the keys of ``domain`` (known to the cluster as ``name``) this
        node owns (a message for another key fails ``OwnerUnavailable``); returns the
        function that undoes it."""
        return domain.add_placement(self)

    def epoch(self, partition: int) -> int | None:
        """The epoch this node holds ``partition`` under, or None."""
        return self._held.get(partition)

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def fences(self) -> int:
        """Times this node gave up every partition for want of renewing its leases."""
        return self._ledger.counts.fences

    @property
    def handoffs(self) -> int:
        """Rounds in which this node handed partitions over to a node that joined."""
        return self._ledger.counts.handoffs

    def view(self) -> ClusterView:
        """This node's view of the cluster (see ``ClusterView``), from memory: the
        partition table as its last successful round read it, never the store now."""
        return self._ledger.view(self._held)

    def on_lost(
        self, callback: Callable[[frozenset[int], bool], Awaitable[None] | None]
    ) -> Callable[[], None]:
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unsubscribe

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._life.begin_start()
        try:
            # Bounded: a store that does not answer must not hold up the engine's start.
            with anyio.fail_after(self.settings.lease):
                await self._round()
        except (StoreError, TimeoutError) as exc:
            # Holding nothing is safe: the loop keeps trying.
            self._ledger.counts.renewal_failures += 1
            log.warning("could not join the cluster yet; retrying", node=self.id, error=str(exc))
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"cluster/{self.id}")
        self._life.started()

    async def stop(self, mode: StopMode = "drain") -> None:
        if not self._life.begin_stop():
            return
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait({task})
        holding = len(self._held)
        stopping = self._lose(frozenset(self._held), urgent=False)
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.settings.renew):
            for waiting in stopping:
                await waiting
        _forget(stopping)
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(self.settings.renew):
                # Released at once: another node takes over without waiting for expiry.
                await self._leases.leave(self.id)
        except (StoreError, TimeoutError) as exc:
            log.warning(
                "could not hand over leases; they will expire", node=self.id, error=str(exc)
            )
        self._ledger.note("left", holding)
        self._life.stopped()

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- rounds ----------------------------------------------------------------------

    async def _loop(self) -> None:
        settings = self.settings
        while True:
            now = time.monotonic()
            fence_at = self._renewed_at + settings.lease - settings.margin
            wake = now + settings.renew
            if self._held:
                wake = min(wake, fence_at)
            await anyio.sleep(max(0.0, wake - now))
            try:
                # A round that hangs (a network cut) must not outlive the fence.
                with anyio.fail_after(
                    max(0.01, fence_at - time.monotonic()) if self._held else None
                ):
                    await self._round()
            except (StoreError, TimeoutError) as exc:
                self._ledger.counts.renewal_failures += 1
                if self._held and time.monotonic() >= fence_at:
                    self._ledger.fenced(len(self._held))
                    log.error(
                        "cannot renew partition leases: stopping their work before they expire",
                        node=self.id,
                        partitions=len(self._held),
                        error=str(exc) or type(exc).__name__,
                    )
                    # No time to wait for the work to stop: the leases are expiring.
                    _forget(self._lose(frozenset(self._held), urgent=True))
                else:
                    self._throttle.warning(
                        log, "renewing partition leases failed", node=self.id, error=str(exc)
                    )

    async def _round(self) -> None:
        began = time.monotonic()
        settings = self.settings
        live = await self._leases.heartbeat(self.id, settings.address, settings.lease)
        if self.id not in live:
            live = sorted([*live, self.id])
        index, count = live.index(self.id), len(live)
        wanted = [p for p in range(PARTITIONS) if p % count == index]
        # Read before the hold: who held what this node gains tells a takeover apart.
        table = await self._table()
        got = await self._leases.hold(self.id, wanted, settings.lease)
        extra = frozenset(self._held) - frozenset(wanted)
        gone = frozenset(self._held) - frozenset(got) - extra
        # Expired under this node: held again under a new epoch, or passed over while
        # a transaction held its row (PostgreSQL) with the table still naming this
        # node. Its lease ran out by the store's clock, not by this node's monotonic
        # one (a machine suspended and resumed, a clock step: else the node had
        # fenced itself), and whoever held it meanwhile may have run its keys: the work
        # begun under the old epoch stops as for a loss.
        mine = frozenset() if table is None else frozenset(r[0] for r in table if r[1] == self.id)
        expired = (gone & mine) | frozenset(
            p for p, epoch in got.items() if self._held.get(p, epoch) != epoch
        )
        lost = gone - expired
        # Work that may no longer be this node's stops first, before a handoff waits.
        if lost:
            log.warning("partition leases taken over", node=self.id, partitions=sorted(lost))
            self._ledger.lost(len(lost))
            _forget(self._lose(lost, urgent=True))
        if expired:
            log.warning(
                "partition leases expired while held: their work stops",
                node=self.id,
                partitions=sorted(expired),
            )
            self._ledger.expired(len(expired))
            _forget(self._lose(expired, urgent=True))
        if extra:
            # No longer this node's share (a node joined): stop their work, wait until
            # it has stopped (while the leases still last), then hand over.
            stopping = self._lose(extra, urgent=False)
            left = self._renewed_at + settings.lease - 2 * settings.margin - time.monotonic()
            with anyio.move_on_after(max(0.0, left)) as scope:
                for waiting in stopping:
                    await waiting
            _forget(stopping)
            if scope.cancelled_caught:
                # Handlers that outlast the leases are cancelled before the release.
                stopping = self._lose(extra, urgent=True)
                with anyio.move_on_after(settings.margin):
                    for waiting in stopping:
                        await waiting
                _forget(stopping)
            await self._leases.release(self.id, sorted(extra))
            self._ledger.handed_over(len(extra), {live[p % count] for p in extra})
        gained = frozenset(got) - frozenset(self._held)
        self._held = dict(got)
        self._all = frozenset(got) == _ALL
        self._renewed_at = began
        ledger = self._ledger
        ledger.counts.renewals += 1
        ledger.met(live)
        ledger.gained(gained, table, live)
        if table is not None:
            ledger.looked(table, self._held, live)
        if gained or extra or live != self.live_nodes:
            log.info(
                "cluster membership",
                node=self.id,
                nodes=len(live),
                partitions=len(got),
                gained=len(gained),
                handed_over=len(extra),
            )
        self.live_nodes = live

    async def _table(self) -> list[Row] | None:
        """The partition table, or None if it could not be read (the round goes on:
        renewing the leases matters, the view keeps its last look)."""
        try:
            return await self._leases.owners()
        except StoreError as exc:
            self._throttle.warning(
                log, "reading the partition table failed", node=self.id, error=str(exc)
            )
            return None

    def _lose(self, partitions: frozenset[int], *, urgent: bool) -> list[Awaitable[None]]:
        """Stop counting ``partitions`` as held and tell the callbacks; returns what
        they gave to wait for (their work on the partitions ending)."""
        if not partitions:
            return []
        for p in partitions:
            self._held.pop(p, None)
        self._all = False
        waits: list[Awaitable[None]] = []
        for callback in list(self._callbacks):
            try:
                waiting = callback(partitions, urgent)
            except Exception:
                log.exception("a lost-partitions callback raised", node=self.id)
                continue
            if waiting is not None:
                waits.append(waiting)
        return waits

    def __repr__(self) -> str:
        return f"<Node {self.id} {self.state} holding {len(self._held)} partitions>"


def _forget(waits: list[Awaitable[None]]) -> None:
    """Drop the waits not (or no longer) awaited: a coroutine is closed, not leaked."""
    for waiting in waits:
        if inspect.iscoroutine(waiting):
            waiting.close()
