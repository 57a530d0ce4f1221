"""The port through which an engine learns which domain keys it may run: the
partitions its process holds a lease on. ``fiefdom.cluster`` implements it (its
``Node``) and registers itself as the default; an engine that serves a domain joins
the store's cluster through it with no configuration."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Hashable
from typing import Protocol

from .._lifecycle import State, StopMode
from ..storage import Store


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

    def is_local(self, key: Hashable) -> bool:
        """Whether this node owns domain key ``key`` now (a domain's Placement)."""

    def on_lost(
        self, callback: Callable[[frozenset[int], bool], Awaitable[None] | None]
    ) -> Callable[[], None]:
        """Call ``callback(partitions, urgent)`` when leases are lost or given up:
        ``urgent`` (the leases are expiring, or were taken over) means stop the work
        on them at once; otherwise (a handoff) take nothing new and let what runs
        finish. It may return an awaitable that ends once that work has stopped
        (awaited before a handoff releases the leases, while they still last)."""


# (store, node name, lease seconds) -> the node; the engine's lease sets the timing.
OwnershipFactory = Callable[[Store, str, float], Ownership]
_default: OwnershipFactory | None = None


def register_ownership(factory: OwnershipFactory) -> None:
    """Make ``factory(store, node_name, lease)`` the ownership every engine that serves
    a domain creates (``fiefdom.cluster`` calls this when it is imported)."""
    global _default
    _default = factory


def default_ownership() -> OwnershipFactory | None:
    return _default
