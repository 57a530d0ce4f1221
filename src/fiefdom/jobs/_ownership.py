"""The port through which an engine learns which domain keys it may run: the
partitions its process holds a lease on. ``fiefdom.cluster`` implements it (its
``Node``) and registers itself as the default; an engine that serves a domain joins
the store's cluster through it with no configuration. ``ClusterView`` (with its
``ClusterMember``, ``ClusterEvent`` and ``ClusterCounters``) is what a node tells of
the cluster: the engine's statistics carry it to ``fiefdom status`` and ``/metrics``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Hashable
from typing import Any, Protocol

import msgspec

from .._lifecycle import State, StopMode
from ..actors import Domain
from ..storage import Store


class ClusterMember(msgspec.Struct, frozen=True, kw_only=True):
    """One node of the cluster as a node saw it at its last look at the partition
    table: the partitions it holds a live lease on and the range of their epochs."""

    node: str
    partitions: int  # partitions it holds a live lease on
    min_epoch: int | None = None  # None: it holds none
    max_epoch: int | None = None
    lapsed: int = 0  # partitions still recorded as its whose lease has expired
    alive: bool = True  # its heartbeat is live (False: silent, its leases lapse)


class ClusterEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Something that happened to a node's membership, at ``at`` (unix seconds).
    ``kind`` is one of: ``joined``, ``left``, ``claimed`` (partitions no node held
    before, or its own back), ``received`` (partitions another node released: a
    handoff), ``took_over`` (partitions whose owner's lease had expired),
    ``handed_over`` (released to a node that joined), ``lost`` (taken over by another
    node while this one held them), ``expired`` (leases that expired while this node
    held them, by the store's clock: their work was stopped), ``fenced``
    (given up because the leases could not be renewed), ``peer_joined``,
    ``peer_gone``. ``nodes`` names the other nodes concerned, where known."""

    at: float
    kind: str
    partitions: int = 0
    nodes: list[str] = msgspec.field(default_factory=list)


class ClusterCounters(msgspec.Struct, frozen=True, kw_only=True):
    """A node's counts since it started: lease rounds renewed and failed, and
    partitions by how they were gained or given up."""

    renewals: int = 0  # lease rounds that succeeded
    renewal_failures: int = 0  # lease rounds that failed (the store did not answer)
    claimed: int = 0  # partitions taken that no node held (or its own back)
    received: int = 0  # partitions taken after another node released them
    took_over: int = 0  # partitions taken from an owner whose lease had expired
    handed_over: int = 0  # partitions released to a node that joined
    handoffs: int = 0  # rounds that handed partitions over
    lost: int = 0  # partitions another node took over while this one held them
    # partitions whose lease expired while this node held them, by the store's clock
    # (a suspended machine, a clock step), their work stopped
    expired: int = 0
    fences: int = 0  # times it gave up every partition for want of renewing
    forwarded: int = 0  # asks and tells sent to the node owning their key
    forward_failures: int = 0  # of those, the ones that failed (no reply, or an error)
    forward_seconds: float = 0.0  # the time the forwarded ones that succeeded took
    # connections to its peer server that admission closed or refused (too many at once)
    peer_connections_refused: int = 0


class ClusterView(msgspec.Struct, frozen=True, kw_only=True):
    """A node's view of its cluster: itself (``node``, the ``partitions`` it holds and
    the range of their epochs), every node of the partition table as its last look
    (``as_of``, unix seconds; None before the first) read it, the partitions no node
    holds a live lease on, its counters and its last events (oldest first)."""

    node: str
    partitions: int
    min_epoch: int | None = None
    max_epoch: int | None = None
    members: list[ClusterMember] = msgspec.field(default_factory=list)
    unowned: int = 0
    as_of: float | None = None
    counters: ClusterCounters = msgspec.field(default_factory=ClusterCounters)
    events: list[ClusterEvent] = msgspec.field(default_factory=list)


class Ownership(Protocol):
    """What an engine needs of the cluster membership of its process."""

    @property
    def state(self) -> State: ...

    async def start(self) -> None:
        """Join and hold this node's fair share of partitions; returns once the first
        round of leases is taken (a node alone holds every partition)."""

    async def stop(self, mode: StopMode = "drain") -> None:
        """Leave: release every lease at once, so another node takes over without
        waiting for them to expire."""

    def claimable(self) -> Collection[int] | None:
        """The partitions whose keyed jobs may be claimed now; None for all of them."""

    def owns(self, partition: int) -> bool: ...

    @property
    def held(self) -> int:
        """How many partitions this node holds now."""
        ...

    @property
    def live_nodes(self) -> list[str]:
        """The ids of the live nodes of the cluster at the last round."""
        ...

    def epoch(self, partition: int) -> int | None:
        """The epoch this node holds ``partition`` under, or None."""

    def view(self) -> ClusterView:
        """What this node knows of the cluster now, without asking the store (the
        partition table as its last round read it): it never fails."""

    def is_local(self, key: Hashable) -> bool:
        """Whether this node owns domain key ``key`` now (a domain's Placement)."""

    def serve(self, name: str, domain: Domain[Any, Any]) -> Callable[[], None]:
        """Make ``domain`` (the engine's domain ``name``) activate only the keys this
        node owns (and send messages for the others to their owners, if it can);
        returns the function that undoes it."""

    def on_lost(
        self, callback: Callable[[frozenset[int], bool], Awaitable[None] | None]
    ) -> Callable[[], None]:
        """Call ``callback(partitions, urgent)`` when leases are lost or given up:
        ``urgent`` (the leases are expiring, or were taken over) means stop the work
        on them at once; otherwise (a handoff) take nothing new and let what runs
        finish. It may return an awaitable that ends once that work has stopped
        (awaited before a handoff releases the leases, while they still last)."""


# (store, node name, lease seconds, listen, advertised address) -> the node; the
# engine's lease sets the timing.
OwnershipFactory = Callable[[Store, str, float, str, str | None], Ownership]
_default: OwnershipFactory | None = None


def register_ownership(factory: OwnershipFactory) -> None:
    """Make ``factory(store, node_name, lease, listen, address)`` the ownership every
    engine that serves a domain creates (``fiefdom.cluster`` calls this when it is
    imported): ``listen`` is where its node serves the other nodes, ``address`` what
    it advertises to them (None: the address it listens on)."""
    global _default
    _default = factory


def default_ownership() -> OwnershipFactory | None:
    return _default
