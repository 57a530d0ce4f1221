"""The daemon's job metrics, fed from the engine's job events (no daemon process needed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fiefdom._durations import Durations
from fiefdom.daemon import Config
from fiefdom.daemon._jobs import JobsAdapter
from fiefdom.jobs import JobContext, JobEngine
from fiefdom.jobs._core import STORE_TIME_BUCKETS
from fiefdom.protocol import ControlMetrics, EventHub
from fiefdom.storage import Job, JobEvent, JobOptions, JobState, Store

sys.path.insert(0, str(Path(__file__).parent.parent / "storage"))

from storage_helpers import wait_until


def test_time_in_queue_is_observed_from_running_events() -> None:
    """A running event's wait fills fiefdom_job_time_in_queue_seconds per queue and kind;
    other events leave it alone (001/14, 004/6)."""
    metrics = ControlMetrics()
    jobs = JobsAdapter(Config(), EventHub(), metrics)
    for state, waited in (
        (JobState.RUNNING, 2.5),
        (JobState.COMPLETED, None),
        (JobState.RUNNING, 0.5),
        (JobState.RUNNING, None),  # a sender that does not know the wait
    ):
        jobs._on_event(
            JobEvent(
                job_id=1,
                kind="nap",
                queue="default",
                state=state,
                attempt=1,
                at=100.0,
                queued_for=waited,
            )
        )

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"queue": "default", "kind": "nap"})

    assert sample("fiefdom_job_time_in_queue_seconds_count") == 2
    assert sample("fiefdom_job_time_in_queue_seconds_sum") == 3.0
    assert b'fiefdom_job_time_in_queue_seconds_bucket{kind="nap",le="1.0",queue="default"} 1.0' in (
        metrics.render([])
    )


async def test_a_failing_engine_shows_in_metrics_and_health(store: Store) -> None:
    """While the engine's claims fail (its table is gone), fiefdom_engine_failing counts
    them and the engine is not healthy (/readyz's jobs check); both recover with it."""
    metrics = ControlMetrics()
    engine = JobEngine(store, poll_interval=0.02, retention=None)
    metrics.engine = engine

    def failing(operation: str) -> float | None:
        metrics.render([])
        return metrics.registry.get_sample_value("fiefdom_engine_failing", {"operation": operation})

    async with engine:
        await wait_until(lambda: engine.healthy, what="the engine to be healthy")
        assert failing("claim") == 0
        async with store.transaction() as tx:
            await tx.execute("ALTER TABLE fiefdom_jobs RENAME TO fiefdom_jobs_away")
        engine.on_jobs("default")  # a claim now, not at the next poll
        await wait_until(lambda: not engine.healthy, what="the claims to fail")
        assert (failing("claim") or 0) >= 1
        async with store.transaction() as tx:
            await tx.execute("ALTER TABLE fiefdom_jobs_away RENAME TO fiefdom_jobs")
        await wait_until(lambda: engine.healthy, what="the engine to recover")
        assert failing("claim") == 0


class Tick(Job):
    options = JobOptions(kind="metrics.tick")
    n: int


def test_durations_count_each_duration_in_every_bucket_at_or_above_it() -> None:
    """Durations fills a Prometheus histogram's cumulative buckets: a duration on a
    bound counts in that bucket, one past every bound only in the count (+Inf)."""
    times = Durations(STORE_TIME_BUCKETS)
    for took in (0.001, 0.003, 99.0):
        times.observe(took)
    assert times.count == 3
    assert times.seconds == 0.001 + 0.003 + 99.0
    first, second, third = STORE_TIME_BUCKETS[:3]
    assert (first, second, third) == (0.001, 0.0025, 0.005)
    assert times.buckets[:3] == [1, 1, 2]
    assert times.buckets[-1] == 2  # 99 s is past the last bound: only the count has it


async def test_claims_and_outcome_writes_are_timed_in_metrics(store: Store) -> None:
    """fiefdom_engine_store_seconds holds the engine's claims and outcome writes that
    succeeded: after jobs ran, both counts are positive and equal their +Inf
    bucket; while every claim fails (its table is gone), the claim count stays."""
    metrics = ControlMetrics()
    engine = JobEngine(store, poll_interval=0.02, retention=None)
    engine.register(Tick, _tick)
    metrics.engine = engine

    def sample(suffix: str, operation: str, **labels: str) -> float:
        metrics.render([])
        value = metrics.registry.get_sample_value(
            f"fiefdom_engine_store_seconds{suffix}", {"operation": operation, **labels}
        )
        return value or 0.0

    async with engine:
        await store.enqueue_many([Tick(n=i) for i in range(20)])
        await wait_until(
            lambda: engine.statistics().outcomes.get("completed") == 20,
            what="the jobs to complete",
        )
        for operation in ("claim", "finish"):
            count = sample("_count", operation)
            assert count >= 1
            assert sample("_bucket", operation, le="+Inf") == count
            assert sample("_sum", operation) > 0
        async with store.transaction() as tx:
            await tx.execute("ALTER TABLE fiefdom_jobs RENAME TO fiefdom_jobs_away")
        before = engine.statistics().claim_times.count
        engine.on_jobs("default")
        await wait_until(lambda: not engine.healthy, what="the claims to fail")
        assert engine.statistics().claim_times.count == before
        async with store.transaction() as tx:
            await tx.execute("ALTER TABLE fiefdom_jobs_away RENAME TO fiefdom_jobs")
        await wait_until(lambda: engine.healthy, what="the engine to recover")


async def _tick(job: Tick, ctx: JobContext[Any]) -> None:
    return None
