"""``ActorRef``: the only way to talk to an actor. A ref to a spawned actor stays
valid across its restarts; a ref to a domain key routes each message to the key's
current activation (activating it when needed)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar, cast

from ._cell import DEFAULT_ASK_TIMEOUT, ActorStatistics, Cell
from ._message import Invoke, Request

M = TypeVar("M")
R = TypeVar("R")


class ActorRef(Generic[M]):
    """A handle to an actor that accepts messages of type ``M``."""

    __slots__ = ()

    @property
    def path(self) -> str:
        raise NotImplementedError

    def _cell(self) -> Cell[M]:
        raise NotImplementedError

    async def tell(self, msg: M) -> None:
        """Send without waiting for a reply; waits while the mailbox is full."""
        await self._cell().tell(msg)

    def tell_nowait(self, msg: M) -> None:
        """Send without waiting; raises MailboxFull when the mailbox is full."""
        self._cell().tell_nowait(msg)

    async def ask(self, msg: Request[R], *, timeout: float | None = DEFAULT_ASK_TIMEOUT) -> R:
        """Send and wait for the reply. Past ``timeout`` seconds a queued message is
        removed (it never runs) and a running one is cancelled; either way AskTimeout."""
        return cast(R, await self._cell().ask(msg, timeout))

    async def call(
        self,
        fn: Callable[[Any], Awaitable[R]],
        *,
        timeout: float | None = DEFAULT_ASK_TIMEOUT,
        name: str | None = None,
    ) -> R:
        """Run ``fn(actor_instance)`` inside the actor's turn, serialised with its
        messages; deadlines and caller cancellation behave exactly as for ``ask``."""
        return await self.ask(Invoke(fn, name or name_of(fn)), timeout=timeout)

    async def stop(self) -> None:
        """Stop the actor after it has handled what is already in its mailbox (a
        paused actor is not resumed, but still drains its mailbox before it stops)."""
        raise NotImplementedError

    def pause(self) -> None:
        """Let the actor finish its current message, then take no next one until
        ``resume()``. Its mailbox keeps accepting until full (then senders wait), and
        an ask whose deadline passes meanwhile is removed (AskTimeout, "queued")."""
        self._cell().pause()

    def resume(self) -> None:
        """Undo ``pause()``: the queued messages run in the order they were sent."""
        self._cell().resume()

    @property
    def paused(self) -> bool:
        """Whether the actor is paused."""
        return self._cell().paused

    def statistics(self) -> ActorStatistics:
        return self._cell().statistics()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"


class CellRef(ActorRef[M]):
    """A ref bound to one cell (a spawned actor)."""

    __slots__ = ("_target",)

    def __init__(self, cell: Cell[M]) -> None:
        self._target = cell

    @property
    def path(self) -> str:
        return self._target.path

    def _cell(self) -> Cell[M]:
        return self._target

    # The hot paths hand back the cell's own coroutine: one coroutine frame less per
    # message than an 'async def' that awaits it.
    def tell(self, msg: M) -> Coroutine[Any, Any, None]:
        return self._target.tell(msg)

    def tell_nowait(self, msg: M) -> None:
        self._target.tell_nowait(msg)

    def ask(
        self, msg: Request[R], *, timeout: float | None = DEFAULT_ASK_TIMEOUT
    ) -> Coroutine[Any, Any, R]:
        return self._target.ask(msg, timeout)  # type: ignore[return-value]  # R by Request[R]

    async def stop(self) -> None:
        cell = self._target
        if cell.stopped.is_set():
            return
        cell.request_stop("drain")
        await cell.stopped.wait()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CellRef) and other._target is self._target

    def __hash__(self) -> int:
        return id(self._target)


def name_of(fn: Callable[..., object]) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__
