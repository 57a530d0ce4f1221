"""A node of the cluster chaos test: its own ActorSystem and JobEngine serving domain
``res`` on a shared store, with no cluster configuration. Each ``touch`` job runs inside
its key's actor and logs its start and its end (or ``abort``, ``refused``, ``failed``)
with the machine's monotonic clock, like ``node.py``; between the two it records its
run in the store with a fenced write, so that what the store accepted can be checked
after the run:

- it locks its key's row of ``chaos_keys`` (writers of one key queue there, in commit
  order), reads the epoch of the key's last accepted write and stores its own;
- it fences the transaction with its key's epoch (``await ctx.fence(tx)``), then reads
  the partition's epoch as the store holds it now;
- it inserts a row of ``chaos_writes``: the job, this process, the epoch it wrote
  under, the key's previous epoch, the partition's epoch at its commit, and the
  instant (CLOCK_MONOTONIC ns) its fence was passed.

A write under a stale epoch that the store accepted shows as a row whose epoch is
older than the key's previous one or than the partition's, or has none. A write the
store refused logs ``refused`` (``StaleOwner``).

A ``start`` line also carries the instant this process last found its key's partition
its own (``Node.owns``): the key's actor checks it as it starts the job, in the same
step as the handler's first line, so the test can tell a run admitted before a SIGSTOP
that landed between the check and that line (it resumes with the process) from a run
admitted after the resume.

``LOG_PATH.ready`` appears, holding the node's id, once the node serves; SIGTERM then
stops it gracefully (the engine drains).

Usage: python chaos_node.py STORE_URL LOG_PATH [--lease SECONDS]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
from typing import Any

import anyio
from cluster_helpers import Resource, Touch, now_ns

import fiefdom
from fiefdom.cluster import Node

# The tables the test creates before it starts the nodes (one row per key in chaos_keys).
TABLES = (
    "CREATE TABLE chaos_keys (key text PRIMARY KEY, epoch bigint NOT NULL, writes bigint NOT NULL)",
    "CREATE TABLE chaos_writes (job bigint NOT NULL, key text NOT NULL, pid bigint NOT NULL, "
    "attempt bigint NOT NULL, epoch bigint, previous_epoch bigint NOT NULL, "
    "partition_epoch bigint, fenced_ns bigint NOT NULL)",
)


class _Monotonic(logging.Formatter):
    """Library log lines stamped with the monotonic clock the handler lines use, so that
    an overlap can be read against what the node's cluster layer did and when."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{now_ns()} {os.getpid()} {record.levelname} {record.name} {record.getMessage()}"


# When this process last found each partition its own (monotonic ns), noted by Node.owns.
_confirmed: dict[int, int] = {}
_owns = Node.owns


def _owns_noted(self: Node, partition: int) -> bool:
    owned = _owns(self, partition)
    if owned:
        _confirmed[partition] = now_ns()
    return owned


Node.owns = _owns_noted  # type: ignore[method-assign]


def log_the_library() -> None:
    """The library's events at INFO and above (leases gained, lost, fenced; jobs given
    back) to stderr, which the test keeps in the node's ``.out`` file."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Monotonic())
    root = logging.getLogger("fiefdom")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


async def main(url: str, log_path: str, lease: float) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    def line(what: str, job: Touch, ctx: fiefdom.JobContext[Any]) -> None:
        # One unbuffered write per line: a SIGKILL loses no line that was written.
        known = what == "start" and ctx.partition is not None
        confirmed = _confirmed.get(ctx.partition) if known else None
        tail = "" if confirmed is None else f" {confirmed}"
        os.write(fd, f"{what} {job.key} {ctx.id} {now_ns()} {pid}{tail}\n".encode())

    async def touch(job: Touch, ctx: fiefdom.JobContext[Any]) -> None:
        line("start", job, ctx)
        try:
            # Long enough that two owners of one key would overlap, and that a signal
            # often finds the node inside a handler.
            await anyio.sleep(random.uniform(0.05, 0.25))
            async with ctx.store.transaction() as tx:
                await tx.execute(
                    "UPDATE chaos_keys SET writes = writes + 1 WHERE key = $1", job.key
                )
                previous = await tx.fetchval("SELECT epoch FROM chaos_keys WHERE key = $1", job.key)
                await tx.execute(
                    "UPDATE chaos_keys SET epoch = $2 WHERE key = $1",
                    job.key,
                    previous if ctx.epoch is None else ctx.epoch,
                )
                await ctx.fence(tx)
                fenced_ns = now_ns()
                current = await tx.fetchval(
                    "SELECT epoch FROM fiefdom_partitions WHERE partition = $1", ctx.partition
                )
                await tx.execute(
                    "INSERT INTO chaos_writes (job, key, pid, attempt, epoch, previous_epoch, "
                    "partition_epoch, fenced_ns) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    ctx.id,
                    job.key,
                    pid,
                    ctx.attempt,
                    ctx.epoch,
                    previous,
                    current,
                    fenced_ns,
                )
        except fiefdom.StaleOwner:
            line("refused", job, ctx)  # the store refused the write: the run ends here
            raise
        except Exception:
            line("failed", job, ctx)
            raise
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
                    # Serving now (the signal handler too): the test may begin. Renamed
                    # into place, so that the file is never seen empty.
                    await anyio.Path(f"{log_path}.ready.tmp").write_text(engine.worker)
                    os.replace(f"{log_path}.ready.tmp", f"{log_path}.ready")
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
    log_the_library()
    anyio.run(main, args.store_url, args.log_path, args.lease)
