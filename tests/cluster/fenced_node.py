"""A node of the fencing tests: its own ActorSystem and JobEngine serving domain ``res``
on a shared store, running two keyed job kinds whose handlers log what happens to them
in ``FOLDER/NAME.log``, one JSON object per line (one unbuffered write each, stamped
with the machine's CLOCK_MONOTONIC, which every process shares, and its realtime clock):

- ``fenced.write``: inside one store transaction, logs ``waiting``, waits for
  ``FOLDER/release``, inserts its row into ``fenced_writes`` and fences the transaction
  (``await ctx.fence(tx)``); logs ``wrote`` once it committed, ``refused`` with the
  exception it got otherwise.
- ``fenced.long``: logs ``start``, waits for ``FOLDER/release``, logs ``end``; or
  ``cancelled`` if its handler is cancelled first.

With ``--log-renewals`` the engine's cluster node is built here, with the settings an
engine derives from its lease, and logs ``renewed`` with the instant each successful
lease round began: the leases it took last at least ``lease`` seconds from then.

``NAME.log.ready`` appears, holding the node's id, once the engine serves; SIGTERM
then stops it gracefully.

Usage: python fenced_node.py STORE_URL FOLDER NAME [--lease SECONDS] [--log-renewals]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.lowlevel
from cluster_helpers import Resource, now_ns

import fiefdom
from fiefdom.cluster import ClusterSettings, Node


class FencedWrite(fiefdom.Job):
    """Write a row of ``fenced_writes`` for ``key``, fenced with the key's epoch."""

    options = fiefdom.JobOptions(kind="fenced.write", domain="res", key="key", max_attempts=5)
    key: str


class LongRun(fiefdom.Job):
    """Run, for ``key``, until the test releases it."""

    options = fiefdom.JobOptions(kind="fenced.long", domain="res", key="key", max_attempts=5)
    key: str


def node_settings(lease: float) -> ClusterSettings:
    """The settings a JobEngine gives its own node for a job lease of ``lease`` seconds."""
    return ClusterSettings(lease=lease, renew=lease / 3, margin=lease / 5)


class RenewalLoggingNode(Node):
    """A cluster node that logs when each of its successful lease rounds began."""

    def __init__(self, store: fiefdom.Store, name: str, lease: float, log: Any) -> None:
        super().__init__(store, name, node_settings(lease))
        self._log = log

    async def _round(self) -> None:
        # Taken before the node's own: the leases of this round expire no earlier than
        # ``lease`` seconds after it (the database stamps them later still).
        began = now_ns()
        await super()._round()
        self._log({"event": "renewed", "mono_ns": began, "partitions": self.held})


async def main(url: str, folder: Path, name: str, lease: float, log_renewals: bool) -> None:
    log_path = folder / f"{name}.log"
    release = folder / "release"
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    node_id = name

    def log(values: dict[str, Any]) -> None:
        line = {"node": node_id, "pid": os.getpid(), "real_ns": time.time_ns(), **values}
        line.setdefault("mono_ns", now_ns())
        # One unbuffered write per line: a line that was written is never lost.
        os.write(fd, (json.dumps(line) + "\n").encode())

    def event(what: str, ctx: fiefdom.JobContext[Any], **extra: object) -> None:
        log(
            {
                "event": what,
                "job": ctx.id,
                "attempt": ctx.attempt,
                "partition": ctx.partition,
                "epoch": ctx.epoch,
                **extra,
            }
        )

    async def released() -> None:
        while not release.exists():  # noqa: ASYNC110  # a file, which has no event
            await anyio.sleep(0.01)

    async def write(job: FencedWrite, ctx: fiefdom.JobContext[Any]) -> None:
        outcome: Literal["wrote", "refused"] = "wrote"
        error: BaseException | None = None
        # Shielded: a process resuming from a pause finds its node's fence and its lease
        # keeper racing this handler to its next step; whichever wins, the write goes
        # to the store, as one already sent would. What is under test is that the
        # store refuses it.
        with anyio.CancelScope(shield=True):
            try:
                async with ctx.store.transaction() as tx:
                    event("waiting", ctx, key=job.key)
                    await released()
                    await tx.execute(
                        "INSERT INTO fenced_writes (key, node, epoch) VALUES ($1, $2, $3)",
                        job.key,
                        node_id,
                        ctx.epoch,
                    )
                    await ctx.fence(tx)
            except Exception as exc:
                outcome, error = "refused", exc
        details: dict[str, object] = {}
        if error is not None:
            details = {
                "error": type(error).__name__,
                "message": str(error),
                "fenced_epoch": getattr(error, "epoch", None),
                "current_epoch": getattr(error, "current", None),
            }
        event(outcome, ctx, key=job.key, **details)
        try:
            # Whether this node had cancelled the handler meanwhile (it could not
            # reach the shielded write).
            await anyio.lowlevel.checkpoint()
        except anyio.get_cancelled_exc_class():
            event("cancelled", ctx, key=job.key)
            raise
        if error is not None:
            raise error

    async def long(job: LongRun, ctx: fiefdom.JobContext[Any]) -> None:
        event("start", ctx, key=job.key)
        try:
            await released()
        except anyio.get_cancelled_exc_class():
            event("cancelled", ctx, key=job.key)
            raise
        event("end", ctx, key=job.key)

    try:
        async with (
            fiefdom.open_store(url) as store,
            fiefdom.ActorSystem(name=name) as system,
        ):
            res = system.domain("res", Resource, idle_timeout=None)
            ownership: Any = "cluster"
            if log_renewals:
                ownership = RenewalLoggingNode(store, name, lease, log)
            engine = fiefdom.JobEngine(
                store,
                queues={"default": 2},
                domains={"res": res},
                name=name,
                lease=lease,
                poll_interval=0.05,
                rescue_interval=0.2,
                retention=None,
                ownership=ownership,
            )
            if not log_renewals:
                node_id = engine.worker  # the id the engine gives its own node
            engine.register(FencedWrite, write)
            engine.register(LongRun, long)
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async with engine:
                    # Serving now (the signal handler too): the test may begin. Renamed
                    # into place, so that the file is never seen empty.
                    await anyio.Path(f"{log_path}.ready.tmp").write_text(node_id)
                    os.replace(f"{log_path}.ready.tmp", f"{log_path}.ready")
                    async for _ in signals:
                        break
    finally:
        os.close(fd)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("store_url")
    parser.add_argument("folder", type=Path)
    parser.add_argument("name")
    parser.add_argument("--lease", type=float, default=15.0)
    parser.add_argument("--log-renewals", action="store_true")
    args = parser.parse_args()
    anyio.run(main, args.store_url, args.folder, args.name, args.lease, args.log_renewals)
