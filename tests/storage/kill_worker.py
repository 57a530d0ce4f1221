"""A worker process for the kill -9 test: runs an engine whose handler logs each
start (fsynced) and then works a little; from the ``HELD_FROM``-th start on, its
handlers run until the process is killed, so that the kill finds jobs in their
handlers however late it comes.

Usage: python kill_worker.py STORE_URL LOG_PATH
"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio

from fiefdom.jobs import JobContext, JobEngine
from fiefdom.storage import Job, JobOptions, open_store

# The start from which handlers no longer return (the test kills the process once
# it has seen this many starts).
HELD_FROM = 60
# No rescue runs in this process: a heartbeat held up past the short lease (a loaded
# machine) would otherwise let it take back one of its own running jobs, which it
# would then run twice before the kill.
NO_RESCUE = 3600.0


class Chunk(Job):
    options = JobOptions(kind="chunk", max_attempts=5)
    n: int


async def main(url: str, log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    starts = 0

    async def chunk(job: Chunk, ctx: JobContext[Any]) -> None:
        nonlocal starts
        starts += 1
        os.write(fd, f"{ctx.id} {ctx.attempt}\n".encode())
        os.fsync(fd)
        if starts >= HELD_FROM:
            await anyio.sleep_forever()
        await anyio.sleep(0.02)

    async with open_store(url) as store:
        engine = JobEngine(
            store,
            queues={"default": 8},
            lease=1.0,
            heartbeat=0.3,
            poll_interval=0.05,
            rescue_interval=NO_RESCUE,
            retention=None,
        )
        engine.register(Chunk, chunk)
        async with engine:
            await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
