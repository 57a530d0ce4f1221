"""Runtime events: what happened to actors and supervisors (a crash, a restart,
an exit, an escalation), delivered to subscribers of the system's ``EventBus``.
The control channel streams them; tests and operators can watch them without
parsing log lines."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from .._log import get_logger
from .._throttle import exc_fields

log = get_logger("fiefdom.events")


class ActorCrashed(msgspec.Struct, frozen=True, kw_only=True, tag="actor_crashed"):
    """An actor's handler (or on_start) raised; ``path`` names the actor."""

    path: str
    key: str | None
    error_type: str
    error: str


class ActorRestarted(msgspec.Struct, frozen=True, kw_only=True, tag="actor_restarted"):
    """A child (or a domain key's actor) was started again with a fresh instance."""

    path: str
    key: str | None
    restarts: int


class ChildExited(msgspec.Struct, frozen=True, kw_only=True, tag="child_exited"):
    """A supervised child ended and will not be restarted (its restart type says so)."""

    path: str
    reason: str


class SupervisorEscalated(msgspec.Struct, frozen=True, kw_only=True, tag="supervisor_escalated"):
    """A supervisor exceeded its restart intensity, stopped its children and failed."""

    path: str
    restarts: int
    within: float


RuntimeEvent = ActorCrashed | ActorRestarted | ChildExited | SupervisorEscalated


class EventBus:
    """Synchronous fan-out of runtime events. Subscribers must not block: a slow
    consumer buffers (boundedly) on its own side."""

    __slots__ = ("_subscribers",)

    def __init__(self) -> None:
        self._subscribers: list[Callable[[RuntimeEvent], None]] = []

    def subscribe(self, callback: Callable[[RuntimeEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event; returns a function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def emit(self, event: RuntimeEvent) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                # A broken subscriber must not break the runtime that reports to it.
                log.error("event subscriber raised", subscriber=repr(callback), **exc_fields())
