"""Prometheus metrics of the daemon, in a registry of its own (never the global
one, so that two daemons in one process do not collide). Actor figures are read
from the supervisor tree at scrape time; job figures come from job events."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .._durations import StoreTimes
from ..actors import ActorStatistics, DomainStatistics
from ..jobs import JobEngine
from ..jobs._ownership import ClusterCounters
from ..storage._postgres_pool import PoolStatistics
from ..supervisors import ActorSystem, ServiceStatistics, SupervisorStatistics
from ._replies import QueueInfo


class PooledStore(Protocol):
    """A store with a connection pool (PostgreSQL)."""

    def pool_statistics(self) -> PoolStatistics: ...


_DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0)


class _TreeCollector(Collector):
    def __init__(self, metrics: ControlMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        depth = GaugeMetricFamily(
            "fiefdom_actor_mailbox_depth",
            "Messages waiting in an actor's mailbox",
            labels=["actor"],
        )
        handled = CounterMetricFamily(
            "fiefdom_actor_messages_handled", "Messages an actor has handled", labels=["actor"]
        )
        restarts = CounterMetricFamily(
            "fiefdom_restarts", "Restarts of an actor or by a supervisor", labels=["path", "kind"]
        )
        stuck = GaugeMetricFamily(
            "fiefdom_actor_stuck", "1 when a cancelled handler has not returned", labels=["actor"]
        )
        live = GaugeMetricFamily(
            "fiefdom_domain_live_actors", "Live activations of a domain", labels=["domain"]
        )
        activations = CounterMetricFamily(
            "fiefdom_domain_activations", "Activations of a domain's actors", labels=["domain"]
        )
        crashes = CounterMetricFamily(
            "fiefdom_domain_crashes", "Crashes of a domain's actors", labels=["domain"]
        )
        system = self._metrics.system
        if system is not None:
            stack: list[
                ActorStatistics | DomainStatistics | ServiceStatistics | SupervisorStatistics
            ] = [system.statistics()]
            while stack:
                node = stack.pop()
                if isinstance(node, SupervisorStatistics):
                    restarts.add_metric([node.path, "supervisor"], node.restarts)
                    stack.extend(node.children)
                elif isinstance(node, ServiceStatistics):
                    restarts.add_metric([node.path, "service"], node.restarts)
                elif isinstance(node, ActorStatistics):
                    depth.add_metric([node.path], node.mailbox_depth)
                    handled.add_metric([node.path], node.messages_handled)
                    restarts.add_metric([node.path, "actor"], node.restarts)
                    stuck.add_metric([node.path], 1.0 if node.stuck else 0.0)
                else:
                    # Per-key actors are summed into their domain: a label per key
                    # would grow the series without bound.
                    live.add_metric([node.path], node.live)
                    activations.add_metric([node.path], node.activations)
                    crashes.add_metric([node.path], node.crashes)
        yield from (depth, handled, restarts, stuck, live, activations, crashes)
        jobs = GaugeMetricFamily(
            "fiefdom_jobs", "Jobs by queue and state", labels=["queue", "state"]
        )
        paused = GaugeMetricFamily(
            "fiefdom_queue_paused", "1 when a queue is paused", labels=["queue"]
        )
        for queue in self._metrics.queues:
            paused.add_metric([queue.name], 1.0 if queue.paused else 0.0)
            for state, count in sorted(queue.counts.items()):
                jobs.add_metric([queue.name, state], count)
        yield jobs
        yield paused
        frames = CounterMetricFamily(
            "fiefdom_ws_frames",
            "Control-channel frames received, by message type",
            labels=["type"],
        )
        for tag, count in sorted(self._metrics.frames.items()):
            frames.add_metric([tag], count)
        yield frames
        pool = self._metrics.pool
        if pool is not None:
            yield from _pool_metrics(pool.pool_statistics())
        engine = self._metrics.engine
        if engine is not None:
            stats = engine.statistics()
            failing = GaugeMetricFamily(
                "fiefdom_engine_failing",
                "Consecutive failed store operations of the job engine (0 when working), "
                "by operation",
                labels=["operation"],
            )
            failing.add_metric(["claim"], stats.claim_failures)
            failing.add_metric(["finish"], stats.finish_failures)
            yield failing
            took = HistogramMetricFamily(
                "fiefdom_engine_store_seconds",
                "Time the job engine's claims and outcome writes took (those that "
                "succeeded), by operation",
                labels=["operation"],
            )
            for operation, times in (("claim", stats.claim_times), ("finish", stats.finish_times)):
                took.add_metric([operation], _buckets(times), times.seconds)
            yield took
            if stats.partitions is not None:
                held = GaugeMetricFamily(
                    "fiefdom_cluster_partitions_held",
                    "Partitions of the store's cluster this node holds a lease on",
                )
                held.add_metric([], stats.partitions)
                nodes = GaugeMetricFamily(
                    "fiefdom_cluster_nodes", "Live nodes of the store's cluster"
                )
                nodes.add_metric([], stats.cluster_nodes or 0)
                yield held
                yield nodes
            if stats.cluster is not None:
                yield from _cluster_counters(stats.cluster.counters)


# The counters of a cluster node, each exposed with the ``_total`` suffix.
_CLUSTER_COUNTERS = (
    ("lease_renewals", "renewals", "Lease rounds of this node that renewed its leases"),
    ("lease_failures", "renewal_failures", "Lease rounds of this node that failed"),
    (
        "takeovers",
        "took_over",
        "Partitions this node took over from a node whose lease had expired",
    ),
    (
        "partitions_lost",
        "lost",
        "Partitions another node took over while this node held them",
    ),
    (
        "partitions_expired",
        "expired",
        "Partitions whose lease expired while this node held them (their work stopped)",
    ),
    ("handoffs", "handed_over", "Partitions this node handed over to a node that joined"),
    (
        "fences",
        "fences",
        "Times this node gave up every partition because it could not renew its leases",
    ),
    ("forwarded", "forwarded", "Asks and tells this node forwarded to the owner of their key"),
    ("forward_failures", "forward_failures", "Forwarded asks and tells that failed"),
    (
        "forward_seconds",
        "forward_seconds",
        "Seconds the forwarded asks and tells that succeeded took (over forwarded_total: "
        "the mean latency)",
    ),
    (
        "peer_connections_refused",
        "peer_connections_refused",
        "Connections to this node's peer server closed or refused by its admission "
        "(too many at once)",
    ),
)


def _cluster_counters(counters: ClusterCounters) -> Iterator[CounterMetricFamily]:
    for name, field, help_text in _CLUSTER_COUNTERS:
        yield CounterMetricFamily(
            f"fiefdom_cluster_{name}", help_text, value=getattr(counters, field)
        )


class ControlMetrics:
    """The metric objects; ``render()`` produces the exposition text."""

    def __init__(self, system: ActorSystem | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.system = system
        self.engine: JobEngine | None = None  # set while the daemon's engine exists
        self.pool: PooledStore | None = None  # set when the daemon's store has a pool
        self.queues: Sequence[QueueInfo] = ()
        self.ws_connections = Gauge(
            "fiefdom_ws_connections", "Open control-channel websockets", registry=self.registry
        )
        self.frames: dict[str, int] = {}  # frames received by type (read at scrape time)
        self.ws_errors = Counter(
            "fiefdom_ws_errors", "Error frames sent, by code", ["code"], registry=self.registry
        )
        self.ws_refused = Counter(
            "fiefdom_ws_refused",
            "Connections refused before the upgrade, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.events_dropped = Counter(
            "fiefdom_events_dropped",
            "Events dropped because a subscriber was too slow",
            registry=self.registry,
        )
        self.job_outcomes = Counter(
            "fiefdom_job_outcomes",
            "Job attempts ended, by queue, kind and outcome",
            ["queue", "kind", "outcome"],
            registry=self.registry,
        )
        self.job_duration = Histogram(
            "fiefdom_job_duration_seconds",
            "Run time of a job attempt",
            ["queue", "kind", "outcome"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.job_time_in_queue = Histogram(
            "fiefdom_job_time_in_queue_seconds",
            "Time from when a job was due to when an attempt started",
            ["queue", "kind"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_TreeCollector(self))
        # The process (CPU, memory, file descriptors), the interpreter and its garbage
        # collector (collections by generation: what the raised threshold changes,
        # fiefdom._gc), as prometheus_client's default registry would export them.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)

    def render(self, queues: Sequence[QueueInfo]) -> bytes:
        self.queues = queues
        return generate_latest(self.registry)


def _pool_metrics(stats: PoolStatistics) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
    connections = GaugeMetricFamily(
        "fiefdom_store_pool_connections",
        "Connections of the store's pool, by state (in_use, idle)",
        labels=["state"],
    )
    connections.add_metric(["in_use"], stats.in_use)
    connections.add_metric(["idle"], stats.size - stats.in_use)
    yield connections
    limit = GaugeMetricFamily("fiefdom_store_pool_max", "Connections the store's pool may open")
    limit.add_metric([], stats.max_size)
    yield limit
    waiting = GaugeMetricFamily(
        "fiefdom_store_pool_waiting", "Callers waiting for a connection of the store's pool"
    )
    waiting.add_metric([], stats.waiting)
    yield waiting
    acquire = HistogramMetricFamily(
        "fiefdom_store_pool_acquire_seconds", "Time taken to get a connection from the pool"
    )
    acquire.add_metric([], _buckets(stats.acquire_times), stats.acquire_times.seconds)
    yield acquire


def _buckets(times: StoreTimes) -> list[tuple[str, float]]:
    """A histogram's cumulative buckets (``buckets[i]``: at most ``bounds[i]``), with
    +Inf holding every observation, as ``HistogramMetricFamily`` takes them."""
    return [
        *((f"{bound:g}", count) for bound, count in zip(times.bounds, times.buckets, strict=True)),
        ("+Inf", times.count),
    ]
