"""The daemon's job metrics, fed from the engine's job events (no daemon process needed)."""

from __future__ import annotations

from fiefdom.daemon import Config
from fiefdom.daemon._jobs import JobsAdapter
from fiefdom.protocol import ControlMetrics, EventHub
from fiefdom.storage import JobEvent, JobState


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
