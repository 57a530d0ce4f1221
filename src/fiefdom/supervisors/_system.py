"""``ActorSystem``: the root of the supervisor tree, used as an async context
manager. Leaving the ``async with`` stops every child in reverse start order,
each within its shutdown deadline, and returns only when no task is left."""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, TypeVar, cast

import anyio
import structlog

from .._errors import ActorStopped, SupervisorError
from ..actors import (
    DEFAULT_CANCEL_GRACE,
    DEFAULT_CAPACITY,
    Actor,
    ActorRef,
    CellRef,
    Domain,
    EventBus,
)
from ._spec import ActorSpec, DomainSpec, Restart, SupervisorSpec
from ._supervisor import Supervisor, SupervisorRef, SupervisorStatistics

M = TypeVar("M")
K = TypeVar("K", bound=Hashable)

log = structlog.get_logger("fiefdom.system")


class SystemState(enum.StrEnum):
    """Lifecycle of an ``ActorSystem``: it runs once, from ``async with`` to its end."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class ActorSystem:
    """The root supervisor (one_for_one). Use ``async with ActorSystem() as system``."""

    def __init__(
        self,
        name: str = "fiefdom",
        *,
        max_restarts: int = 10,
        within: float = 10.0,
        shutdown: float = 60.0,
    ) -> None:
        if not name or "/" in name:
            raise ValueError(f"system name must be non-empty and without '/', got {name!r}")
        self.name = name
        self._spec = SupervisorSpec(
            name=name, max_restarts=max_restarts, within=within, shutdown=shutdown
        )
        self._root = Supervisor(self._spec, name)
        self._stack: AsyncExitStack | None = None
        self._state = SystemState.NEW
        self._stopped = anyio.Event()
        self._failure: Exception | None = None

    @property
    def state(self) -> SystemState:
        return self._state

    async def __aenter__(self) -> ActorSystem:
        if self._state is not SystemState.NEW:
            raise RuntimeError(
                f"ActorSystem {self.name!r} is {self._state}: an actor system runs once; "
                "create a new ActorSystem instead of re-entering this one"
            )
        stack = AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        try:
            await tg.start(self._run_root)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        self._state = SystemState.RUNNING
        log.info("actor system started", system=self.name)
        return self

    async def _run_root(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            await self._root.serve(task_status.started)
        except Exception as exc:
            self._failure = exc
            raise
        finally:
            self._state = SystemState.STOPPED
            self._stopped.set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        self._begin_stop()
        try:
            return await self._stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            failure = self._failure
            if failure is not None and group.exceptions == (failure,):
                # The root gave up (restart intensity): raise its error as such, not
                # wrapped in the exception group of the system's task group.
                raise failure from failure.__cause__
            raise
        finally:
            log.info("actor system stopped", system=self.name)

    def _begin_stop(self) -> None:
        if self._state is SystemState.RUNNING:
            self._state = SystemState.STOPPING
            self._root.request_stop("drain")

    async def stop(self) -> None:
        """Stop every actor (reverse start order, within deadlines) and wait for it."""
        self._begin_stop()
        await self._stopped.wait()

    def cancel(self) -> None:
        """Stop at once: still in reverse start order, but every child is cancelled
        instead of being given its shutdown deadline (running handlers are cancelled,
        queued asks fail with ActorStopped). Also cuts short a stop already under
        way. Returns at once; ``await stop()`` or leaving ``async with`` waits."""
        self._begin_stop()
        self._root.hurry()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def _check_running(self, what: str) -> None:
        if self._state is not SystemState.RUNNING:
            raise ActorStopped(
                self.name, f"cannot {what}: the system is {self._state} (use 'async with')"
            )

    async def spawn(
        self,
        factory: Callable[[], Actor[M]],
        *,
        name: str,
        restart: Restart = Restart.PERMANENT,
        shutdown: float = 5.0,
        mailbox_capacity: int = DEFAULT_CAPACITY,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
    ) -> ActorRef[M]:
        """Start an actor under the root supervisor; returns once its on_start ran."""
        self._check_running("spawn")
        spec = ActorSpec(name, factory, restart, shutdown, mailbox_capacity, cancel_grace)
        return CellRef(cast(Any, await self._root.start_child(spec)))

    def domain(
        self,
        name: str,
        factory: Callable[[K], Actor[M]],
        *,
        idle_timeout: float | None = 60.0,
        max_active: int | None = None,
        mailbox_capacity: int = DEFAULT_CAPACITY,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
        shutdown: float = 30.0,
    ) -> Domain[K, M]:
        """Create a domain (one actor per key) under the root supervisor."""
        self._check_running("create a domain")
        spec = DomainSpec(
            name,
            factory,
            idle_timeout=idle_timeout,
            max_active=max_active,
            shutdown=shutdown,
            mailbox_capacity=mailbox_capacity,
            cancel_grace=cancel_grace,
        )
        return cast(Domain[K, M], self._root.start_child_soon(spec))

    async def start(self, spec: SupervisorSpec) -> SupervisorRef:
        """Start a supervisor (and its children) under the root supervisor."""
        self._check_running("start a supervisor")
        sup = await self._root.start_child(spec)
        if not isinstance(sup, Supervisor):  # pragma: no cover - start_child builds one
            raise SupervisorError("expected a supervisor")
        return SupervisorRef(sup)

    @property
    def events(self) -> EventBus:
        """Crashes, restarts, exits and escalations anywhere in the tree."""
        return self._root.events

    @property
    def root(self) -> SupervisorRef:
        return SupervisorRef(self._root)

    def statistics(self) -> SupervisorStatistics:
        """The whole tree, with every actor's statistics."""
        return self._root.statistics()
