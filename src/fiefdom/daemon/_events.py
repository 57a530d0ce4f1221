"""Runtime events of the daemon's supervisor tree (``system.events``: crashes,
restarts, exits, escalations) published on the event hub's ``actors`` topic, as
typed ``ActorEvent`` frames for the control channel's subscribers."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..actors import (
    ActorCrashed,
    ActorRestarted,
    ChildExited,
    EventBus,
    RuntimeEvent,
    SupervisorEscalated,
)
from ..protocol import ActorEvent, EventHub


def actor_event(event: RuntimeEvent, at: float) -> ActorEvent:
    """The wire form of a runtime event."""
    match event:
        case ActorCrashed(path=path, key=key, error_type=error_type, error=error):
            return ActorEvent(
                path=path,
                event="crashed",
                key=key,
                error_type=error_type,
                error=f"{error_type}: {error}" if error else error_type,
                at=at,
            )
        case ActorRestarted(path=path, key=key, restarts=restarts):
            return ActorEvent(path=path, event="restarted", key=key, restarts=restarts, at=at)
        case ChildExited(path=path, reason=reason):
            return ActorEvent(path=path, event="exited", reason=reason, at=at)
        case SupervisorEscalated(path=path, restarts=restarts, within=within):
            return ActorEvent(path=path, event="escalated", restarts=restarts, within=within, at=at)


def forward_runtime_events(events: EventBus, hub: EventHub) -> Callable[[], None]:
    """Publish every runtime event of ``events`` on ``hub``; returns the unsubscriber."""

    def publish(event: RuntimeEvent) -> None:
        # Called synchronously by the runtime (in the crashing actor's supervisor):
        # publishing only appends to the subscribers' bounded buffers.
        if hub.wanted:
            hub.publish(actor_event(event, time.time()))

    return events.subscribe(publish)
