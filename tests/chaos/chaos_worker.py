"""An engine process for the kill -9 attack: it drains ``Work`` jobs and appends to a
log shared by every run, one line per event:

    start <job id> <attempt> <pid>   the handler began
    end <job id> <attempt> <pid>     the handler is about to return
    done <job id> <attempt> <pid>    the engine reported the completion committed

The log is opened with O_APPEND, and each line is one write(): once write() returns
the line is the kernel's, and SIGKILL cannot lose it (no fsync needed: the machine
does not crash). One file for every run gives one total order of the events.

Usage: python chaos_worker.py STORE_URL LOG_PATH
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

import anyio

from fiefdom.jobs import JobContext, JobEngine
from fiefdom.storage import Job, JobEvent, JobOptions, JobState, open_store


class Work(Job):
    # Attempts to spare: every kill charges an attempt to the jobs it caught running.
    options = JobOptions(kind="chaos.work", max_attempts=100)
    n: int


async def main(url: str, log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    def record(what: str, job_id: int, attempt: int) -> None:
        os.write(fd, f"{what} {job_id} {attempt} {pid}\n".encode())

    async def work(job: Work, ctx: JobContext[Any]) -> None:
        record("start", ctx.id, ctx.attempt)
        await anyio.sleep(random.uniform(0.005, 0.03))
        record("end", ctx.id, ctx.attempt)

    def on_event(event: JobEvent) -> None:
        if event.state is JobState.COMPLETED:
            record("done", event.job_id, event.attempt)

    async with open_store(url) as store:
        engine = JobEngine(
            store,
            queues={"default": 8},
            lease=2.0,
            heartbeat=0.5,
            poll_interval=0.05,
            rescue_interval=0.2,
            retention=None,
        )
        engine.register(Work, work)
        engine.subscribe(on_event)
        async with engine:
            await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
