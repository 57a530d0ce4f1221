"""Child specifications: what a supervisor starts, how it restarts it, and how
long it gives it to shut down."""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from ..actors import DEFAULT_CANCEL_GRACE, DEFAULT_CAPACITY, DEFAULT_MAX_ACTIVE, Actor, StopMode

M = TypeVar("M")
K = TypeVar("K", bound=Hashable)


class Strategy(enum.StrEnum):
    """Which children restart when one fails."""

    ONE_FOR_ONE = "one_for_one"  # only the failed child
    ONE_FOR_ALL = "one_for_all"  # every child
    REST_FOR_ONE = "rest_for_one"  # the failed child and those started after it


class Restart(enum.StrEnum):
    """When a child is restarted."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after a crash, not after a normal exit
    TEMPORARY = "temporary"  # never


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before a restart: ``initial * multiplier**n`` capped at ``maximum``,
    where ``n`` counts the restarts within the intensity period."""

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0

    def delay(self, recent_restarts: int) -> float:
        return float(
            min(self.maximum, self.initial * self.multiplier ** max(0, recent_restarts - 1))
        )


@dataclass(frozen=True, slots=True)
class ActorSpec(Generic[M]):
    """A supervised actor: ``factory()`` builds a fresh instance on each (re)start."""

    name: str
    factory: Callable[[], Actor[M]]
    restart: Restart = Restart.PERMANENT
    shutdown: float = 5.0  # seconds to drain its mailbox on shutdown before it is cancelled
    mailbox_capacity: int = DEFAULT_CAPACITY
    cancel_grace: float = DEFAULT_CANCEL_GRACE


@dataclass(frozen=True, slots=True)
class DomainSpec(Generic[K, M]):
    """A supervised domain: one actor per key, built by ``factory(key)``, at most
    ``max_active`` of them live (``DEFAULT_MAX_ACTIVE``, 100,000, unless given;
    ``None`` is an explicit choice of no cap)."""

    name: str
    factory: Callable[[K], Actor[M]]
    idle_timeout: float | None = 60.0
    max_active: int | None = DEFAULT_MAX_ACTIVE
    restart: Restart = Restart.PERMANENT
    shutdown: float = 30.0
    mailbox_capacity: int = DEFAULT_CAPACITY
    cancel_grace: float = DEFAULT_CANCEL_GRACE


@runtime_checkable
class Service(Protocol):
    """What a supervisor can host besides actors: a job engine, a server, a poller.

    ``serve(started)`` runs until ``request_stop`` (calling ``started()`` once it is
    up; ``request_stop("cancel")`` asks it to cancel the work it is doing rather than
    finish it); ``cancel()`` cuts it short at the shutdown deadline; ``reset()`` prepares a
    restart; ``close(reason)`` says it is gone for good. A crash is ``serve`` raising.
    """

    async def serve(self, started: Callable[[], None] | None = None) -> None: ...
    def request_stop(self, mode: StopMode) -> None: ...
    def cancel(self) -> None: ...
    def close(self, reason: str) -> None: ...
    def reset(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A supervised service, built once by ``factory()`` and restarted (``reset``,
    then ``serve`` again) by its supervisor like any other child."""

    name: str
    factory: Callable[[], Service]
    restart: Restart = Restart.PERMANENT
    shutdown: float = 30.0


@dataclass(frozen=True, slots=True)
class SupervisorSpec:
    """A supervisor: its children (started in order, stopped in reverse), its
    strategy, and its restart intensity (``max_restarts`` within ``within`` seconds;
    one more and it stops its children and fails, escalating to its parent)."""

    name: str
    children: Sequence[ChildSpec] = field(default_factory=tuple)
    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = 3
    within: float = 5.0
    backoff: Backoff | None = None
    restart: Restart = Restart.PERMANENT
    shutdown: float = 60.0


ChildSpec = ActorSpec[Any] | DomainSpec[Any, Any] | ServiceSpec | SupervisorSpec
