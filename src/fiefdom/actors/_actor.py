"""The ``Actor`` base class users subclass, and the context the runtime gives it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

from structlog.typing import FilteringBoundLogger

from ._cell import register_default_hooks

if TYPE_CHECKING:
    from ._cell import Cell
    from ._ref import ActorRef

M = TypeVar("M")


class ActorContext(Generic[M]):
    """What an actor knows about itself: its path, its key (in a domain), a logger
    bound to both, a ref to itself, and a way to stop itself."""

    __slots__ = ("_cell",)

    def __init__(self, cell: Cell[M]) -> None:
        self._cell = cell

    @property
    def path(self) -> str:
        return self._cell.path

    @property
    def key(self) -> object:
        return self._cell.key

    @property
    def log(self) -> FilteringBoundLogger:
        """A structlog logger with ``actor`` (and ``key``) bound."""
        return self._cell.log

    @property
    def self_ref(self) -> ActorRef[M]:
        from ._ref import CellRef

        return CellRef(self._cell)

    def stop(self) -> None:
        """Stop this actor after the current message (a normal exit)."""
        self._cell.request_stop("exit")


class Actor(Generic[M]):
    """Subclass and implement ``receive``. One message is handled at a time.

    ``on_start`` runs before the first message, ``on_stop`` after the last one
    (also after a crash, and within the grace period after a cancellation).
    A ``receive`` that raises crashes the actor: the ask that sent the message
    gets the exception and the supervisor (or domain) decides what happens next.
    """

    # Set by the runtime before on_start; the context is made on first use (most
    # actors of a large domain never ask for it).
    _fiefdom_cell: Cell[M]
    _fiefdom_context: ActorContext[M]

    @property
    def context(self) -> ActorContext[M]:
        try:
            return self._fiefdom_context
        except AttributeError:
            pass
        try:
            cell = self._fiefdom_cell
        except AttributeError:
            raise RuntimeError(
                f"{type(self).__name__}.context is available from on_start on, "
                "not in __init__: move the code that needs it into on_start"
            ) from None
        self._fiefdom_context = context = ActorContext(cell)
        return context

    async def on_start(self) -> None:
        """Called in the actor's task before the first message."""

    async def on_stop(self) -> None:
        """Called in the actor's task after the last message, a crash or a cancellation;
        not when ``on_start`` raised (the actor never started)."""

    async def receive(self, msg: M) -> object:
        """Handle one message; the return value is the reply to an ask."""
        raise NotImplementedError(f"{type(self).__name__} must implement receive(msg)")


# The cell skips the base class's empty hooks; it learns which they are from here.
register_default_hooks(Actor.on_start, Actor.on_stop)
