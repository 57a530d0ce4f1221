"""The base every maintenance service of an engine is built on (one service a
module: lease keeper, rescuer, promoter, queue watcher, listener, periodic
enqueuer, finisher): a task with its own cancel scope and the shared lifecycle."""

from __future__ import annotations

import abc
from contextlib import AsyncExitStack
from types import TracebackType
from typing import ClassVar, Self

import anyio
import anyio.abc

from .._lifecycle import Lifecycle, State, StopMode
from ._core import Core


class Service(abc.ABC):
    """A small start/stop service of one engine. ``run`` loops until cancelled;
    ``start(tg)`` runs it in ``tg`` (its own task group when none is given) and
    returns once it runs; ``stop()`` cancels it and waits for it to end (at once if
    it never started). ``async with`` starts and stops it."""

    name: ClassVar[str]

    def __init__(self, core: Core) -> None:
        self.core = core
        self._life = Lifecycle(
            f"the {self.name} of job engine {core.worker}",
            f"its JobEngine starts it, or use 'async with {type(self).__name__}(...)'",
        )
        self._scope: anyio.CancelScope | None = None
        self._done = anyio.Event()
        self._stack: AsyncExitStack | None = None

    @property
    def state(self) -> State:
        return self._life.state

    async def start(self, tg: anyio.abc.TaskGroup | None = None) -> None:
        self._life.begin_start()
        if tg is None:
            stack = AsyncExitStack()
            tg = await stack.enter_async_context(anyio.create_task_group())
            self._stack = stack
        await tg.start(self._serve, name=f"{self.core.path}/{self.name}")

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                self._life.started()
                task_status.started()
                await self.run()
        finally:
            self._life.stopped()
            self._done.set()

    async def stop(self, mode: StopMode = "drain") -> None:
        """Stop the service (every mode: a maintenance round has no work of its own
        to drain; what it was writing is rolled back and redone by the next round)."""
        if not self._life.begin_stop():
            if self._life.state is State.STOPPING:
                await self._done.wait()
            return
        assert self._scope is not None
        self._scope.cancel()
        await self._done.wait()
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @abc.abstractmethod
    async def run(self) -> None:
        """The service's loop; runs until cancelled."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.core.worker} {self.state}>"
