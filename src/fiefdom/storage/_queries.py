"""The engine's port into a store: the queries only ``fiefdom.jobs`` uses (claim,
finish, heartbeat, rescue, promote, prune, periodic inserts, notifications). They
are kept off the public ``Store`` face; ``engine_queries(store)`` hands them out."""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

from .._errors import StaleLease
from ._jobs import ClaimedJob, JobState, Lease, Outcome
from ._rows import NewJob

if TYPE_CHECKING:
    from ._store import Notifications, Store


class EngineQueries(abc.ABC):
    """One dialect's engine-side queries over an open ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def subscribe(self, subscriber: Notifications) -> Callable[[], None]:
        """Deliver wake-ups from this process's own writes to ``subscriber``;
        returns the function that ends the subscription."""
        return self.store._subscribe(subscriber)

    async def listen(self, subscriber: Notifications, ready: Callable[[], None]) -> None:
        """Deliver wake-ups from other processes until cancelled. Raises
        StoreUnavailable when the connection is lost (the caller reconnects).
        A backend without cross-process notifications waits forever."""
        import anyio

        ready()
        await anyio.sleep_forever()

    @abc.abstractmethod
    async def claim(
        self,
        queue: str,
        limit: int,
        *,
        worker: str,
        lease: float,
        partitions: Collection[int] | None = None,
    ) -> list[ClaimedJob]:
        """Atomically take up to ``limit`` available jobs of ``queue`` (priority, then
        run_at, then id), each with a lease of ``lease`` seconds and a new token.
        Jobs of a domain key that has a job running are skipped; given
        ``partitions``, so are keyed jobs of every other partition."""

    @abc.abstractmethod
    async def finish(self, outcomes: Sequence[Outcome]) -> dict[int, JobState]:
        """Record outcomes; returns, for each job whose lease was current, the state
        it ended in: the outcome's, or ``cancelled`` when it was superseded by a
        waiting duplicate holding its unique key. Stale leases are left out (they
        changed nothing)."""

    async def complete(self, lease: Lease) -> None:
        """Mark one job completed; StaleLease when the lease was taken over."""
        outcome = Outcome(lease=lease, state=JobState.COMPLETED)
        if lease.job_id not in await self.finish([outcome]):
            raise StaleLease(
                f"job {lease.job_id}: lease token {lease.token} is no longer current (the "
                "lease expired and the job was claimed again, or it finished); its "
                "completed outcome was not recorded"
            )

    @abc.abstractmethod
    async def heartbeat(
        self, leases: Sequence[Lease], *, lease: float
    ) -> tuple[set[int], set[int]]:
        """Extend the leases; returns (ids still held, ids asked to cancel)."""

    @abc.abstractmethod
    async def rescue(self) -> list[tuple[int, str, str, JobState]]:
        """Take back jobs whose lease expired: available at once, or discarded when
        out of attempts (cancelled if a cancel was asked). Returns (id, kind, queue,
        new state) of each."""

    @abc.abstractmethod
    async def promote(self) -> list[str]:
        """Make scheduled and retryable jobs whose time has come available; returns
        the queues that got jobs."""

    @abc.abstractmethod
    async def prune(
        self, *, completed: float, cancelled: float, discarded: float, limit: int = 10_000
    ) -> int:
        """Delete final jobs older than the given ages (seconds); returns how many."""

    async def insert_periodic(self, row: NewJob) -> bool:
        """Insert a periodic job's row for its slot unless another engine did."""
        result = await self.store._insert_rows([row])
        return not result[0].duplicate


class Leases(abc.ABC):
    """One dialect's statements of the cluster's membership and partition leases
    (``fiefdom.cluster`` uses them). Each lease change is one atomic statement: the
    database is the coordination service."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @abc.abstractmethod
    async def heartbeat(self, node: str, address: str | None, lease: float) -> list[str]:
        """Record that ``node`` is alive (registering it if new) and return the ids
        of every live node, sorted: those whose heartbeat is younger than ``lease``."""

    @abc.abstractmethod
    async def hold(self, node: str, partitions: Sequence[int], lease: float) -> dict[int, int]:
        """Take or renew the lease of each of ``partitions`` that is free, expired or
        already ``node``'s, for ``lease`` seconds; returns partition -> epoch of each
        now held. The epoch grows whenever the partition was not held by ``node``
        with a live lease (a new owner, or the same one after a lapse)."""

    @abc.abstractmethod
    async def release(self, node: str, partitions: Sequence[int]) -> None:
        """Give up ``node``'s leases of ``partitions`` (a handoff)."""

    @abc.abstractmethod
    async def leave(self, node: str) -> None:
        """Release every lease of ``node`` and forget it (a graceful stop)."""

    @abc.abstractmethod
    async def owners(self) -> list[tuple[int, str | None, int, bool]]:
        """Every partition: (partition, owner, epoch, lease live)."""

    @abc.abstractmethod
    async def addresses(self) -> dict[str, str | None]:
        """Every known node's advertised address (None: it advertises none)."""

    @abc.abstractmethod
    async def shared(self, name: str, proposed: str) -> str:
        """The cluster-wide setting ``name``: ``proposed`` if no node set it before
        (one atomic statement: concurrent first nodes agree on one value)."""
