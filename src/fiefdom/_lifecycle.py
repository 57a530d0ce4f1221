"""The one lifecycle every long-lived component shares (actor system, store, job
engine and its services, control server, client, daemon): a state enum, a stop
mode, and the exact message for each misuse.

    new ──start()──▶ starting ──▶ running ──stop(mode)──▶ stopping ──▶ stopped

``stop()`` before ``start()`` returns at once (the component ends stopped, it never
hangs); ``start()`` twice or after a stop raises ``LifecycleError``; using a
component that is not running raises ``LifecycleError`` naming how to fix it.
"""

from __future__ import annotations

import enum
from typing import Literal

from ._errors import LifecycleError

StopMode = Literal["drain", "cancel", "exit", "restart"]
"""How a stop treats work in hand:

- ``"drain"``: take nothing new, finish what is queued and running (within the
  component's drain deadline), then stop;
- ``"cancel"``: take nothing new, cancel what is running now and give unstarted
  work back (a job goes back to its queue, a queued ask fails ``ActorStopped``);
- ``"exit"``: an actor's own stop: finish the current message, take no next one;
- ``"restart"``: a supervisor restarting a child: like ``exit`` for the running
  incarnation, but its mailbox is kept for the next one.

Components without messages of their own treat ``exit`` and ``restart`` as
``drain``.
"""


class State(enum.StrEnum):
    """Where a component is in its lifecycle."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Lifecycle:
    """The state of one component and the checks its methods make.

    ``what`` names the component in messages ("job engine host:12:ab12"); ``usage``
    is how to run it ("use 'async with JobEngine(store) as engine'")."""

    __slots__ = ("state", "usage", "what")

    def __init__(self, what: str, usage: str) -> None:
        self.what = what
        self.usage = usage
        self.state = State.NEW

    def begin_start(self) -> None:
        """new → starting; start twice or after a stop raises."""
        if self.state is State.NEW:
            self.state = State.STARTING
            return
        if self.state in (State.STARTING, State.RUNNING):
            raise LifecycleError(
                f"{self.what} is already {self.state}: start() is called once "
                f"({self.usage}, which starts and stops it)"
            )
        raise LifecycleError(
            f"{self.what} is {self.state}; a component runs once: create a new one "
            "instead of starting this one again"
        )

    def started(self) -> None:
        self.state = State.RUNNING

    def begin_stop(self) -> bool:
        """Enter ``stopping``; False when there is nothing to stop (never started:
        it is marked stopped at once; already stopping or stopped)."""
        if self.state is State.NEW:
            self.state = State.STOPPED
            return False
        if self.state in (State.STARTING, State.RUNNING):
            self.state = State.STOPPING
            return True
        return False

    def stopped(self) -> None:
        self.state = State.STOPPED

    def check_running(self, action: str) -> None:
        """Raise unless running; ``action`` is what was attempted ("claim jobs")."""
        if self.state is State.RUNNING:
            return
        if self.state is State.NEW:
            raise LifecycleError(
                f"cannot {action}: {self.what} is not started ({self.usage}, "
                "or call 'await start()' first)"
            )
        if self.state is State.STARTING:
            raise LifecycleError(
                f"cannot {action}: {self.what} is still starting; wait for start() to return"
            )
        raise LifecycleError(
            f"cannot {action}: {self.what} is {self.state}; a stopped component does not "
            "come back: create a new one"
        )

    def __repr__(self) -> str:
        return f"<Lifecycle {self.what} {self.state}>"
