"""The daemon's job metrics, fed from the engine's job events (no daemon process needed)."""

from __future__ import annotations

import sys
from pathlib import Path

from fiefdom.daemon import Config
from fiefdom.daemon._jobs import JobsAdapter
from fiefdom.jobs import JobEngine
from fiefdom.protocol import ControlMetrics, EventHub
from fiefdom.storage import JobEvent, JobState, Store

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
