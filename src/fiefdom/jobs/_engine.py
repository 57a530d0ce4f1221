"""``JobEngine``: the face of the job engine. It registers kinds and periodic jobs,
offers the operations, and runs its parts: per queue a fetcher (``_fetcher``) and
``concurrency`` workers (``_executor``), one finisher, and the maintenance
services (lease keeper, rescuer, promoter, queue watcher, listener, periodic
enqueuer), each in its own module."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar, overload

import anyio
import anyio.abc
import msgspec

from .._durations import StoreTimes
from .._errors import ConfigurationError, JobError
from .._lifecycle import Lifecycle, State
from .._log import get_logger
from ..actors import Domain
from ..storage import DomainJob, Job, JobEvent, JobState, Store
from ._core import DEFAULT_MAX_SNOOZES, Core, Kind, Runner, Timing
from ._kinds import DomainJobContext, JobContext
from ._ownership import ClusterView, Ownership, default_ownership
from ._periodic import Periodic
from ._pruner import PruneJobs, Retention, pruner
from ._running import EngineRunner

log = get_logger("fiefdom.jobs")

J = TypeVar("J", bound=Job)
DJ = TypeVar("DJ", bound=DomainJob)
Handler = Callable[[J, JobContext[Any]], Awaitable[object]]
# The handler of a DomainJob kind: its ctx's actor is typed as present.
DomainHandler = Callable[[DJ, DomainJobContext[Any]], Awaitable[object]]

_DEFAULT_RETENTION = Retention()
_FAILING = 3  # consecutive failed store operations that make the engine unhealthy
_USAGE = "use 'async with JobEngine(store) as engine'"


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
    state: State
    queues: list[QueueStatistics]
    claimed: int
    outcomes: dict[str, int]  # recorded outcomes by resulting state
    stale: int  # outcomes refused because the lease had been taken over
    rescued: int
    store_healthy: bool
    finish_failures: int = 0  # consecutive failed outcome writes (0: recording)
    claim_failures: int = 0  # consecutive failed claims (0: claiming)
    partitions: int | None = None  # partitions its cluster node holds (None: no cluster)
    cluster_nodes: int | None = None  # live nodes of the store's cluster
    cluster: ClusterView | None = None  # its node's view of the cluster (None: no cluster)
    claim_times: StoreTimes  # how long its claims took
    finish_times: StoreTimes  # how long its outcome writes took


class JobEngine(EngineRunner):
    """Runs jobs from ``store``. Embed it with ``async with JobEngine(...)`` (or
    ``await start()`` / ``await stop(mode)``), or host it in a supervisor (it
    implements a supervisor child's ``serve``, ``request_stop``, ``cancel``,
    ``close`` and ``reset``).

    ``queues`` maps each queue this engine serves to its concurrency.
    ``domains`` maps the domain names job kinds use to the running ``Domain``.
    A claim holds a job for ``lease`` seconds, renewed every ``heartbeat``
    seconds; another engine rescues it once the lease has expired.
    ``drain_timeout`` is how long a graceful stop lets running jobs finish
    before cancelling them and giving their jobs back (no attempt used).
    ``max_snoozes`` is how many times a job may be snoozed (``Snooze``, which
    uses no attempt): the snooze after that discards it instead, with an error
    saying so (None: no limit, a choice to make explicitly).

    An engine that serves domains joins the store's cluster (``ownership="cluster"``,
    the default): its node serves the other nodes on ``cluster_listen`` (loopback,
    any free port) and advertises ``cluster_address`` (None: the address it listens
    on) for them to forward asks and tells for the keys it owns.
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
        max_snoozes: int | None = DEFAULT_MAX_SNOOZES,
        retention: Retention | None = _DEFAULT_RETENTION,
        ownership: Ownership | Literal["cluster"] | None = "cluster",
        cluster_listen: str = "127.0.0.1:0",
        cluster_address: str | None = None,
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
        if max_snoozes is not None and max_snoozes < 0:
            raise ConfigurationError(
                f"max_snoozes must be >= 0 (None: no limit), got {max_snoozes}"
            )
        timing = Timing(
            lease=lease,
            heartbeat=heartbeat,
            poll=poll_interval,
            rescue_every=rescue_interval,
            batch=batch_size,
            drain_timeout=drain_timeout,
        )
        self._core = core = Core(
            store,
            name=name,
            queues=queues,
            domains=dict(domains or {}),
            timing=timing,
            max_snoozes=max_snoozes,
        )
        self._new_ownership: Callable[[], Ownership] | None = None
        if ownership == "cluster":
            # Safe by default: an engine that serves a domain joins the store's
            # cluster, so that every key has one owner across processes.
            factory = default_ownership()
            ownership = None
            if core.domains and factory is not None:
                worker = core.worker
                self._new_ownership = lambda: factory(
                    store, worker, lease, cluster_listen, cluster_address
                )
                ownership = self._new_ownership()
        core.ownership = ownership
        self.store = store
        self.worker = core.worker
        self.path = core.path
        self._life = Lifecycle(f"job engine {core.worker}", _USAGE)
        self._closed = False
        self._periodic: list[Periodic] = []
        self._stopped = anyio.Event()
        self._task: asyncio.Task[None] | None = None
        if retention is not None:
            core.runners.setdefault("fiefdom", Runner("fiefdom", 1))
            self.register(PruneJobs, pruner(core.queries))
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

    @overload
    def register(self, kind: type[DJ], handler: DomainHandler[DJ]) -> None: ...

    @overload
    def register(self, kind: type[J], handler: Handler[J]) -> None: ...

    def register(self, kind: type[Job], handler: Callable[[Any, Any], Awaitable[object]]) -> None:
        """Run ``handler(job, ctx)`` for jobs of ``kind``. For a ``DomainJob`` kind,
        ``ctx`` is a ``DomainJobContext`` (its ``actor`` typed as present)."""
        if not (isinstance(kind, type) and issubclass(kind, Job)) or kind is Job:
            raise TypeError(f"register takes a fiefdom.Job subclass, got {kind!r}")
        core = self._core
        opts = kind.options
        if opts.kind in core.kinds:
            raise ConfigurationError(f"job kind {opts.kind!r} already has a handler")
        domain: Domain[Any, Any] | None = None
        if opts.domain is not None:
            domain = core.domains.get(opts.domain)
            if domain is None:
                raise ConfigurationError(
                    f"job kind {opts.kind!r} runs in domain {opts.domain!r}, which this engine "
                    f"was not given: pass domains={{{opts.domain!r}: domain}} to JobEngine"
                )
        if opts.queue not in core.runners:
            log.warning(
                "registered a job kind whose queue this engine does not serve",
                kind=opts.kind,
                queue=opts.queue,
                served=sorted(core.runners),
            )
        core.kinds[opts.kind] = Kind(kind, opts, handler, msgspec.json.Decoder(kind), domain)

    # A DomainJob kind matches both; the first, which takes a DomainJobContext, wins.
    @overload
    def handler(  # type: ignore[overload-overlap]
        self, kind: type[DJ]
    ) -> Callable[[DomainHandler[DJ]], DomainHandler[DJ]]: ...

    @overload
    def handler(self, kind: type[J]) -> Callable[[Handler[J]], Handler[J]]: ...

    def handler(
        self, kind: type[Job]
    ) -> Callable[
        [Callable[[Any, Any], Awaitable[object]]], Callable[[Any, Any], Awaitable[object]]
    ]:
        """Decorator form of ``register``."""

        def decorate(
            fn: Callable[[Any, Any], Awaitable[object]],
        ) -> Callable[[Any, Any], Awaitable[object]]:
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
        if self._life.state is not State.NEW:
            raise JobError(f"add periodic jobs before the engine starts; it is {self.state}")
        if not every > 0:
            raise ConfigurationError(f"periodic(every=...) must be positive, got {every}")
        sample = factory()
        if not isinstance(sample, Job):
            raise TypeError(f"periodic factory must return a fiefdom.Job, got {sample!r}")
        label = name or type(sample).options.kind
        if any(p.name == label for p in self._periodic):
            raise ConfigurationError(f"a periodic job named {label!r} already exists")
        self._periodic.append(Periodic(label, factory, every, run_on_start))

    def subscribe(self, callback: Callable[[JobEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` on every state change this engine makes (it runs
        in the engine's task: keep it short, hand work to a stream or an actor).
        Returns the function that unsubscribes."""
        subscribers = self._core.subscribers
        subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in subscribers:
                subscribers.remove(callback)

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

    def _runner(self, queue: str) -> Runner:
        try:
            return self._core.runners[queue]
        except KeyError:
            raise JobError(
                f"this engine does not serve queue {queue!r}; it serves "
                f"{sorted(self._core.runners)}"
            ) from None

    @property
    def state(self) -> State:
        return self._life.state

    @property
    def ownership(self) -> Ownership | None:
        """The engine's current ownership (its cluster node), None if it has none. A
        supervisor's restart gives the engine a new node: read it when needed."""
        return self._core.ownership

    def statistics(self) -> EngineStatistics:
        core = self._core
        return EngineStatistics(
            worker=self.worker,
            state=self._life.state,
            queues=[
                QueueStatistics(
                    queue=r.name,
                    concurrency=r.concurrency,
                    in_flight=r.in_flight,
                    running=r.running,
                    paused=r.paused,
                )
                for r in core.runners.values()
            ],
            claimed=core.claimed,
            outcomes=dict(core.outcomes),
            stale=core.stale,
            rescued=core.rescued,
            store_healthy=self.store.healthy,
            finish_failures=core.finish_failures,
            claim_failures=core.claim_failures,
            partitions=None if core.ownership is None else core.ownership.held,
            cluster_nodes=None if core.ownership is None else len(core.ownership.live_nodes),
            cluster=None if core.ownership is None else core.ownership.view(),
            claim_times=core.claim_times.snapshot(),
            finish_times=core.finish_times.snapshot(),
        )

    @property
    def healthy(self) -> bool:
        """Whether the engine runs and can do its work: its claims and outcome writes
        reach the store (``/readyz`` reports it). One failed try is a blip, not an
        outage: it takes ``_FAILING`` in a row to count."""
        core = self._core
        return (
            self._life.state is State.RUNNING
            and core.claim_failures < _FAILING
            and core.finish_failures < _FAILING
        )

    # -- notifications from the store -------------------------------------------------

    def on_jobs(self, queue: str) -> None:
        runner = self._core.runners.get(queue)
        if runner is not None:
            runner.wake.set()

    def on_cancel(self, job_id: int) -> None:
        self._core.cancel_held(job_id, "cancel")

    def on_paused(self, queue: str, paused: bool) -> None:
        self._core.queue_changes += 1
        runner = self._core.runners.get(queue)
        if runner is not None:
            runner.paused = paused
            runner.wake.set()

    def __repr__(self) -> str:
        return f"<JobEngine {self.worker} {self._life.state}>"
