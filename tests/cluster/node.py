"""A node of the cluster tests: its own ActorSystem and JobEngine serving domain
``res`` on a shared store, with no cluster configuration at all. Each ``touch`` job
runs inside its key's actor and logs its start and end with the machine's monotonic
clock. ``LOG_PATH.ready`` appears once the node serves; SIGTERM then stops it
gracefully (the engine drains).

Usage: python node.py STORE_URL LOG_PATH [--lease SECONDS]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
from typing import Any

import anyio
from cluster_helpers import Resource, Touch, now_ns

import fiefdom


async def main(url: str, log_path: str, lease: float) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    def line(what: str, job: Touch, ctx: fiefdom.JobContext[Any]) -> None:
        # One unbuffered write per line: a SIGKILL loses no line that was written.
        os.write(fd, f"{what} {job.key} {ctx.id} {now_ns()} {pid}\n".encode())

    async def touch(job: Touch, ctx: fiefdom.JobContext[Any]) -> None:
        line("start", job, ctx)
        try:
            # Long enough that two owners of one key would overlap.
            await anyio.sleep(random.uniform(0.01, 0.05))
        except BaseException:
            line("abort", job, ctx)  # cancelled (a fenced key, a stop): the run ends here
            raise
        line("end", job, ctx)

    try:
        async with (
            fiefdom.open_store(url) as store,
            fiefdom.ActorSystem(name=f"node-{pid}") as system,
        ):
            res = system.domain("res", Resource, idle_timeout=None)
            engine = fiefdom.JobEngine(
                store,
                queues={"default": 4},
                domains={"res": res},
                name=f"node-{pid}",
                lease=lease,
                poll_interval=0.05,
                rescue_interval=0.2,
                retention=None,
            )
            engine.register(Touch, touch)
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async with engine:
                    # Serving now (the signal handler too): the test may begin.
                    await anyio.Path(f"{log_path}.ready").touch()
                    async for _ in signals:
                        break
    finally:
        os.close(fd)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("store_url")
    parser.add_argument("log_path")
    parser.add_argument("--lease", type=float, default=15.0)
    args = parser.parse_args()
    anyio.run(main, args.store_url, args.log_path, args.lease)
