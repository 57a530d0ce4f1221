"""``JobEngine``: claims jobs from a store in batches, runs their handlers (inside
the owning actor for jobs whose kind names a domain), heartbeats their leases,
records outcomes in batches, rescues jobs whose worker died, enqueues periodic
jobs and prunes old ones.

Per queue, one fetcher claims at most ``concurrency - in_flight`` jobs (a job is
in flight from its claim until its outcome has committed) and hands them to
``concurrency`` worker tasks. One finisher writes every outcome that piled up
while the previous write was in progress in one statement: at low load a job's
outcome is written at once, at high load the batches grow (group commit)."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar

import anyio
import msgspec
import structlog

from .._errors import ConfigurationError, JobError, StoreError
from ..actors import Domain, StopMode
from ._jobs import (
    Cancel,
    ClaimedJob,
    Discard,
    Job,
    JobContext,
    JobEvent,
    JobOptions,
    JobOutcome,
    JobState,
    Lease,
    Outcome,
    Snooze,
    describe_error,
    note,
    periodic_key,
    prepare,
    state_mask,
)
from ._store import Notifications, Store

log = structlog.get_logger("fiefdom.jobs")

J = TypeVar("J", bound=Job)
H = TypeVar("H", bound=Callable[..., Awaitable[object]])
Handler = Callable[[J, JobContext[Any]], Awaitable[object]]

_MAX_BACKOFF = 30.0  # seconds between retries of an unreachable store
# At shutdown, outcomes are written for as long as the store records some; the
# engine gives up (leaving those jobs to be rescued) only after this long without
# a successful write, so a slow store is waited for and a dead one is not.
_SHUTDOWN_WRITE_DEADLINE = 10.0


class EngineState(enum.StrEnum):
    """Lifecycle of a job engine: new, running, stopping, stopped (may be reset and
    served again by a supervisor), closed (for good)."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True, slots=True)
class Retention:
    """How long final jobs are kept (seconds), and how often the pruning job runs."""

    completed: float = 24 * 3600.0
    cancelled: float = 7 * 24 * 3600.0
    discarded: float = 7 * 24 * 3600.0
    every: float = 3600.0


class PruneJobs(Job):
    """The engine's own periodic job that deletes old final jobs."""

    options = JobOptions(kind="fiefdom.prune", queue="fiefdom", max_attempts=3, timeout=600)
    completed: float
    cancelled: float
    discarded: float


class QueueStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One queue of an engine, in ``EngineStatistics.queues``."""

    queue: str
    concurrency: int
    in_flight: int  # claimed and not yet recorded
    running: int  # handlers running now
    paused: bool


class EngineStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of an engine (``engine.statistics()``)."""

    worker: str
    state: EngineState
    queues: list[QueueStatistics]
    claimed: int
    outcomes: dict[str, int]  # recorded outcomes by resulting state
    stale: int  # outcomes refused because the lease had been taken over
    rescued: int
    store_healthy: bool


@dataclasses.dataclass(slots=True)
class _Kind:
    cls: type[Job]
    options: JobOptions
    handler: Callable[[Any, JobContext[Any]], Awaitable[object]]
    decoder: msgspec.json.Decoder[Any]
    domain: Domain[Any, Any] | None


@dataclasses.dataclass(slots=True)
class _Periodic:
    name: str
    factory: Callable[[], Job]
    every: float
    run_on_start: bool


CancelReason = Literal["cancel", "lease", "shutdown", "pause"]


class _Held:
    """A job this engine claimed and has not yet recorded."""

    __slots__ = ("cancel_reason", "finished", "given_back", "job", "runner", "scope")

    def __init__(self, job: ClaimedJob, runner: _Runner) -> None:
        self.job = job
        self.runner = runner
        self.scope: anyio.CancelScope | None = None
        self.cancel_reason: CancelReason | None = None
        self.finished = False  # its outcome was handed to the finisher
        self.given_back: str | None = None  # why it went back unrun (its event's detail)


class _Runner:
    """One queue's fetcher state."""

    __slots__ = ("concurrency", "in_flight", "inbox", "name", "paused", "running", "wake")

    def __init__(self, name: str, concurrency: int) -> None:
        self.name = name
        self.concurrency = concurrency
        self.in_flight = 0
        self.running = 0
        self.paused = False
        self.wake = asyncio.Event()
        self.inbox: asyncio.Queue[_Held | None] = asyncio.Queue()


class _Raised:
    """An exception a domain job's handler raised, carried out of the actor's turn
    as a value: a failing job is an outcome, not a crash of the key's actor."""

    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


class _Queued:
    """A domain job's key did not take it within its queued bound: it never ran."""

    __slots__ = ()


_QUEUED = _Queued()


class JobEngine(Notifications):
    """Runs jobs from ``store``. Embed it with ``async with JobEngine(...)``, or
    host it in a supervisor (it implements a supervisor child's ``serve``,
    ``request_stop``, ``cancel``, ``close`` and ``reset``).

    ``queues`` maps each queue this engine serves to its concurrency.
    ``domains`` maps the domain names job kinds use to the running ``Domain``.
    A claim holds a job for ``lease`` seconds, renewed every ``heartbeat``
    seconds; another engine rescues it once the lease has expired.
    ``drain_timeout`` is how long a graceful stop lets running jobs finish
    before cancelling them and giving their jobs back (no attempt used).
    """

    def __init__(
        self,
        store: Store,
        *,
        queues: Mapping[str, int] | None = None,
        domains: Mapping[str, Domain[Any, Any]] | None = None,
        name: str | None = None,
        lease: float = 15.0,
        heartbeat: float | None = None,
        poll_interval: float = 1.0,
        rescue_interval: float = 2.0,
        batch_size: int = 100,
        drain_timeout: float = 10.0,
        retention: Retention | None = Retention(),
    ) -> None:
        queues = {"default": 10} if queues is None else dict(queues)
        for queue, n in queues.items():
            if n < 1:
                raise ConfigurationError(f"queues[{queue!r}]: concurrency must be >= 1, got {n}")
        if not lease > 0:
            raise ConfigurationError(f"lease must be positive seconds, got {lease}")
        heartbeat = lease / 3 if heartbeat is None else heartbeat
        if not 0 < heartbeat < lease:
            raise ConfigurationError(
                f"heartbeat ({heartbeat}s) must be positive and shorter than the lease ({lease}s)"
            )
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        self.store = store
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{name or uuid.uuid4().hex[:8]}"
        self.path = f"jobs/{name or 'engine'}"
        self._domains = dict(domains or {})
        self._lease = lease
        self._heartbeat = heartbeat
        self._poll = poll_interval
        self._rescue_every = rescue_interval
        self._batch = batch_size
        self._drain_timeout = drain_timeout
        self._retention = retention
        self._kinds: dict[str, _Kind] = {}
        self._periodic: list[_Periodic] = []
        self._runners = {q: _Runner(q, n) for q, n in queues.items()}
        self._held: dict[int, _Held] = {}
        self._pending: list[tuple[_Held, Outcome | None]] = []
        self._pending_event = asyncio.Event()
        self._subscribers: list[Callable[[JobEvent], None]] = []
        self._state = EngineState.NEW
        self._stop_requested = asyncio.Event()
        self._hard_stop = False
        self._stopped = asyncio.Event()
        self._idle = asyncio.Event()
        self._claimed = 0
        self._outcomes: dict[str, int] = {}
        self._stale = 0
        self._rescued = 0
        self._recorded_at = 0.0  # monotonic time of the last outcome write that succeeded
        # Paused queues are shared through the store: no claims until they are known.
        self._queue_state_known = False
        self._queue_state_stale = True  # read them on the next maintenance round
        self._queue_changes = 0  # pause notifications received, to spot a racing read
        self._stack: Any = None
        if retention is not None:
            self._runners.setdefault("fiefdom", _Runner("fiefdom", 1))
            self.register(PruneJobs, self._prune)
            self.periodic(
                lambda: PruneJobs(
                    completed=retention.completed,
                    cancelled=retention.cancelled,
                    discarded=retention.discarded,
                ),
                every=retention.every,
                run_on_start=True,
                name="fiefdom.prune",
            )

    # -- configuration ---------------------------------------------------------------

    def register(self, kind: type[J], handler: Handler[J]) -> None:
        """Run ``handler(job, ctx)`` for jobs of ``kind``."""
        if not (isinstance(kind, type) and issubclass(kind, Job)) or kind is Job:
            raise TypeError(f"register takes a fiefdom.Job subclass, got {kind!r}")
        opts = kind.options
        if opts.kind in self._kinds:
            raise ConfigurationError(f"job kind {opts.kind!r} already has a handler")
        domain: Domain[Any, Any] | None = None
        if opts.domain is not None:
            domain = self._domains.get(opts.domain)
            if domain is None:
                raise ConfigurationError(
                    f"job kind {opts.kind!r} runs in domain {opts.domain!r}, which this engine "
                    f"was not given: pass domains={{{opts.domain!r}: domain}} to JobEngine"
                )
        if opts.queue not in self._runners:
            log.warning(
                "registered a job kind whose queue this engine does not serve",
                kind=opts.kind,
                queue=opts.queue,
                served=sorted(self._runners),
            )
        self._kinds[opts.kind] = _Kind(kind, opts, handler, msgspec.json.Decoder(kind), domain)

    def handler(self, kind: type[J]) -> Callable[[H], H]:
        """Decorator form of ``register``."""

        def decorate(fn: H) -> H:
            self.register(kind, fn)
            return fn

        return decorate

    def periodic(
        self,
        factory: Callable[[], Job],
        *,
        every: float,
        run_on_start: bool = False,
        name: str | None = None,
    ) -> None:
        """Enqueue ``factory()`` once per ``every`` seconds (aligned to the clock),
        and at start when ``run_on_start``. With several engines on one database,
        a unique slot per period makes exactly one of them insert it."""
        if self._state is not EngineState.NEW:
            raise JobError("add periodic jobs before the engine starts")
        if not every > 0:
            raise ConfigurationError(f"periodic(every=...) must be positive, got {every}")
        sample = factory()
        if not isinstance(sample, Job):
            raise TypeError(f"periodic factory must return a fiefdom.Job, got {sample!r}")
        label = name or type(sample).options.kind
        if any(p.name == label for p in self._periodic):
            raise ConfigurationError(f"a periodic job named {label!r} already exists")
        self._periodic.append(_Periodic(label, factory, every, run_on_start))

    def subscribe(self, callback: Callable[[JobEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` on every state change this engine makes (it runs
        in the engine's task: keep it short, hand work to a stream or an actor).
        Returns the function that unsubscribes."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    # -- operations ------------------------------------------------------------------

    async def cancel_job(self, job_id: int) -> JobState | None:
        """Cancel a job by id; a running one is cancelled through its handler's
        scope (in its owning actor) by the engine holding it, and ends cancelled."""
        return await self.store.cancel_job(job_id)

    async def pause(self, queue: str) -> None:
        """Stop claiming from ``queue`` (running jobs go on). The pause is kept in the
        database: every engine on it stops claiming the queue (at once on PostgreSQL,
        within its poll interval on SQLite), and it survives restarts until resumed."""
        runner = self._runner(queue)
        await self.store.pause_queue(queue)
        runner.paused = True  # also while this engine is not subscribed (not serving)

    async def resume(self, queue: str) -> None:
        """Let every engine on the database claim from ``queue`` again."""
        runner = self._runner(queue)
        await self.store.resume_queue(queue)
        runner.paused = False
        runner.wake.set()

    def _runner(self, queue: str) -> _Runner:
        try:
            return self._runners[queue]
        except KeyError:
            raise JobError(
                f"this engine does not serve queue {queue!r}; it serves {sorted(self._runners)}"
            ) from None

    @property
    def state(self) -> EngineState:
        return self._state

    def statistics(self) -> EngineStatistics:
        return EngineStatistics(
            worker=self.worker,
            state=self._state,
            queues=[
                QueueStatistics(
                    queue=r.name,
                    concurrency=r.concurrency,
                    in_flight=r.in_flight,
                    running=r.running,
                    paused=r.paused,
                )
                for r in self._runners.values()
            ],
            claimed=self._claimed,
            outcomes=dict(self._outcomes),
            stale=self._stale,
            rescued=self._rescued,
            store_healthy=self.store.healthy,
        )

    # -- notifications from the store -------------------------------------------------

    def on_jobs(self, queue: str) -> None:
        runner = self._runners.get(queue)
        if runner is not None:
            runner.wake.set()

    def on_cancel(self, job_id: int) -> None:
        self._cancel_held(job_id, "cancel")

    def on_paused(self, queue: str, paused: bool) -> None:
        self._queue_changes += 1
        runner = self._runners.get(queue)
        if runner is not None:
            runner.paused = paused
            runner.wake.set()

    def _apply_paused(self, paused: set[str]) -> None:
        for runner in self._runners.values():
            was = runner.paused
            runner.paused = runner.name in paused
            if was and not runner.paused:
                runner.wake.set()
        if not self._queue_state_known:
            self._queue_state_known = True
            for runner in self._runners.values():
                runner.wake.set()

    async def _refresh_paused(self) -> None:
        """Read which queues are paused; a notification that arrives during the read
        is newer than what it returns, so then the read is repeated next round."""
        seen = self._queue_changes
        self._queue_state_stale = False
        try:
            paused = await self.store.paused_queues()
        except BaseException:
            self._queue_state_stale = True
            raise
        if self._queue_changes != seen:
            self._queue_state_stale = True
        else:
            self._apply_paused(paused)

    def _cancel_held(self, job_id: int, reason: CancelReason) -> None:
        held = self._held.get(job_id)
        if held is None or held.finished:
            return
        if held.cancel_reason is None or reason == "cancel":
            held.cancel_reason = reason
        if held.scope is not None:
            held.scope.cancel()

    # -- lifecycle -------------------------------------------------------------------

    async def serve(self, started: Callable[[], None] | None = None) -> None:
        """Run until a stop is requested, then stop gracefully (see the class doc)."""
        if self._state is EngineState.CLOSED:
            raise JobError(f"engine {self.worker} is closed and cannot run again")
        if self._state is not EngineState.NEW:
            raise JobError(
                f"engine {self.worker} is {self._state}: call reset() before serving again"
            )
        self._state = EngineState.RUNNING
        unsubscribe = self.store.subscribe(self)
        log.info("job engine started", worker=self.worker, queues=sorted(self._runners))
        try:
            async with anyio.create_task_group() as root:
                services = anyio.CancelScope()
                root.start_soon(self._services, services, name=f"{self.path}/services")
                finisher = anyio.CancelScope()
                root.start_soon(self._finisher, finisher, name=f"{self.path}/finisher")
                async with anyio.create_task_group() as work:
                    for runner in self._runners.values():
                        work.start_soon(
                            self._fetch, runner, name=f"{self.path}/fetch/{runner.name}"
                        )
                        for i in range(runner.concurrency):
                            work.start_soon(
                                self._work, runner, name=f"{self.path}/{runner.name}/{i}"
                            )
                    if started is not None:
                        started()
                    await self._stop_requested.wait()
                    self._state = EngineState.STOPPING
                    for runner in self._runners.values():
                        runner.wake.set()
                    if not self._hard_stop:
                        with anyio.move_on_after(self._drain_timeout):
                            await self._wait_idle()
                    self._cancel_all("shutdown")
                # Every worker has exited: each held job has its outcome queued.
                self._recorded_at = time.monotonic()
                while self._pending or self._held:
                    if time.monotonic() - self._recorded_at > _SHUTDOWN_WRITE_DEADLINE:
                        break
                    self._pending_event.set()
                    await anyio.sleep(0.01)
                if self._held:
                    log.error(
                        "could not record outcomes at shutdown; those jobs will be rescued "
                        "when their leases expire",
                        jobs=sorted(self._held),
                    )
                finisher.cancel()
                services.cancel()
        finally:
            unsubscribe()
            self._state = EngineState.STOPPED
            self._stopped.set()
            log.info("job engine stopped", worker=self.worker)

    async def _wait_idle(self) -> None:
        while any(r.running or not r.inbox.empty() for r in self._runners.values()):
            self._idle.clear()
            await self._idle.wait()

    def _cancel_all(self, reason: CancelReason) -> None:
        for job_id in list(self._held):
            self._cancel_held(job_id, reason)

    def request_stop(self, mode: StopMode = "drain") -> None:
        """Stop claiming; let running jobs finish within ``drain_timeout``."""
        self._stop_requested.set()

    def cancel(self) -> None:
        """Stop now: cancel running handlers and give their jobs back."""
        self._hard_stop = True
        self._stop_requested.set()
        self._cancel_all("shutdown")

    def close(self, reason: str) -> None:
        self._state = EngineState.CLOSED

    def reset(self) -> None:
        """Prepare to serve again (after a supervisor restart)."""
        if self._state is EngineState.CLOSED:
            return
        self._state = EngineState.NEW
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._hard_stop = False
        self._held.clear()
        self._pending.clear()
        self._queue_state_known = False
        self._queue_state_stale = True
        for runner in self._runners.values():
            runner.in_flight = runner.running = 0
            runner.inbox = asyncio.Queue()

    async def __aenter__(self) -> JobEngine:
        from contextlib import AsyncExitStack

        stack = AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        try:
            await tg.start(self._serve_started)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def _serve_started(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        await self.serve(lambda: task_status.started())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self.request_stop("drain")
        stack, self._stack = self._stack, None
        return bool(await stack.__aexit__(exc_type, exc, tb))

    async def stop(self) -> None:
        """Request a graceful stop and wait until the engine has stopped."""
        self.request_stop("drain")
        await self._stopped.wait()

    # -- claiming --------------------------------------------------------------------

    async def _fetch(self, runner: _Runner) -> None:
        failures = 0
        try:
            while not self._stop_requested.is_set():
                free = runner.concurrency - runner.in_flight
                if runner.paused or free <= 0 or not self._queue_state_known:
                    runner.wake.clear()
                    await runner.wake.wait()
                    continue
                runner.wake.clear()
                limit = min(free, self._batch)
                try:
                    jobs = await self.store.claim(
                        runner.name, limit, worker=self.worker, lease=self._lease
                    )
                except StoreError as exc:
                    failures += 1
                    await self._backoff("claim", exc, failures)
                    continue
                failures = 0
                self._claimed += len(jobs)
                # Paused while the claim was in flight: give the jobs back unrun, so
                # that no job of a queue starts once the engine knows it is paused.
                given_back = runner.paused
                for job in jobs:
                    held = _Held(job, runner)
                    self._held[job.id] = held
                    runner.in_flight += 1
                    if given_back:
                        held.cancel_reason = "pause"
                        lease = Lease(job.id, job.lease_token)
                        self._submit(
                            held, Outcome(lease=lease, state=JobState.AVAILABLE, refund=True)
                        )
                        continue
                    runner.inbox.put_nowait(held)
                    if self._subscribers:
                        self._emit(job, JobState.RUNNING, None)
                if len(jobs) < limit:
                    with anyio.move_on_after(self._poll):
                        await runner.wake.wait()
        finally:
            # One sentinel per worker: they exit once the jobs ahead of it are handled.
            for _ in range(runner.concurrency):
                runner.inbox.put_nowait(None)

    async def _backoff(
        self, what: str, exc: BaseException, failures: int, *, interruptible: bool = True
    ) -> None:
        delay = min(_MAX_BACKOFF, 0.1 * 2 ** min(failures, 10))
        log.warning(
            "store operation failed; retrying", operation=what, error=str(exc), retry_in=delay
        )
        if not interruptible:
            await anyio.sleep(delay)
            return
        with anyio.move_on_after(delay):
            await self._stop_requested.wait()

    # -- running ---------------------------------------------------------------------

    async def _work(self, runner: _Runner) -> None:
        inbox = runner.inbox
        while True:
            held = await inbox.get()
            if held is None:
                self._idle.set()  # a stop waits for the inboxes to empty too
                return
            runner.running += 1
            try:
                outcome = await self._execute(held)
            finally:
                runner.running -= 1
                if not runner.running:
                    self._idle.set()
            self._submit(held, outcome)

    async def _execute(self, held: _Held) -> Outcome | None:
        job = held.job
        lease = Lease(job.id, job.lease_token)
        if held.cancel_reason is not None or self._stop_requested.is_set():
            return self._cancelled_outcome(held, lease, started=False)
        kind = self._kinds.get(job.kind)
        if kind is None:
            reason = (
                f"no handler for job kind {job.kind!r} on engine {self.worker} "
                f"(it handles {sorted(self._kinds)})"
            )
            log.error("discarding a job of an unknown kind", job_id=job.id, kind=job.kind)
            return Outcome(
                lease=lease,
                state=JobState.DISCARDED,
                error=note(job.attempt, time.time(), "fiefdom.UnknownJobKind", reason),
            )
        try:
            payload = kind.decoder.decode(job.args)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            reason = f"the arguments of {job.kind} job {job.id} do not decode: {exc}"
            log.error(
                "discarding a job whose arguments do not decode", job_id=job.id, error=str(exc)
            )
            return Outcome(
                lease=lease,
                state=JobState.DISCARDED,
                error=note(job.attempt, time.time(), "msgspec.ValidationError", reason),
            )
        ctx: JobContext[Any] = JobContext(
            id=job.id,
            kind=job.kind,
            queue=job.queue,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            store=self.store,
        )
        if kind.domain is not None:
            assert kind.options.key is not None
            if kind.domain.is_paused(getattr(payload, kind.options.key)):
                # A paused key takes no message: handed to it, the job would hold a
                # slot of its queue (its lease kept alive by the heartbeat) until the
                # key resumes. It goes back unrun, to be claimed again after a poll.
                held.given_back = "given back unrun: its domain key is paused"
                return self._given_back(lease)
        result: object
        with anyio.CancelScope() as scope:
            held.scope = scope
            try:
                if kind.domain is not None:
                    assert kind.options.key is not None
                    result = await self._call_in_domain(
                        held, kind, getattr(payload, kind.options.key), payload, ctx
                    )
                    if type(result) is _Raised:
                        result = result.exc
                elif kind.options.timeout is not None:
                    with anyio.fail_after(kind.options.timeout):
                        result = await kind.handler(payload, ctx)
                else:
                    result = await kind.handler(payload, ctx)
            except Exception as exc:
                result = exc
        held.scope = None
        if held.cancel_reason == "lease" or (
            held.cancel_reason is not None and scope.cancelled_caught
        ):
            return self._cancelled_outcome(held, lease, started=True)
        if type(result) is _Queued:
            return self._given_back(lease)
        return self._outcome_of(job, lease, kind.options, result)

    def _given_back(self, lease: Lease) -> Outcome:
        """A job that never started goes back without using an attempt, claimable
        again after a poll interval (not at once, which would spin on the same key)."""
        return Outcome(lease=lease, state=JobState.SCHEDULED, delay=self._poll, refund=True)

    async def _call_in_domain(
        self, held: _Held, kind: _Kind, key: Any, payload: Job, ctx: JobContext[Any]
    ) -> object:
        """Run a domain job in its key's actor; ``_Queued`` if it never started.

        The job's timeout starts with its handler, inside the actor (_in_actor): the
        time queued behind other work for the key is not the job's. That wait still
        has a bound, the longer of the lease and the job's timeout, so that a key
        stuck behind earlier work (or paused after the job was handed to it) does not
        hold a slot of the queue indefinitely; past it the job goes back unrun.
        Cancellation (by request, lost lease, shutdown) reaches it through the
        caller's scope either way.
        """
        assert kind.domain is not None
        queued_for = max(self._lease, kind.options.timeout or 0.0)
        with anyio.CancelScope() as queued:
            queued.deadline = anyio.current_time() + queued_for
            result = await kind.domain.call(
                key,
                _in_actor(kind.handler, payload, ctx, kind.options.timeout, queued),
                timeout=None,
                name=f"job:{kind.options.kind}",
            )
        if queued.cancelled_caught or type(result) is _Queued:
            log.warning(
                "domain job given back unrun: its key's actor did not take it in time",
                job_id=held.job.id,
                kind=held.job.kind,
                key=str(key),
                queued_for=queued_for,
            )
            held.given_back = (
                f"given back unrun: its domain key did not take it within {queued_for:g}s"
            )
            return _QUEUED
        return result

    def _cancelled_outcome(self, held: _Held, lease: Lease, *, started: bool) -> Outcome | None:
        job = held.job
        reason = held.cancel_reason or "shutdown"
        if reason == "lease":
            return None  # another claim owns the job now: nothing of ours to record
        if reason == "cancel":
            return Outcome(
                lease=lease,
                state=JobState.CANCELLED,
                error=note(job.attempt, time.time(), "fiefdom.Cancelled", "cancelled by request"),
            )
        # Shutdown: the job goes back as it was, without using an attempt.
        return Outcome(lease=lease, state=JobState.AVAILABLE, delay=0.0, refund=True)

    def _outcome_of(
        self, job: ClaimedJob, lease: Lease, options: JobOptions, result: object
    ) -> Outcome:
        now = time.time()
        if not isinstance(result, BaseException):
            return Outcome(lease=lease, state=JobState.COMPLETED)
        if isinstance(result, JobOutcome):
            if isinstance(result, Cancel):
                err = note(job.attempt, now, "fiefdom.Cancel", result.reason)
                return Outcome(lease=lease, state=JobState.CANCELLED, error=err)
            if isinstance(result, Discard):
                err = note(job.attempt, now, "fiefdom.Discard", result.reason)
                return Outcome(lease=lease, state=JobState.DISCARDED, error=err)
            if isinstance(result, Snooze):
                state = JobState.SCHEDULED if result.delay > 0 else JobState.AVAILABLE
                return Outcome(lease=lease, state=state, delay=result.delay, refund=True)
        err = describe_error(result, job.attempt, now)
        if job.attempt >= job.max_attempts:
            log.warning(
                "job failed its last attempt: discarded",
                job_id=job.id,
                kind=job.kind,
                attempt=job.attempt,
                error=err.message,
            )
            return Outcome(lease=lease, state=JobState.DISCARDED, error=err)
        try:
            delay = float(options.backoff(job.attempt))
        except Exception:
            log.exception("backoff function raised; retrying at once", kind=job.kind)
            delay = 0.0
        if not math.isfinite(delay) or delay < 0:
            delay = 0.0
        state = JobState.RETRYABLE if delay > 0 else JobState.AVAILABLE
        return Outcome(lease=lease, state=state, delay=delay, error=err)

    # -- recording -------------------------------------------------------------------

    def _submit(self, held: _Held, outcome: Outcome | None) -> None:
        held.finished = True
        if outcome is None:
            self._release(held)
            self._stale += 1
            return
        self._pending.append((held, outcome))
        self._pending_event.set()

    def _release(self, held: _Held) -> None:
        if self._held.pop(held.job.id, None) is not None:
            held.runner.in_flight -= 1
            held.runner.wake.set()

    async def _finisher(self, scope: anyio.CancelScope) -> None:
        failures = 0
        with scope:
            while True:
                if not self._pending:
                    self._pending_event.clear()
                    await self._pending_event.wait()
                    continue
                batch, self._pending = self._pending, []
                try:
                    # Shielded: an outcome write in progress is waited for, so a
                    # cancelled engine knows what was recorded.
                    with anyio.CancelScope(shield=True):
                        done = await self.store.finish([o for _, o in batch if o is not None])
                except StoreError as exc:
                    self._pending[:0] = batch
                    failures += 1
                    # Not cut short by a stop: at shutdown this is the write still
                    # wanted, and retrying at once would spin on a failing store.
                    await self._backoff("finish", exc, failures, interruptible=False)
                    continue
                failures = 0
                self._recorded_at = time.monotonic()
                for held, outcome in batch:
                    self._release(held)
                    assert outcome is not None
                    ended = done.get(held.job.id)
                    if ended is not None:
                        self._outcomes[ended.value] = self._outcomes.get(ended.value, 0) + 1
                        if self._subscribers:
                            detail = None if outcome.error is None else outcome.error.message
                            if ended is not outcome.state:
                                detail = "superseded by a waiting job with its unique key"
                            elif held.given_back is not None:
                                detail = held.given_back
                            elif held.cancel_reason == "pause":
                                detail = "given back unrun: its queue was paused"
                            elif outcome.refund and outcome.state is JobState.AVAILABLE:
                                detail = "given back at shutdown"
                            self._emit(held.job, ended, detail)
                    else:
                        self._stale += 1
                        log.warning(
                            "outcome refused: the lease was taken over",
                            job_id=held.job.id,
                            token=held.job.lease_token,
                            outcome=outcome.state.value,
                        )

    def _emit(self, job: ClaimedJob, state: JobState, detail: str | None) -> None:
        event = JobEvent(
            job_id=job.id,
            kind=job.kind,
            queue=job.queue,
            state=state,
            attempt=job.attempt,
            at=time.time(),
            detail=detail,
            queued_for=job.queued_for if state is JobState.RUNNING else None,
        )
        self._publish(event)

    def _publish(self, event: JobEvent) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("job event subscriber raised", subscriber=repr(callback))

    # -- background services ---------------------------------------------------------

    async def _services(self, scope: anyio.CancelScope) -> None:
        with scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._listen, name=f"{self.path}/listen")
                tg.start_soon(self._heartbeats, name=f"{self.path}/heartbeat")
                tg.start_soon(self._maintain, name=f"{self.path}/maintain")
                for spec in self._periodic:
                    tg.start_soon(self._run_periodic, spec, name=f"{self.path}/every/{spec.name}")

    async def _listen(self) -> None:
        failures = 0
        while True:

            def ready() -> None:
                nonlocal failures
                failures = 0
                # Notifications may have been missed meanwhile.
                self._queue_state_stale = True
                for runner in self._runners.values():
                    runner.wake.set()

            try:
                await self.store.listen(self, ready)
            except StoreError as exc:
                failures += 1
                await self._backoff("listen", exc, failures)

    async def _heartbeats(self) -> None:
        while True:
            await anyio.sleep(self._heartbeat)
            # Finished jobs too: their outcome may wait for the finisher (a slow or
            # failing write), and a lease that lapsed meanwhile would let another
            # engine run the job again.
            leases = [Lease(h.job.id, h.job.lease_token) for h in self._held.values()]
            if not leases:
                continue
            try:
                alive, cancel = await self.store.heartbeat(leases, lease=self._lease)
            except StoreError as exc:
                log.warning("heartbeat failed", error=str(exc), jobs=len(leases))
                continue
            for lease in leases:
                if lease.job_id not in alive:
                    held = self._held.get(lease.job_id)
                    if held is not None and not held.finished:
                        log.warning("lease lost: cancelling the handler", job_id=lease.job_id)
                        self._cancel_held(lease.job_id, "lease")
            for job_id in cancel:
                self._cancel_held(job_id, "cancel")

    async def _maintain(self) -> None:
        next_rescue = 0.0
        while True:
            try:
                # Without notifications across processes, pauses are learnt here.
                if self._queue_state_stale or not self.store.notifies_processes:
                    await self._refresh_paused()
                await self.store.promote()
                now = time.monotonic()
                if now >= next_rescue:
                    next_rescue = now + self._rescue_every
                    for job_id, kind, queue, state in await self.store.rescue():
                        self._rescued += 1
                        log.warning(
                            "rescued a job whose lease expired", job_id=job_id, state=state.value
                        )
                        if self._subscribers:
                            self._publish(
                                JobEvent(
                                    job_id=job_id,
                                    kind=kind,
                                    queue=queue,
                                    state=state,
                                    attempt=0,
                                    at=time.time(),
                                    detail=(
                                        "lease expired on its last attempt: its worker died"
                                        if state is JobState.DISCARDED
                                        else "lease expired"
                                    ),
                                )
                            )
            except StoreError as exc:
                log.warning("maintenance failed", error=str(exc))
            await anyio.sleep(self._poll)

    async def _run_periodic(self, spec: _Periodic) -> None:
        slot = math.floor(time.time() / spec.every)
        if spec.run_on_start:
            await self._insert_periodic(spec, slot)
        while True:
            slot += 1
            await anyio.sleep(max(0.0, slot * spec.every - time.time()))
            await self._insert_periodic(spec, slot)

    async def _insert_periodic(self, spec: _Periodic, slot: int) -> None:
        try:
            row = prepare(
                spec.factory(),
                now=time.time(),
                unique_key=periodic_key(spec.name, slot),
                unique_states=state_mask(frozenset(JobState)),
            )
            if await self.store.insert_periodic(row):
                log.info("enqueued a periodic job", name=spec.name, slot=slot)
        except StoreError as exc:
            log.warning("could not enqueue a periodic job", name=spec.name, error=str(exc))

    async def _prune(self, job: PruneJobs, ctx: JobContext[Any]) -> None:
        total = 0
        while True:
            n = await self.store.prune(
                completed=job.completed, cancelled=job.cancelled, discarded=job.discarded
            )
            total += n
            if n < 10_000:
                break
        log.info("pruned finished jobs", deleted=total)

    def __repr__(self) -> str:
        return f"<JobEngine {self.worker} {self._state}>"


def _in_actor(
    handler: Callable[[Any, JobContext[Any]], Awaitable[object]],
    payload: Job,
    ctx: JobContext[Any],
    timeout: float | None,
    queued: anyio.CancelScope,
) -> Callable[[Any], Awaitable[object]]:
    async def run(actor: Any) -> object:
        if queued.cancel_called:
            # The queued bound passed as the actor took the job: the caller is being
            # cancelled and gives the job back, so the handler must not start.
            return _QUEUED
        # Started: from here only the job's own timeout applies.
        queued.deadline = math.inf
        ctx.actor = actor
        try:
            if timeout is None:
                return await handler(payload, ctx)
            # The same TimeoutError as a job outside a domain: a failed attempt.
            with anyio.fail_after(timeout):
                return await handler(payload, ctx)
        except Exception as exc:
            return _Raised(exc)

    return run
