"""``ActorSystem``: the root of the supervisor tree. It has the lifecycle every
long-lived component shares (``fiefdom.State``): ``async with ActorSystem() as
system``, or ``await system.start()`` ... ``await system.stop(mode)``. Stopping
stops every child in reverse start order, each within its shutdown deadline
(``drain``) or cancelled at once (``cancel``), and returns only when no task is left."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from types import TracebackType
from typing import Any, TypeVar, cast

import anyio

from .._errors import SupervisorError
from .._gc import gc_threshold, raise_threshold
from .._lifecycle import Lifecycle, State, StopMode
from .._log import get_logger
from ..actors import (
    DEFAULT_CANCEL_GRACE,
    DEFAULT_CAPACITY,
    DEFAULT_MAX_ACTIVE,
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

log = get_logger("fiefdom.system")


class ActorSystem:
    """The root supervisor (one_for_one). Use ``async with ActorSystem() as system``.

    Leaving the block normally drains the tree (``stop("drain")``); leaving it with
    an exception, or cancelled, cancels it (``stop("cancel")``) and the exception
    comes out as itself, never wrapped in an exception group (the root runs in a
    task of the system's own, not in a task group around the body). When the root gives
    up (its restart intensity is exceeded) the body of the ``async with`` is
    cancelled and ``RestartIntensityExceeded`` is raised out of it (or out of
    ``stop()`` when the system was started with ``start()``).

    While it runs, the garbage collector's youngest threshold is raised to 10,000
    (never lowered; put back once the last running system stops): a domain's live
    actors made the interpreter's default collections half of an activation's cost.
    ``tune_gc=False`` (or ``FIEFDOM_GC=default`` in the environment) leaves the
    collector alone; ``fiefdom._gc`` says why and what it costs."""

    def __init__(
        self,
        name: str = "fiefdom",
        *,
        max_restarts: int = 10,
        within: float = 10.0,
        shutdown: float = 60.0,
        tune_gc: bool = True,
    ) -> None:
        if not name or "/" in name:
            raise ValueError(f"system name must be non-empty and without '/', got {name!r}")
        self.name = name
        self._spec = SupervisorSpec(
            name=name, max_restarts=max_restarts, within=within, shutdown=shutdown
        )
        self._root = Supervisor(self._spec, name)
        self._lifecycle = Lifecycle(
            f"actor system {name!r}", "use 'async with ActorSystem() as system'"
        )
        self._tune_gc = tune_gc
        self._task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._failure: Exception | None = None
        self._failure_raised = False
        # The body of ``async with``: cancelled when the root gives up, so that the
        # caller's code does not run on beside a dead tree.
        self._body: anyio.CancelScope | None = None

    @property
    def state(self) -> State:
        """Where the system is in its lifecycle."""
        return self._lifecycle.state

    async def start(self) -> None:
        """Start the root supervisor; returns once it runs. A system runs once."""
        self._lifecycle.begin_start()
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        # The root runs in a task the system owns (not in a task group of the caller),
        # so that stop() may be called from any task; stop() always waits for it.
        self._task = loop.create_task(self._run_root(started), name=f"fiefdom-system {self.name}")
        try:
            await asyncio.wait({started, self._task}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            # The caller gave up while the root started: nothing may run on.
            with anyio.CancelScope(shield=True):
                await self.stop("cancel")
            raise
        if started.done() and self._lifecycle.state is State.STARTING:
            self._lifecycle.started()
            log.info("actor system started", system=self.name)
        elif not started.done():
            started.cancel()
            self._raise_failure()

    async def _run_root(self, started: asyncio.Future[None]) -> None:
        def on_started() -> None:
            if not started.done():
                started.set_result(None)

        release_gc = raise_threshold(gc_threshold() if self._tune_gc else None)
        try:
            await self._root.serve(on_started)
        except Exception as exc:
            # Raised by stop() or when leaving ``async with``, not lost in this task.
            self._failure = exc
            if self._body is not None:
                self._body.cancel()
        finally:
            release_gc()
            self._lifecycle.stopped()
            self._stopped.set()
            log.info("actor system stopped", system=self.name)

    async def __aenter__(self) -> ActorSystem:
        await self.start()
        body = anyio.CancelScope()
        body.__enter__()
        self._body = body
        if self._failure is not None:  # the root gave up already
            body.cancel()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        body, self._body = self._body, None
        # True when the body was cancelled by the root's failure (the failure is
        # raised below instead of that cancellation).
        swallowed = bool(body is not None and body.__exit__(exc_type, exc, tb))
        mode: StopMode = "drain" if exc is None or swallowed else "cancel"
        await self.stop(mode)
        return swallowed or None

    def request_stop(self, mode: StopMode = "drain") -> None:
        """Ask the system to stop and return at once (for callbacks such as signal
        handlers); ``await stop()`` waits. A ``cancel`` also cuts short a drain under
        way; a stop before ``start()`` leaves the system stopped."""
        if self._lifecycle.state is State.STOPPING:
            if mode == "cancel":
                self._root.request_stop("cancel")
            return
        if self._lifecycle.begin_stop():
            self._root.request_stop("cancel" if mode == "cancel" else "drain")

    async def stop(self, mode: StopMode = "drain") -> None:
        """Stop every actor in reverse start order and wait until no task is left.

        ``drain`` gives each child its shutdown deadline to finish what its mailbox
        holds; ``cancel`` cancels running handlers and fails queued asks with
        ``ActorStopped``. Before ``start()`` it returns at once; a second call waits
        for the first one's stop (a ``cancel`` cuts a drain short). A caller
        cancelled while waiting turns the stop into a ``cancel`` and still waits for
        it, so that no task outlives it."""
        self.request_stop(mode)
        task = self._task
        if task is not None:
            try:
                # asyncio.wait: a cancelled caller must not cancel the root's task.
                await asyncio.wait({task})
            except BaseException:
                self._root.request_stop("cancel")
                with anyio.CancelScope(shield=True):
                    await asyncio.wait({task})
                raise
        self._raise_failure()

    def _raise_failure(self) -> None:
        failure = self._failure
        if failure is not None and not self._failure_raised:
            self._failure_raised = True
            raise failure from failure.__cause__

    async def wait_stopped(self) -> None:
        """Wait until the system has stopped (by a stop, or because its root gave up)."""
        await self._stopped.wait()

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
        self._lifecycle.check_running("spawn")
        spec = ActorSpec(name, factory, restart, shutdown, mailbox_capacity, cancel_grace)
        return CellRef(cast(Any, await self._root.start_child(spec)))

    def domain(
        self,
        name: str,
        factory: Callable[[K], Actor[M]],
        *,
        idle_timeout: float | None = 60.0,
        max_active: int | None = DEFAULT_MAX_ACTIVE,
        mailbox_capacity: int = DEFAULT_CAPACITY,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
        shutdown: float = 30.0,
    ) -> Domain[K, M]:
        """Create a domain (one actor per key) under the root supervisor.

        At most ``max_active`` of its actors are live at once: 100,000 by default
        (``DEFAULT_MAX_ACTIVE``); past it, the least recently used idle actor is
        passivated to make room. ``max_active=None`` is an explicit choice of no cap,
        for keys known to be few. Idle actors are passivated after ``idle_timeout``."""
        self._lifecycle.check_running("create a domain")
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

    async def start_supervisor(self, spec: SupervisorSpec) -> SupervisorRef:
        """Start a supervisor (and its children) under the root supervisor."""
        self._lifecycle.check_running("start a supervisor")
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
