"""What a cluster node has seen, for ``fiefdom status`` and ``/metrics``: counters of
its lease rounds and of the partitions it gained and gave up, its last events, and
the cluster (nodes, their partition counts and epochs) as the partition table read
at its last round said, with its own leases of that round laid over it. All of it
is kept in memory and bounded: a view is built from it without asking the store."""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Collection, Iterable, Mapping, Sequence

from ..jobs._ownership import ClusterCounters, ClusterEvent, ClusterMember, ClusterView

EVENTS = 20  # the last events a node keeps

# One row of the partition table: (partition, owner, epoch, lease live).
Row = tuple[int, str | None, int, bool]


@dataclasses.dataclass(slots=True)
class _Counts:
    renewals: int = 0
    renewal_failures: int = 0
    claimed: int = 0
    received: int = 0
    took_over: int = 0
    handed_over: int = 0
    handoffs: int = 0
    lost: int = 0
    expired: int = 0
    fences: int = 0


class Ledger:
    """The counters, events and last look at the cluster of node ``node``."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.counts = _Counts()
        self._events: collections.deque[ClusterEvent] = collections.deque(maxlen=EVENTS)
        self._members: list[ClusterMember] = []
        self._unowned = 0
        self._as_of: float | None = None
        self._peers: frozenset[str] | None = None  # None: not joined yet

    def note(self, kind: str, partitions: int = 0, nodes: Iterable[str] = ()) -> None:
        self._events.append(
            ClusterEvent(at=time.time(), kind=kind, partitions=partitions, nodes=sorted(nodes))
        )

    # -- what a round did ------------------------------------------------------------

    def met(self, live: Sequence[str]) -> None:
        """The live nodes of a successful round: the first one is this node's join,
        later changes are peers joining or going silent."""
        peers = frozenset(live) - {self.node}
        if self._peers is None:
            self.note("joined", nodes=peers)
        else:
            if peers - self._peers:
                self.note("peer_joined", nodes=peers - self._peers)
            if self._peers - peers:
                self.note("peer_gone", nodes=self._peers - peers)
        self._peers = peers

    def gained(
        self, partitions: Collection[int], table: Sequence[Row] | None, live: Collection[str]
    ) -> None:
        """Count ``partitions`` (newly held this round) by how they came, from the
        partition table as read before this round took them (None: it could not be
        read, and they count as claimed) and the round's ``live`` nodes."""
        if not partitions:
            return
        before = {row[0]: row for row in table} if table is not None else {}
        claimed = received = 0
        took: dict[str, int] = {}
        gave: set[str] = set()
        for p in partitions:
            _, owner, epoch, lease_live = before.get(p, (p, None, 0, False))
            if owner == self.node or (owner is None and epoch == 0):
                claimed += 1  # never held by anyone, or this node's own back
            elif owner is None or (lease_live and owner in live):
                # Released by its owner (a handoff, a node leaving), maybe just after
                # the table was read: its owner is alive and its lease was too.
                received += 1
                if owner is not None:
                    gave.add(owner)
            else:
                # Its owner's lease had expired, or the owner fell silent (its leases
                # run out right after its heartbeat does).
                took[owner] = took.get(owner, 0) + 1
        counts = self.counts
        if claimed:
            counts.claimed += claimed
            self.note("claimed", claimed)
        if received:
            counts.received += received
            self.note("received", received, gave)
        if took:
            counts.took_over += sum(took.values())
            self.note("took_over", sum(took.values()), took)

    def handed_over(self, partitions: int, to: Iterable[str]) -> None:
        self.counts.handoffs += 1
        self.counts.handed_over += partitions
        self.note("handed_over", partitions, to)

    def lost(self, partitions: int) -> None:
        self.counts.lost += partitions
        self.note("lost", partitions)

    def expired(self, partitions: int) -> None:
        self.counts.expired += partitions
        self.note("expired", partitions)

    def fenced(self, partitions: int) -> None:
        self.counts.fences += 1
        self.note("fenced", partitions)

    def looked(self, table: Sequence[Row], held: Mapping[int, int], live: Sequence[str]) -> None:
        """Keep the cluster as ``table`` (read during this round, before its leases
        were taken) and this node's leases now (``held``) say."""
        epochs: dict[str, list[int]] = {}
        lapsed: dict[str, int] = {}
        unowned = 0
        for partition, owner, epoch, lease_live in table:
            if partition in held:
                owner, epoch, lease_live = self.node, held[partition], True
            elif owner == self.node:
                owner = None  # given up this round: whoever takes it shows next round
            if owner is None or not lease_live:
                unowned += 1
                if owner is not None:
                    lapsed[owner] = lapsed.get(owner, 0) + 1
                continue
            epochs.setdefault(owner, []).append(epoch)
        alive = set(live) | {self.node}
        self._members = [
            _member(node, epochs.get(node, ()), lapsed.get(node, 0), node in alive)
            for node in sorted(alive | set(epochs) | set(lapsed))
        ]
        self._unowned = unowned
        self._as_of = time.time()

    # -- what others ask -------------------------------------------------------------

    def view(self, held: Mapping[int, int]) -> ClusterView:
        """The view now: the last look, with this node's own entry as it holds now
        (it may have given partitions up since, when fenced or stopped)."""
        epochs = list(held.values())
        members = [
            m if m.node != self.node else _member(self.node, epochs, m.lapsed, m.alive)
            for m in self._members
        ]
        return ClusterView(
            node=self.node,
            partitions=len(held),
            min_epoch=min(epochs, default=None),
            max_epoch=max(epochs, default=None),
            members=members,
            unowned=self._unowned,
            as_of=self._as_of,
            counters=ClusterCounters(**dataclasses.asdict(self.counts)),
            events=list(self._events),
        )


def _member(node: str, epochs: Collection[int], lapsed: int, alive: bool) -> ClusterMember:
    return ClusterMember(
        node=node,
        partitions=len(epochs),
        min_epoch=min(epochs, default=None),
        max_epoch=max(epochs, default=None),
        lapsed=lapsed,
        alive=alive,
    )
