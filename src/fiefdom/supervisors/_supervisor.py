"""``Supervisor``: starts its children in order, restarts them by its strategy
within its restart intensity, and stops them in reverse order, each within its
shutdown deadline (then cancelled, then waited for)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import msgspec
from anyio.abc import TaskGroup

from .._errors import RestartIntensityExceeded, SupervisorError
from .._log import get_logger
from .._throttle import exc_fields
from ..actors import (
    ActorCrashed,
    ActorRef,
    ActorRestarted,
    ActorStatistics,
    Cell,
    CellRef,
    ChildExited,
    Domain,
    DomainStatistics,
    EventBus,
    StopMode,
    SupervisorEscalated,
)
from ._spec import (
    ActorSpec,
    ChildSpec,
    DomainSpec,
    Restart,
    Service,
    ServiceSpec,
    Strategy,
    SupervisorSpec,
)

log = get_logger("fiefdom.supervisor")


class SupervisorStatistics(
    msgspec.Struct, frozen=True, kw_only=True, tag="supervisor", tag_field="kind"
):
    """A snapshot of a supervisor and, recursively, of its children."""

    path: str
    strategy: Strategy
    restarts: int
    children: list[ActorStatistics | DomainStatistics | ServiceStatistics | SupervisorStatistics]


class ServiceStatistics(msgspec.Struct, frozen=True, kw_only=True, tag="service", tag_field="kind"):
    """A snapshot of a supervised service (its own statistics are its business)."""

    path: str
    running: bool
    restarts: int


class _ServiceChild:
    """Gives a Service the path and statistics the supervisor expects of a child."""

    __slots__ = ("path", "restarts", "running", "service")

    def __init__(self, service: Service, path: str) -> None:
        self.service = service
        self.path = path
        self.restarts = 0
        self.running = False

    async def serve(self, started: Callable[[], None] | None = None) -> None:
        self.running = True
        try:
            await self.service.serve(started)
        finally:
            self.running = False

    def request_stop(self, mode: StopMode) -> None:
        self.service.request_stop(mode)

    def cancel(self) -> None:
        self.service.cancel()

    def close(self, reason: str) -> None:
        self.service.close(reason)

    def reset(self) -> None:
        self.restarts += 1
        self.service.reset()

    def statistics(self) -> ServiceStatistics:
        return ServiceStatistics(path=self.path, running=self.running, restarts=self.restarts)


class _Runnable(Protocol):
    """What a supervisor drives: a cell, a domain or a nested supervisor."""

    path: str

    async def serve(self, started: Callable[[], None] | None = None) -> None: ...
    def request_stop(self, mode: StopMode) -> None: ...
    def cancel(self) -> None: ...
    def close(self, reason: str) -> None: ...
    def reset(self) -> None: ...


class _Child:
    __slots__ = ("done", "generation", "runnable", "running", "spec", "stopping")

    def __init__(self, spec: ChildSpec, runnable: _Runnable) -> None:
        self.spec = spec
        self.runnable = runnable
        self.generation = 0
        self.running = False
        self.stopping = False
        self.done = asyncio.Event()


_STOP = object()


class _Exit:
    __slots__ = ("child", "exc", "generation")

    def __init__(self, child: _Child, generation: int, exc: Exception | None) -> None:
        self.child = child
        self.generation = generation
        self.exc = exc


class Supervisor:
    """The runtime of a ``SupervisorSpec``. Reach it through ``SupervisorRef``."""

    def __init__(self, spec: SupervisorSpec, path: str, events: EventBus | None = None) -> None:
        self.spec = spec
        self.path = path
        self.events = events if events is not None else EventBus()
        self.restarts = 0
        self._children: list[_Child] = [self._make_child(c) for c in spec.children]
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self._restart_times: deque[float] = deque()
        self._tg: TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._closed: str | None = None
        self._hurry = False  # shutdown deadlines cut to zero: cancel, do not drain
        self._stop_pending = False
        # Stopping its children (a stop, or an escalation): a child added now would
        # never be stopped, and its task would hold the supervisor's task group open.
        self._stopping_all = False
        self._restarting: anyio.CancelScope | None = None  # backoff and restarts under way
        self._deadline: anyio.CancelScope | None = None  # the drain being waited on

    # -- children ------------------------------------------------------------------

    def _make_child(self, spec: ChildSpec) -> _Child:
        path = f"{self.path}/{spec.name}"
        runnable: _Runnable
        if isinstance(spec, ActorSpec):
            runnable = Cell(
                spec.factory, path, capacity=spec.mailbox_capacity, cancel_grace=spec.cancel_grace
            )
        elif isinstance(spec, DomainSpec):
            runnable = Domain(
                path,
                spec.factory,
                idle_timeout=spec.idle_timeout,
                max_active=spec.max_active,
                mailbox_capacity=spec.mailbox_capacity,
                cancel_grace=spec.cancel_grace,
                events=self.events,
            )
        elif isinstance(spec, ServiceSpec):
            service = spec.factory()
            if not isinstance(service, Service):
                raise TypeError(
                    f"ServiceSpec {spec.name!r}: factory returned {type(service).__name__}, "
                    "which lacks serve/request_stop/cancel/close/reset"
                )
            runnable = _ServiceChild(service, path)
        else:
            runnable = Supervisor(spec, path, self.events)
        return _Child(spec, runnable)

    def _find(self, name: str) -> _Child:
        for child in self._children:
            if child.spec.name == name:
                return child
        raise LookupError(f"{self.path} has no child named {name!r}")

    def _add(self, spec: ChildSpec) -> _Child:
        if self._closed is not None:
            raise SupervisorError(f"supervisor {self.path} is stopped: cannot add {spec.name!r}")
        if self._stopping_all:
            raise SupervisorError(f"supervisor {self.path} is stopping: cannot add {spec.name!r}")
        if "/" in spec.name or not spec.name:
            raise ValueError(f"child name must be non-empty and without '/', got {spec.name!r}")
        if any(c.spec.name == spec.name for c in self._children):
            raise ValueError(f"{self.path} already has a child named {spec.name!r}")
        child = self._make_child(spec)
        self._children.append(child)
        return child

    async def start_child(self, spec: ChildSpec) -> _Runnable:
        """Add a child and start it; returns once it has started."""
        child = self._add(spec)
        try:
            await self._start(child)
        except BaseException:
            # The caller gave up (or the start failed): a child still starting must
            # not run on unsupervised, so it is cancelled and waited for first.
            if not child.done.is_set():
                with anyio.CancelScope(shield=True):
                    child.stopping = True
                    child.runnable.request_stop("exit")
                    child.runnable.cancel()
                    await child.done.wait()
            child.runnable.close("its start was abandoned")
            self._children.remove(child)
            raise
        return child.runnable

    def start_child_soon(self, spec: ChildSpec) -> _Runnable:
        """Add a child and start it in the background (used for domains, whose
        messages wait in their mailboxes until it runs)."""
        child = self._add(spec)
        self._launch(child, None)
        return child.runnable

    async def terminate_child(self, name: str) -> None:
        """Stop a child (draining it within its deadline) and remove it."""
        child = self._find(name)
        if child.running:
            await self._stop(child, "drain")
        child.runnable.close("it was terminated by its supervisor")
        self._children.remove(child)

    def child(self, name: str) -> _Runnable:
        return self._find(name).runnable

    # -- running -------------------------------------------------------------------

    def _launch(self, child: _Child, started: asyncio.Future[None] | None) -> None:
        assert self._tg is not None, "supervisor is not running"
        child.generation += 1
        child.running = True
        child.done = asyncio.Event()
        self._tg.start_soon(
            self._run_child, child, child.generation, started, name=child.runnable.path
        )

    async def _start(self, child: _Child) -> None:
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._launch(child, started)
        try:
            await started
        except BaseException:
            # Waiting was cut short (a stop during a restart): nobody reads the
            # outcome of this start any more; the child runs on until it is stopped.
            if not started.done():
                started.cancel()
            raise

    async def _run_child(
        self, child: _Child, generation: int, started: asyncio.Future[None] | None
    ) -> None:
        def on_started() -> None:
            if started is not None and not started.done():
                started.set_result(None)

        exc: Exception | None = None
        try:
            await child.runnable.serve(on_started)
        except Exception as e:
            exc = e
        finally:
            child.done.set()
            if started is not None and not started.done():
                started.set_exception(
                    exc or SupervisorError(f"{child.runnable.path} exited before it started")
                )
        self._events.put_nowait(_Exit(child, generation, exc))

    async def serve(self, started: Callable[[], None] | None = None) -> None:
        failure: Exception | None = None
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    try:
                        for child in list(self._children):
                            await self._start(child)
                        if started is not None:
                            started()
                        await self._supervise()
                    except Exception as exc:
                        # Escalation (or a child that failed its first start): raised
                        # below, outside the task group, so the parent sees the error
                        # itself rather than an exception group around it.
                        failure = exc
                    finally:
                        self._stopping_all = True
                        with anyio.CancelScope(shield=True):
                            await self._stop_all()
        finally:
            self._tg = None
            self._scope = None
        if failure is not None:
            raise failure

    async def _supervise(self) -> None:
        while True:
            event = await self._events.get()
            if event is _STOP:
                return
            assert isinstance(event, _Exit)
            child, generation, exc = event.child, event.generation, event.exc
            if generation != child.generation or child.stopping or child not in self._children:
                continue  # an exit we caused ourselves
            child.running = False
            await self._on_exit(child, exc)

    async def _on_exit(self, child: _Child, exc: Exception | None) -> None:
        if self._stop_pending:
            # Stopping: an exit that was queued ahead of the stop restarts nothing
            # (nor counts toward the intensity); the child is closed with the rest.
            child.running = False
            return
        spec = child.spec
        path = child.runnable.path
        if exc is not None:
            log.error("child crashed", supervisor=self.path, child=path, **exc_fields(exc))
            self.events.emit(
                ActorCrashed(path=path, key=None, error_type=type(exc).__name__, error=str(exc))
            )
        else:
            log.info("child exited", supervisor=self.path, child=path)
        runnable = child.runnable
        if isinstance(runnable, Cell) and runnable.stop_mode == "drain":
            # Stopped through its ref (``ref.stop()``): gone for good, whatever its
            # restart type, and even if it crashed while draining.
            runnable.close("it was stopped")
            self._children.remove(child)
            self.events.emit(ChildExited(path=path, reason="stopped through its ref"))
            return
        restart = spec.restart == Restart.PERMANENT or (
            spec.restart == Restart.TRANSIENT and exc is not None
        )
        if not restart:
            reason = "it exited" if exc is None else f"it crashed: {exc!r}"
            runnable.close(reason)
            self._children.remove(child)
            self.events.emit(ChildExited(path=path, reason=f"{spec.restart} child: {reason}"))
            return
        now = time.monotonic()
        self._restart_times.append(now)
        while self._restart_times and self._restart_times[0] < now - self.spec.within:
            self._restart_times.popleft()
        if len(self._restart_times) > self.spec.max_restarts:
            log.error("restart intensity exceeded", supervisor=self.path, child=path)
            self.events.emit(
                SupervisorEscalated(
                    path=self.path, restarts=len(self._restart_times), within=self.spec.within
                )
            )
            raise RestartIntensityExceeded(
                self.path, len(self._restart_times), self.spec.within
            ) from exc
        index = self._children.index(child)
        if self.spec.strategy == Strategy.ONE_FOR_ONE:
            targets = [child]
        elif self.spec.strategy == Strategy.ONE_FOR_ALL:
            targets = list(self._children)
        else:
            targets = self._children[index:]
        for other in reversed(targets):
            if other is not child and other.running:
                await self._stop(other, "restart")
        self.restarts += 1
        # The backoff and the (re)starts may wait without bound (an on_start that
        # hangs): a stop request cancels this scope, so a shutdown is never held up
        # by a restart; a child whose start was cut short is stopped like any other.
        with anyio.CancelScope() as restarting:
            self._restarting = restarting
            if self._stop_pending:
                restarting.cancel()
            if self.spec.backoff is not None:
                delay = self.spec.backoff.delay(len(self._restart_times))
                log.info("backing off before a restart", supervisor=self.path, delay=delay)
                await anyio.sleep(delay)
            for target in targets:
                if target is not child and target.spec.restart == Restart.TEMPORARY:
                    target.runnable.close("its supervisor restarted its siblings")
                    self._children.remove(target)
                    continue
                target.runnable.reset()
                log.info("restarting child", supervisor=self.path, child=target.runnable.path)
                try:
                    await self._start(target)
                except Exception as start_exc:
                    # Counted as another crash: it goes through the intensity check.
                    target.running = False
                    self._events.put_nowait(_Exit(target, target.generation, start_exc))
                else:
                    self.events.emit(
                        ActorRestarted(
                            path=target.runnable.path, key=None, restarts=self._restarts_of(target)
                        )
                    )
        self._restarting = None

    async def _stop(self, child: _Child, mode: StopMode) -> None:
        child.stopping = True
        try:
            child.runnable.request_stop(mode)
            if not self._hurry:
                with anyio.move_on_after(child.spec.shutdown) as deadline:
                    self._deadline = deadline
                    await child.done.wait()
                self._deadline = None
            if not child.done.is_set():
                if self._hurry and isinstance(child.runnable, Supervisor):
                    # Hurried too: it cancels its own children one by one, each
                    # through its own cancel(); cancelling its scope would cut that short.
                    child.runnable.hurry()
                else:
                    if not self._hurry:
                        log.warning(
                            "child did not stop within its shutdown deadline: cancelling it",
                            child=child.runnable.path,
                            deadline=child.spec.shutdown,
                        )
                    # Through the child's own cancel(): a service (a job engine) then
                    # does its own cleanup, such as giving its running jobs back.
                    child.runnable.cancel()
                await child.done.wait()
        finally:
            child.running = False
            child.stopping = False

    async def _stop_all(self) -> None:
        for child in reversed(self._children):
            if child.running:
                # Read per child: a hurry may arrive while an earlier one drains.
                await self._stop(child, "cancel" if self._hurry else "drain")
        for child in self._children:
            child.runnable.close(f"its supervisor {self.path} stopped")

    def request_stop(self, mode: StopMode) -> None:
        """Stop every child in reverse start order: each drains within its shutdown
        deadline, or, with ``cancel``, is cancelled at once (see ``hurry``)."""
        self._stop_pending = True
        if self._restarting is not None:
            self._restarting.cancel()
        self._events.put_nowait(_STOP)
        if mode == "cancel":
            self.hurry()

    def hurry(self) -> None:
        """Cut every remaining shutdown deadline to zero, here and below: children
        still stop in reverse order, but each is cancelled instead of drained."""
        self._hurry = True
        self._stop_pending = True
        if self._restarting is not None:
            self._restarting.cancel()
        if self._deadline is not None:
            self._deadline.cancel()
        for child in self._children:
            if isinstance(child.runnable, Supervisor):
                child.runnable.hurry()

    def cancel(self) -> None:
        # Only _stop_all's waiting is shielded: the children's tasks run in the task
        # group inside this scope, so cancelling it cancels them at once.
        if self._scope is not None:
            self._scope.cancel()

    def close(self, reason: str) -> None:
        self._closed = reason
        for child in self._children:
            child.runnable.close(reason)

    def reset(self) -> None:
        self._hurry = False
        self._stop_pending = False
        self._stopping_all = False
        self._events = asyncio.Queue()
        self._restart_times.clear()
        for child in self._children:
            child.runnable.reset()

    def _restarts_of(self, child: _Child) -> int:
        runnable = child.runnable
        if isinstance(runnable, Cell | _ServiceChild | Supervisor):
            return runnable.restarts
        return 0

    def statistics(self) -> SupervisorStatistics:
        children: list[
            ActorStatistics | DomainStatistics | ServiceStatistics | SupervisorStatistics
        ] = []
        for child in self._children:
            children.append(child.runnable.statistics())  # type: ignore[attr-defined]
        return SupervisorStatistics(
            path=self.path, strategy=self.spec.strategy, restarts=self.restarts, children=children
        )


class SupervisorRef:
    """A handle to a running supervisor."""

    __slots__ = ("_sup",)

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor

    @property
    def path(self) -> str:
        return self._sup.path

    def ref(self, name: str) -> ActorRef[Any]:
        """The ref of the child actor ``name``."""
        runnable = self._sup.child(name)
        if not isinstance(runnable, Cell):
            raise TypeError(f"child {name!r} of {self.path} is not an actor")
        return CellRef(runnable)

    def service(self, name: str) -> Service:
        """The service object of the child ``name``."""
        runnable = self._sup.child(name)
        if not isinstance(runnable, _ServiceChild):
            raise TypeError(f"child {name!r} of {self.path} is not a service")
        return runnable.service

    def supervisor(self, name: str) -> SupervisorRef:
        runnable = self._sup.child(name)
        if not isinstance(runnable, Supervisor):
            raise TypeError(f"child {name!r} of {self.path} is not a supervisor")
        return SupervisorRef(runnable)

    def which_children(self) -> list[str]:
        return [c.spec.name for c in self._sup._children]

    async def start_child(self, spec: ChildSpec) -> None:
        await self._sup.start_child(spec)

    async def terminate_child(self, name: str) -> None:
        await self._sup.terminate_child(name)

    def statistics(self) -> SupervisorStatistics:
        return self._sup.statistics()
