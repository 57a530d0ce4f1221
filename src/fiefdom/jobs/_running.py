"""The lifecycle of a job engine: ``serve`` (a supervisor child's run, and what
``start`` runs in a task of its own), the stops and their modes, and the order in
which its parts start and stop: ownership first, then the finisher and the
maintenance services, then the fetchers and workers; back in reverse."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import anyio

from .._errors import JobError
from .._lifecycle import Lifecycle, State, StopMode
from .._log import get_logger
from ..storage import Notifications
from ._core import Core
from ._executor import work
from ._fetcher import fetch
from ._finisher import Finisher
from ._lease_keeper import LeaseKeeper
from ._listener import Listener
from ._ownership import Ownership
from ._periodic import Periodic, PeriodicEnqueuer
from ._promoter import Promoter
from ._queue_watcher import QueueWatcher
from ._rescuer import Rescuer
from ._service import Service

log = get_logger("fiefdom.jobs")

# At shutdown, outcomes are written for as long as the store records some; the
# engine gives up (leaving those jobs to be rescued) only after this long without
# a successful write, so a slow store is waited for and a dead one is not.
_SHUTDOWN_WRITE_DEADLINE = 10.0


class EngineRunner(Notifications):
    """What runs a ``JobEngine`` (its subclass, which sets these attributes)."""

    worker: str
    path: str
    _core: Core
    _life: Lifecycle
    _closed: bool
    _periodic: list[Periodic]
    _stopped: anyio.Event
    _task: asyncio.Task[None] | None
    _new_ownership: Callable[[], Ownership] | None

    # -- lifecycle -------------------------------------------------------------------

    async def serve(self, started: Callable[[], None] | None = None) -> None:
        """Run until a stop is requested, then stop gracefully (see the class doc)."""
        if self._closed:
            raise JobError(
                f"job engine {self.worker} is closed (its supervisor gave it up): "
                "create a new JobEngine"
            )
        self._life.begin_start()
        self._stopped = anyio.Event()
        core = self._core
        unsubscribe = core.queries.subscribe(self)
        cleanups: list[Callable[[], None]] = []
        ownership = core.ownership
        log.info("job engine started", worker=self.worker, queues=sorted(core.runners))
        try:
            if ownership is not None:
                # The first round of leases is taken before any claim: a node alone
                # holds every partition from its first claim on.
                await ownership.start()
                cleanups.append(ownership.on_lost(core.lose))
                cleanups += [ownership.serve(n, d) for n, d in core.domains.items()]
            async with anyio.create_task_group() as root:
                services: list[Service] = [
                    Listener(core, self),
                    QueueWatcher(core),
                    LeaseKeeper(core),
                    Promoter(core),
                    Rescuer(core),
                ]
                if self._periodic:
                    services.append(PeriodicEnqueuer(core, self._periodic))
                finisher = Finisher(core)
                await finisher.start(root)
                for service in services:
                    await service.start(root)
                async with anyio.create_task_group() as workers:
                    for runner in core.runners.values():
                        workers.start_soon(
                            fetch, core, runner, name=f"{self.path}/fetch/{runner.name}"
                        )
                        for i in range(runner.concurrency):
                            workers.start_soon(
                                work, core, runner, name=f"{self.path}/{runner.name}/{i}"
                            )
                    self._life.started()
                    if started is not None:
                        started()
                    await core.stop_requested.wait()
                    self._life.begin_stop()
                    core.wake_all()
                    if not core.hard_stop:
                        with anyio.move_on_after(core.timing.drain_timeout):
                            await self._wait_idle()
                    core.cancel_all("shutdown")
                # Every worker has exited: each held job has its outcome queued.
                await self._flush_outcomes()
                await finisher.stop()
                for service in reversed(services):
                    await service.stop()
        finally:
            unsubscribe()
            for cleanup in cleanups:
                cleanup()
            if ownership is not None:
                with anyio.CancelScope(shield=True):
                    await ownership.stop()
            self._life.stopped()
            self._stopped.set()
            log.info("job engine stopped", worker=self.worker)

    async def _flush_outcomes(self) -> None:
        core = self._core
        core.recorded_at = time.monotonic()
        while core.pending or core.held:
            if time.monotonic() - core.recorded_at > _SHUTDOWN_WRITE_DEADLINE:
                log.error(
                    "could not record outcomes at shutdown; those jobs will be rescued "
                    "when their leases expire",
                    jobs=sorted(core.held),
                )
                return
            core.pending_event.set()
            await anyio.sleep(0.01)

    async def _wait_idle(self) -> None:
        core = self._core
        while any(r.running or not r.inbox.empty() for r in core.runners.values()):
            core.idle.clear()
            await core.idle.wait()

    def request_stop(self, mode: StopMode = "drain") -> None:
        """Stop claiming; ``drain`` lets running jobs finish within
        ``drain_timeout``, ``cancel`` cancels them now (their jobs go back to the
        queue without using an attempt)."""
        if mode == "cancel":
            self.cancel()
            return
        self._core.stop_requested.set()

    def cancel(self) -> None:
        """Stop now: cancel running handlers and give their jobs back."""
        core = self._core
        core.hard_stop = True
        core.stop_requested.set()
        core.cancel_all("shutdown")

    def close(self, reason: str) -> None:
        """The engine is given up for good (its supervisor's decision)."""
        self._closed = True
        self._life.begin_stop()
        self._life.stopped()

    def reset(self) -> None:
        """Prepare to serve again (after a supervisor restart)."""
        if self._closed:
            return
        self._life.state = State.NEW
        self._core.reset()
        if self._new_ownership is not None:
            # A node runs once: the next incarnation joins with a new one.
            self._core.ownership = self._new_ownership()

    async def start(self) -> None:
        """Start serving in the background; returns once the engine runs.
        ``await stop()`` ends it (from any task)."""
        if self._closed or self._life.state is not State.NEW:
            self._life.begin_start()  # raises the message for this state
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()

        def on_started() -> None:
            if not started.done():
                started.set_result(None)

        # The engine runs in a task it owns (not in a task group of the caller), so
        # that stop() may be called from any task; stop() always waits for it.
        self._task = task = loop.create_task(self.serve(on_started), name=self.path)
        try:
            await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            # The caller gave up while the engine started: nothing may run on.
            with anyio.CancelScope(shield=True):
                await self.stop("cancel")
            raise
        if not started.done():
            started.cancel()
            self._task = None
            task.result()  # serve() ended before it ran: raise why

    async def stop(self, mode: StopMode = "drain") -> None:
        """Stop (see ``request_stop`` for the modes) and wait until stopped; raises
        what made the engine fail, if anything did. On an engine that was never
        started it returns at once."""
        if self._life.state is State.NEW and self._task is None:
            self._life.begin_stop()
            return
        self.request_stop(mode)
        task, self._task = self._task, None
        if task is None:
            if self._life.state is not State.STOPPED:
                await self._stopped.wait()
            return
        # Waited for to its end, whatever cancels the caller: an anyio shield keeps
        # anyio's cancellation out, and a native Task.cancel() (asyncio.timeout, a
        # server cancelling a request) is held until the engine has stopped.
        cancelled: asyncio.CancelledError | None = None
        with anyio.CancelScope(shield=True):
            while not task.done():
                try:
                    await asyncio.wait({task})
                except asyncio.CancelledError as exc:
                    cancelled = cancelled or exc
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        if cancelled is not None:
            raise cancelled

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop("drain")
