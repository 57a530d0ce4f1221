"""kill -9 under load, on both dialects: an engine process draining jobs is killed with
SIGKILL at random instants, several times, and started again. The store must end with
every job completed, none lost, no completion recorded twice and no job run again once
its completion was reported (GUARANTEES 001/2, 003/3, 004/2). Executions repeated
because a kill fell between a handler's end and its outcome's commit are at-least-once
delivery, and are reported as a figure."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from chaos_helpers import wait_until
from chaos_worker import Work

from fiefdom.storage import JobInfo, JobState, Store

HERE = Path(__file__).resolve().parent
TOTAL = 1200
KILLS = 5

Event = tuple[str, int, int, int]  # (what, job id, attempt, pid)


def read_events(path: Path) -> list[Event]:
    events: list[Event] = []
    for line in path.read_text().splitlines():
        what, job_id, attempt, pid = line.split()
        events.append((what, int(job_id), int(attempt), int(pid)))
    return events


async def all_jobs(store: Store) -> list[JobInfo]:
    jobs: list[JobInfo] = []
    while page := await store.list_jobs(after_id=jobs[-1].id if jobs else 0, limit=1000):
        jobs += page
    return jobs


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_an_engine_killed_at_random_instants_completes_every_job_once(
    store: Store, store_url: str, backend: str, tmp_path: Path, figures: Any, seed: int
) -> None:
    """SIGKILL at 5 random instants under load: every job completed once, none lost (001/2)."""
    rng = random.Random(seed)
    await store.enqueue_many([Work(n=i) for i in range(TOTAL)])
    log_path = tmp_path / "events.log"
    log_path.touch()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    command = [sys.executable, str(HERE / "chaos_worker.py"), store_url, str(log_path)]
    # One kill falls at any instant of a run (importing, rescuing, claiming); the others
    # once the run completes jobs, a random moment later.
    early = rng.randrange(KILLS)
    resumed: list[float] = []  # from a launch to its first completion reported
    caught: list[int] = []  # handlers running in the process at each kill
    started = time.monotonic()

    async def launch(run: int) -> tuple[anyio.abc.Process, float]:
        with (tmp_path / f"worker-{run}.log").open("wb") as output:
            child = await anyio.open_process(
                command, env=env, stdout=subprocess.DEVNULL, stderr=output
            )
        return child, time.monotonic()

    for run in range(KILLS):
        child, launched = await launch(run)
        async with child:
            try:
                if run == early:
                    await anyio.sleep(rng.uniform(0.0, 1.5))
                else:

                    def completed_here(pid: int = child.pid) -> bool:
                        return any(e[0] == "done" and e[3] == pid for e in read_events(log_path))

                    await wait_until(completed_here, what=f"run {run} to complete a job")
                    resumed.append(round(time.monotonic() - launched, 3))
                    await anyio.sleep(rng.uniform(0.0, 0.5))
            finally:
                child.send_signal(signal.SIGKILL)
                await child.wait()
        assert child.returncode == -signal.SIGKILL
        inside = collections.Counter()
        for what, job_id, attempt, pid in read_events(log_path):
            if pid == child.pid and what in ("start", "end"):
                inside[(job_id, attempt)] += 1 if what == "start" else -1
        caught.append(sum(inside.values()))

    child, launched = await launch(KILLS)
    async with child:
        try:

            async def all_completed() -> bool:
                counts = {c.state: c.count for c in await store.count_jobs()}
                return counts == {JobState.COMPLETED: TOTAL}

            await wait_until(all_completed, timeout=180, what="every job to be completed")
        finally:
            child.terminate()
            await child.wait()
    elapsed = time.monotonic() - started

    events = read_events(log_path)
    jobs = await all_jobs(store)
    starts = collections.Counter(e[1] for e in events if e[0] == "start")
    ends = collections.Counter(e[1] for e in events if e[0] == "end")
    done = collections.Counter(e[1] for e in events if e[0] == "done")
    ran = {(e[1], e[2]) for e in events if e[0] == "end"}
    # A start that follows the job's reported completion would be a completed job run again.
    reported: set[int] = set()
    after_completion = 0
    for what, job_id, _, _ in events:
        if what == "done":
            reported.add(job_id)
        elif what == "start" and job_id in reported:
            after_completion += 1
    completed = [j for j in jobs if j.state is JobState.COMPLETED]
    figures(
        dialect=backend,
        seed=seed,
        jobs=TOTAL,
        kills=KILLS,
        handlers_caught_per_kill=caught,
        lost=TOTAL - len(completed),
        duplicated_completions=sum(1 for n in done.values() if n > 1),
        run_after_completion=after_completion,
        executions=sum(starts.values()),
        executions_beyond_one=sum(starts.values()) - len(starts),
        handlers_ended_twice=sum(1 for n in ends.values() if n > 1),
        jobs_with_lost_attempts=sum(1 for j in jobs if j.attempt > 1),
        resume_s=resumed,
        wall_s=round(elapsed, 2),
    )
    assert sum(caught) > 0, "no kill caught a handler running: the attack did not attack"
    assert len(jobs) == len(completed) == TOTAL
    assert sorted(json.loads(j.args)["n"] for j in jobs) == list(range(TOTAL))
    assert all(n == 1 for n in done.values()), "a completion was reported twice"
    assert after_completion == 0, "a job ran again after its completion was reported"
    # The attempt the store says completed is one whose handler ran to its end.
    assert all((j.id, j.attempt) in ran for j in jobs)
