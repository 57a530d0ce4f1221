"""The internal envelope of an ask: the message, the caller's future, the deadline
timer, and whether its running handler was cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal, Protocol

import anyio


class _Discards(Protocol):
    def discard(self, item: Ask) -> None: ...


class AskHost(Protocol):
    """What an ask needs of the cell it was sent to (``Cell``, defined above the
    envelope, implements it)."""

    @property
    def path(self) -> str: ...

    @property
    def mailbox(self) -> _Discards: ...

    @property
    def cancel_grace(self) -> float: ...

    def queued_ask_removed(self) -> None: ...

    def cancel_running(self, ask: Ask) -> None: ...

    def timeout_error(
        self, ask: Ask, phase: Literal["queued", "running"], *, handler_exited: bool = True
    ) -> BaseException: ...


QUEUED = 0
RUNNING = 1
DONE = 2  # an ask left in a mailbox as DONE was removed there: a tombstone


class Ask:
    __slots__ = (
        "cancelled",
        "cell",
        "chain",
        "deadline",
        "exited",
        "future",
        "msg",
        "origin",
        "respond",
        "state",
        "timeout",
        "timer",
    )

    def __init__(
        self,
        cell: AskHost,
        msg: object,
        future: asyncio.Future[object],
        chain: tuple[AskHost, ...],
        timeout: float | None,
        origin: tuple[str, ...] = (),
    ) -> None:
        self.cell = cell
        self.msg = msg
        self.future = future
        self.chain = chain
        # The paths of the actors on other nodes of the cluster this call chain came
        # through (a forwarded ask, and every ask its handler makes): a cycle that
        # crosses nodes is found by path.
        self.origin = origin
        self.timeout = timeout
        self.deadline: float | None = None  # loop time; set once the ask is queued
        self.state = QUEUED
        self.cancelled = False  # its running handler was cancelled (deadline or caller)
        self.timer: asyncio.TimerHandle | None = None
        # Made only for a caller cancelled while the handler runs: it waits on this
        # until the handler has really returned (see Cell.ask).
        self.exited: asyncio.Event | None = None
        # A caller that waits in no task of its own (the control channel, which writes
        # a call's reply then) may set this to a callable that is already a done
        # callback of ``future``: when the handler returns a result, the cell clears it
        # and calls it from the actor's own turn, instead of in a turn of the event
        # loop of its own. An ask that ends any other way (deadline, failure, stop,
        # abandon) calls it as a done callback only, and it then sets this back to
        # None itself (it would otherwise keep itself alive through the ask).
        self.respond: Callable[[asyncio.Future[object]], None] | None = None

    def on_deadline(self) -> None:
        """Timer callback: remove the message if it has not started, else cancel it."""
        self.timer = None
        if self.state == QUEUED:
            self.state = DONE
            self.cell.mailbox.discard(self)
            self.cell.queued_ask_removed()
            if not self.future.done():
                self.future.set_exception(self.cell.timeout_error(self, "queued"))
        elif self.state == RUNNING:
            self.cell.cancel_running(self)
            grace = self.cell.cancel_grace
            self.timer = asyncio.get_running_loop().call_later(grace, self.on_grace_expired)

    def on_grace_expired(self) -> None:
        """The handler ignored its cancellation: stop waiting for it (it is reported stuck)."""
        self.timer = None
        if self.state == RUNNING and not self.future.done():
            self.future.set_exception(
                self.cell.timeout_error(self, "running", handler_exited=False)
            )

    def abandon(self) -> None:
        """The caller was cancelled: remove the message, or cancel its running handler."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        # Nobody awaits the outcome any more: a cancelled future takes no late result
        # (and no "exception was never retrieved" report).
        self.future.cancel()
        if self.state == QUEUED:
            self.state = DONE
            self.cell.mailbox.discard(self)
            self.cell.queued_ask_removed()
        elif self.state == RUNNING:
            self.cell.cancel_running(self)

    async def wait_exited(self, grace: float) -> bool:
        """Wait (shielded, at most ``grace`` seconds) until the running handler has
        returned; False when it ignored its cancellation for that long."""
        if self.state != RUNNING:
            return True
        exited = self.exited = asyncio.Event()
        with anyio.CancelScope(shield=True), anyio.move_on_after(grace):
            await exited.wait()
        return self.state != RUNNING

    def finish(self) -> None:
        if self.exited is not None:
            self.exited.set()
        self.state = DONE
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
