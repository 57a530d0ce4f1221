"""Glue between the job engine (storage) and the control channel: user modules
register job kinds during setup (the engine is built afterwards, when every domain
a kind runs in is known), the engine's operations are offered as the
``JobService`` the server calls, and job events feed the hub and the metrics."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar, overload

import anyio

from .._errors import ControlError, JobError, StoreUnavailable, UnknownJobKind
from .._lifecycle import State
from .._log import get_logger
from ..actors import Domain, StopMode
from ..jobs import DomainJobContext, JobContext, JobEngine, Retention, is_snooze
from ..protocol import ClusterInfo, ControlMetrics, ErrorCode, EventHub, NotFound, QueueInfo
from ..storage import PARTITIONS, DomainJob, Enqueued, Job, JobEvent, JobInfo, JobState, Store
from ._config import Config

log = get_logger("fiefdom.daemon.jobs")

J = TypeVar("J", bound=Job)
DJ = TypeVar("DJ", bound=DomainJob)
Handler = Callable[[J, JobContext[Any]], Awaitable[object]]
# The handler of a DomainJob kind: its ctx's actor is typed as present.
DomainHandler = Callable[[DJ, DomainJobContext[Any]], Awaitable[object]]
AnyHandler = Callable[[Any, Any], Awaitable[object]]
# States that end an attempt (its outcome and duration are counted; a snooze, which
# leaves its job scheduled or available, counts as the outcome "snoozed").
_ENDED = frozenset({JobState.RETRYABLE, JobState.COMPLETED, JobState.CANCELLED, JobState.DISCARDED})
_STARTS_KEPT = 100_000  # start times of running jobs, for their duration
# A listing's total is counted up to this many jobs (one bounded read of an index).
_COUNT_CAP = 100_000


def engine_settings(config: Config) -> dict[str, Any]:
    """The engine's settings from ``[jobs]`` (see ``JobsSection``)."""
    jobs = config.jobs
    kept = jobs.retention
    return {
        "poll_interval": jobs.poll_interval,
        "lease": jobs.lease,
        "heartbeat": jobs.heartbeat,
        "rescue_interval": jobs.rescue_interval,
        "batch_size": jobs.batch_size,
        "drain_timeout": config.drain_timeout,
        "max_snoozes": None if jobs.max_snoozes == "unlimited" else jobs.max_snoozes,
        "cluster_listen": config.cluster.listen,
        "cluster_address": config.cluster.advertise,
        "retention": Retention(
            completed=kept.completed,
            cancelled=kept.cancelled,
            discarded=kept.discarded,
            every=kept.every,
        )
        if kept.enabled
        else None,
    }


class JobRegistrar:
    """What ``daemon.jobs`` is in a module's setup hook: register job kinds (and
    the domains they run in) before the engine starts."""

    def __init__(self) -> None:
        self.kinds: dict[str, tuple[type[Job], AnyHandler]] = {}
        self.domains: dict[str, Domain[Any, Any]] = {}
        self.periodics: list[tuple[Callable[[], Job], dict[str, Any]]] = []
        self.closed = False

    def _check(self) -> None:
        if self.closed:
            raise JobError("register job kinds in a module's setup hook, before the engine starts")

    @overload
    def register(self, kind: type[DJ], handler: DomainHandler[DJ]) -> None: ...

    @overload
    def register(self, kind: type[J], handler: Handler[J]) -> None: ...

    def register(self, kind: type[Job], handler: AnyHandler) -> None:
        """Run ``handler(job, ctx)`` for jobs of ``kind``. For a ``DomainJob`` kind,
        ``ctx`` is a ``DomainJobContext`` (its ``actor`` typed as present)."""
        self._check()
        name = kind.options.kind
        if name in self.kinds:
            raise JobError(f"job kind {name!r} is already registered")
        self.kinds[name] = (kind, handler)

    # A DomainJob kind matches both; the first, which takes a DomainJobContext, wins.
    @overload
    def handler(  # type: ignore[overload-overlap]
        self, kind: type[DJ]
    ) -> Callable[[DomainHandler[DJ]], DomainHandler[DJ]]: ...

    @overload
    def handler(self, kind: type[J]) -> Callable[[Handler[J]], Handler[J]]: ...

    def handler(self, kind: type[Job]) -> Callable[[AnyHandler], AnyHandler]:
        """Decorator form of ``register``."""

        def decorate(fn: AnyHandler) -> AnyHandler:
            self.register(kind, fn)
            return fn

        return decorate

    def domain(self, name: str, domain: Domain[Any, Any]) -> None:
        """Make ``domain`` available to job kinds declaring ``JobOptions(domain=name)``."""
        self._check()
        self.domains[name] = domain

    def periodic(
        self,
        factory: Callable[[], Job],
        *,
        every: float,
        run_on_start: bool = False,
        name: str | None = None,
    ) -> None:
        """Enqueue ``factory()`` every ``every`` seconds (see ``JobEngine.periodic``)."""
        self._check()
        self.periodics.append(
            (factory, {"every": every, "run_on_start": run_on_start, "name": name})
        )


class EngineService:
    """The job engine as the daemon's ``jobs`` service. It adds one thing to the
    engine's own Service methods: a stop in ``cancel`` mode (a second signal, or
    ``stop --cancel``) that comes before the supervisor has asked the engine to stop
    is kept until it does. Cancelling the engine directly would end its ``serve``
    on its own, and the supervisor would take that for an exit and restart it."""

    def __init__(self, engine: JobEngine) -> None:
        self.engine = engine
        self._stopping = False
        self._cancel = False

    async def serve(self, started: Callable[[], None] | None = None) -> None:
        """Run the engine until the supervisor stops it."""
        await self.engine.serve(started)

    def request_stop(self, mode: StopMode) -> None:
        """Stop claiming; running jobs finish within the drain deadline (or are
        cancelled at once when a cancel was asked for)."""
        self._stopping = True
        if self._cancel:
            self.engine.cancel()
        else:
            self.engine.request_stop(mode)

    def cancel(self) -> None:
        """Cancel running jobs now and give them back to their queue."""
        self.engine.cancel()

    def cancel_when_stopping(self) -> None:
        """Cancel now if the engine is stopping, else as soon as it is asked to stop."""
        self._cancel = True
        if self._stopping:
            self.engine.cancel()

    def close(self, reason: str) -> None:
        """The engine will not run again."""
        self.engine.close(reason)

    def reset(self) -> None:
        """Prepare the engine to run again (after a crash)."""
        self._stopping = False
        self.engine.reset()


class JobsAdapter:
    """Owns the daemon's job engine and offers it to the control channel."""

    def __init__(self, config: Config, hub: EventHub, metrics: ControlMetrics) -> None:
        self.config = config
        self.hub = hub
        self.metrics = metrics
        self.registrar = JobRegistrar()
        self.engine: JobEngine | None = None
        self.store: Store | None = None
        self._starts: OrderedDict[int, float] = OrderedDict()
        self._changed = asyncio.Event()
        self._service: EngineService | None = None
        self._unsubscribe: Callable[[], None] = lambda: None

    # -- lifecycle -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.engine is not None and self.engine.state is State.RUNNING

    @property
    def healthy(self) -> bool:
        """Whether the engine runs and its last claim and outcome write reached the
        store (``/readyz``'s ``jobs`` check: false during a database outage)."""
        return self.engine is not None and self.engine.healthy

    @property
    def service(self) -> JobsAdapter | None:
        return self if self.store is not None else None

    def attach(self, store: Store) -> None:
        self.store = store

    async def build_engine(self) -> EngineService:
        """Build the engine from what the modules registered (registration closes
        here), with the configured queues paused; returns the service that the
        daemon's supervisor runs as its ``jobs`` child."""
        assert self.store is not None
        self.registrar.closed = True
        queues = {name: q.concurrency for name, q in self.config.jobs.queues.items()}
        if self.config.vault.enabled and not self.config.jobs.retention.enabled:
            # The vault's sweep jobs run on the engine's own queue, which the pruning
            # job otherwise brings along.
            queues.setdefault("fiefdom", 1)
        engine = JobEngine(
            self.store,
            queues=queues,
            domains=self.registrar.domains,
            name=self.config.daemon.name,
            **engine_settings(self.config),
        )
        for kind, handler in self.registrar.kinds.values():
            engine.register(kind, handler)
        for factory, options in self.registrar.periodics:
            engine.periodic(factory, **options)
        for name, queue in self.config.jobs.queues.items():
            if queue.paused:
                await engine.pause(name)
        self._unsubscribe = engine.subscribe(self._on_event)
        self.engine = engine
        self.metrics.engine = engine
        self._service = EngineService(engine)
        return self._service

    def detach(self) -> None:
        """Stop listening to the engine's events (the daemon has stopped)."""
        self._unsubscribe()

    def cancel_running(self) -> None:
        """Cancel running jobs now (the engine gives them back to their queue), or as
        soon as the supervisor stops the engine, when it has not begun to yet."""
        if self._service is not None:
            self._service.cancel_when_stopping()

    # -- events ----------------------------------------------------------------------

    def _on_event(self, event: JobEvent) -> None:
        # Runs in the engine's task: publishing and counting never wait.
        self._changed.set()
        if event.state is JobState.RUNNING:
            self._starts[event.job_id] = event.at
            if len(self._starts) > _STARTS_KEPT:
                self._starts.popitem(last=False)
            if event.queued_for is not None:
                self.metrics.job_time_in_queue.labels(event.queue, event.kind).observe(
                    event.queued_for
                )
        elif event.state in _ENDED or is_snooze(event):
            # A snooze ends an attempt too: the job waits again, its attempt given back.
            outcome = str(event.state) if event.state in _ENDED else "snoozed"
            self.metrics.job_outcomes.labels(event.queue, event.kind, outcome).inc()
            started = self._starts.pop(event.job_id, None)
            if started is not None:
                self.metrics.job_duration.labels(event.queue, event.kind, outcome).observe(
                    max(0.0, event.at - started)
                )
        self.hub.publish(event)

    # -- JobService ------------------------------------------------------------------

    def _store(self) -> Store:
        if self.store is None:
            raise StoreUnavailable("the store is not open")
        return self.store

    def job_kind(self, kind: str) -> type[Job]:
        registered = self.registrar.kinds.get(kind)
        if registered is None:
            raise UnknownJobKind(
                f"no job kind {kind!r} is registered in this daemon; "
                f"the kinds are {sorted(self.registrar.kinds)}"
            )
        return registered[0]

    async def list_jobs(
        self,
        *,
        queue: str | None,
        state: JobState | None,
        kind: str | None,
        after_id: int,
        limit: int,
        key: str | None = None,
        since: datetime | None = None,
        newest_first: bool = False,
    ) -> list[JobInfo]:
        return await self._store().list_jobs(
            queue=queue,
            state=state,
            kind=kind,
            after_id=after_id,
            limit=limit,
            key=key,
            since=since,
            newest_first=newest_first,
        )

    async def count_listed(
        self,
        *,
        queue: str | None,
        state: JobState | None,
        kind: str | None,
        key: str | None,
        since: datetime | None,
    ) -> tuple[int, int]:
        total = await self._store().count_listed(
            queue=queue, state=state, kind=kind, key=key, since=since, cap=_COUNT_CAP
        )
        return total, _COUNT_CAP

    async def get_job(self, job_id: int) -> JobInfo:
        job = await self._store().get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    async def enqueue(
        self,
        job: Job,
        *,
        queue: str | None,
        priority: int | None,
        delay: float | None,
    ) -> Enqueued:
        return await self._store().enqueue(job, queue=queue, priority=priority, delay=delay)

    async def retry_job(self, job_id: int, *, force: bool = False) -> JobInfo:
        job = await self.get_job(job_id)
        if job.state is JobState.COMPLETED and not force:
            raise JobError(
                f"job {job_id} completed: retrying it runs it a second time; "
                "ask again with force to do so"
            )
        if not await self._store().retry_job(job_id):
            job = await self.get_job(job_id)
            raise JobError(
                f"job {job_id} is {job.state}: only discarded, cancelled or completed jobs "
                "can be retried"
            )
        return await self.get_job(job_id)

    async def cancel_job(self, job_id: int) -> JobInfo:
        if await self._store().cancel_job(job_id) is None:
            raise NotFound(f"no job {job_id}")
        return await self.get_job(job_id)

    def kinds(self) -> list[type[Job]]:
        return [kind for kind, _ in self.registrar.kinds.values()]

    async def retry_jobs(
        self, *, state: JobState, queue: str | None, kind: str | None, limit: int, force: bool
    ) -> tuple[int, int]:
        if state is JobState.COMPLETED and not force:
            raise JobError(
                "retrying completed jobs runs them a second time; ask again with force to do so"
            )
        try:
            return await self._store().retry_jobs(state=state, queue=queue, kind=kind, limit=limit)
        except ValueError as exc:
            raise ControlError(ErrorCode.INVALID_MESSAGE, str(exc)) from None

    async def prune_jobs(
        self,
        *,
        older_than: float,
        states: Sequence[JobState],
        queue: str | None,
        kind: str | None,
        limit: int,
    ) -> int:
        try:
            return await self._store().prune_jobs(
                older_than=older_than, states=states, queue=queue, kind=kind, limit=limit
            )
        except ValueError as exc:
            raise ControlError(ErrorCode.INVALID_MESSAGE, str(exc)) from None

    async def queues(self) -> list[QueueInfo]:
        counts: dict[str, dict[JobState, int]] = {name: {} for name in self.config.jobs.queues}
        for row in await self._store().count_jobs():
            counts.setdefault(row.queue, {})[row.state] = row.count
        # The database's pause state: it holds for every daemon on it, running or not.
        paused = await self._store().paused_queues()
        return [
            QueueInfo(name=name, paused=name in paused, counts=by_state)
            for name, by_state in sorted(counts.items())
        ]

    def cluster(self) -> ClusterInfo | None:
        if self.engine is None:
            return None
        stats = self.engine.statistics()
        if stats.partitions is None:
            return None
        # From the node's memory, never the store: a status reply does not fail
        # while the store is down, it tells what the node's last round saw.
        view = stats.cluster
        if view is None:
            return ClusterInfo(
                node=stats.worker,
                partitions=stats.partitions,
                total=PARTITIONS,
                nodes=stats.cluster_nodes or 0,
            )
        return ClusterInfo(
            node=stats.worker,
            partitions=stats.partitions,
            total=PARTITIONS,
            nodes=stats.cluster_nodes or 0,
            min_epoch=view.min_epoch,
            max_epoch=view.max_epoch,
            members=view.members,
            unowned=view.unowned,
            as_of=view.as_of,
            counters=view.counters,
            events=view.events,
        )

    def _engine(self) -> JobEngine:
        if self.engine is None:
            raise JobError("the job engine is not running")
        return self.engine

    async def pause(self, queue: str) -> None:
        await self._engine().pause(queue)
        log.info("queue paused", queue=queue)

    async def resume(self, queue: str) -> None:
        await self._engine().resume(queue)
        log.info("queue resumed", queue=queue)

    async def drain(self, queue: str | None, timeout: float | None) -> None:
        """Pause ``queue`` (every queue when None) and wait until none of its jobs runs."""
        engine = self.engine
        if engine is None:
            return
        names = [q.queue for q in engine.statistics().queues if queue in (None, q.queue)]
        if queue is not None and not names:
            await engine.pause(queue)  # raises the engine's "does not serve" error
        for name in names:
            await engine.pause(name)
        with anyio.fail_after(timeout):
            while any(q.in_flight for q in engine.statistics().queues if q.queue in names):
                # Woken by job events; the engine releases a job's slot only after its
                # outcome committed, a moment after the event, hence the short re-check.
                self._changed.clear()
                with anyio.move_on_after(0.1):
                    await self._changed.wait()
        log.info("drained", queues=names, at=time.time())
