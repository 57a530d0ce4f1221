"""What a ``Domain`` shows and asks of the rest: its statistics, and the ports the
cluster implements to place its keys (``Placement``) and forward messages for keys
owned elsewhere (``Forwarder``)."""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Any, Protocol

import msgspec

from ._message import Request


class Placement(Protocol):
    """Which keys this process may activate: the port the cluster implements. Asked as
    a key is activated and before each message its actor takes: keep it cheap."""

    def is_local(self, key: Hashable) -> bool: ...


class Forwarder(Protocol):
    """Delivers a message for a key of one domain owned by another node of the
    cluster to that node (the cluster implements it). An ask keeps its deadline and
    call chain."""

    async def forward_ask(self, key: Hashable, msg: Request[Any], timeout: float | None) -> Any: ...

    async def forward_tell(self, key: Hashable, msg: object) -> None: ...


class DomainStatistics(msgspec.Struct, frozen=True, kw_only=True, tag="domain", tag_field="kind"):
    """A snapshot of a domain, as ``domain.statistics()`` returns it."""

    path: str
    live: int  # activations holding a slot (starting, running or stopping)
    idle: int  # live activations with nothing to do
    waiting: int  # activations not holding a slot yet (waiting for one, or for a predecessor)
    max_active: int | None
    idle_timeout: float | None
    activations: int
    passivations: int
    crashes: int
    paused: bool = False  # the whole domain: every activation, present and future
    # Keys paused on their own (domain not paused), and keys resumed on their own in a
    # paused domain: the first KEYS_LISTED of each in sorted order, and how many there
    # are in all (0 from a domain older than these counts: then len() of the list).
    paused_keys: tuple[str, ...] = ()
    resumed_keys: tuple[str, ...] = ()
    paused_keys_total: int = 0
    resumed_keys_total: int = 0


KEYS_LISTED = 100  # keys a domain's statistics list by name (paused or resumed ones)


def _first_keys(keys: set[Any]) -> tuple[str, ...]:
    """The first KEYS_LISTED of ``keys`` as strings, in sorted order (one pass over
    them, not a sort of them all)."""
    return tuple(heapq.nsmallest(KEYS_LISTED, (str(k) for k in keys)))
