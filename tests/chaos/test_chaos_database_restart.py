"""Database restarts under load: a private PostgreSQL instance (its own data folder and
port, never the shared server) is stopped for a few seconds and started again, twice,
while an engine drains jobs. No job is lost, and the engine resumes by itself
(GUARANTEES 001/9, 001/12). The time from the database being back to the first job
completing is a figure (the engine's store retries back off to at most 2 s); the test
asserts only that progress resumes, within a generous hang guard."""

from __future__ import annotations

import collections
import random
import time
from typing import Any

import anyio
import anyio.to_thread
import pytest
from chaos_helpers import (
    HANG_GUARD,
    PrivatePostgres,
    running_private_postgres,
    wait_until,
)

from fiefdom.jobs import JobContext, JobEngine
from fiefdom.storage import Job, JobEvent, JobOptions, JobState, open_store

TOTAL = 1500
# The first restart is a clean one (sessions are told to go), the second a crash.
STOP_MODES = ("fast", "immediate")


class Step(Job):
    options = JobOptions(kind="chaos.step", max_attempts=100)
    n: int


private_postgres = pytest.fixture(running_private_postgres, name="private_postgres")


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_an_engine_drains_through_two_database_restarts(
    private_postgres: PrivatePostgres, figures: Any, seed: int
) -> None:
    """PostgreSQL restarted twice mid-drain: every job completes, work resumes (001/9, 001/12)."""
    rng = random.Random(seed)
    server = private_postgres
    runs: collections.Counter[int] = collections.Counter()
    completions: list[float] = []  # when each completion was reported (monotonic)

    async def step(job: Step, ctx: JobContext[Any]) -> None:
        runs[job.n] += 1
        await anyio.sleep(rng.uniform(0.01, 0.03))

    def on_event(event: JobEvent) -> None:
        if event.state is JobState.COMPLETED:
            completions.append(time.monotonic())

    store = open_store(server.url)
    await store.open(migrate=True)
    outages: list[dict[str, object]] = []
    try:
        await store.enqueue_many([Step(n=i) for i in range(TOTAL)])
        engine = JobEngine(
            store, queues={"default": 8}, poll_interval=0.05, rescue_interval=0.5, retention=None
        )
        engine.register(Step, step)
        engine.subscribe(on_event)
        async with engine:
            for mode in STOP_MODES:
                before = len(completions)
                await wait_until(
                    lambda before=before: len(completions) >= before + 100,
                    what="100 jobs to complete before the outage",
                )
                await anyio.to_thread.run_sync(server.stop, mode)
                down_at = time.monotonic()
                completed_at_stop = len(completions)
                # The outage itself: how long the attack lasts, not a wait for an event.
                await anyio.sleep(rng.uniform(2.0, 4.0))
                await anyio.to_thread.run_sync(server.start)
                up_at = time.monotonic()

                def resumed(up_at: float = up_at) -> bool:
                    return bool(completions) and completions[-1] > up_at

                await wait_until(
                    resumed, timeout=HANG_GUARD, what="a job to complete after the restart"
                )
                first = min(t for t in completions if t > up_at)
                await wait_until(
                    lambda: engine.healthy, timeout=HANG_GUARD, what="the engine to be healthy"
                )
                outages.append(
                    {
                        "mode": mode,
                        "down_s": round(up_at - down_at, 2),
                        "completed_before": completed_at_stop,
                        "first_completion_after_s": round(first - up_at, 3),
                        "healthy_after_s": round(time.monotonic() - up_at, 3),
                    }
                )

            async def all_completed() -> bool:
                counts = {c.state: c.count for c in await store.count_jobs()}
                return counts == {JobState.COMPLETED: TOTAL}

            await wait_until(all_completed, timeout=HANG_GUARD, what="every job to complete")
            stats = engine.statistics()
    finally:
        await store.close()
    figures(
        dialect="postgres",
        seed=seed,
        jobs=TOTAL,
        outages=outages,
        lost=TOTAL - len(runs),
        executions_beyond_one=sum(runs.values()) - len(runs),
        stale_outcomes=stats.stale,
        rescued=stats.rescued,
    )
    assert len(runs) == TOTAL
    assert all(o["completed_before"] < TOTAL for o in outages), "an outage came after the drain"
