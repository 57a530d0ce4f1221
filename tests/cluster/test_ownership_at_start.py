"""A keyed job starts only while its node owns its key (DESIGN rule 2, "Cluster";
GUARANTEES 000/1a "stale owner"), checked again at the moment its key's actor starts
it, not only when a worker took it.

Between the two the job travels through the key's mailbox: some turns of the event
loop, or longer behind the key's earlier messages. A process paused in that window
(SIGSTOP, a long pause) past its lease resumes with the actor about to start the job
before its lease loop has run and noticed that the key is another node's now. The
cluster chaos test caught exactly that: a job started on a resumed node 80 ms into the
new owner's run of its key. Here the window is held open by a message the key's actor
is busy with, and the pause is what it leaves behind: a lease that is no longer fresh
while the node's loop has not yet run (its last renewal moved into the past)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import fiefdom
from fiefdom import JobState
from fiefdom.cluster import Node
from fiefdom.storage import Store

sys.path.insert(0, str(Path(__file__).parent.parent / "storage"))

from storage_helpers import wait_until

KEY = "doc-1"


class Busy(fiefdom.Request[None]):
    """Keep the key's actor busy until the test lets it go."""


class Owner(fiefdom.Actor[Busy]):
    gate: anyio.Event

    def __init__(self, key: str) -> None:
        self.key = key

    async def receive(self, msg: Busy) -> None:
        await Owner.gate.wait()


class Work(fiefdom.Job):
    options = fiefdom.JobOptions(kind="work", domain="res", key="key", max_attempts=5)
    key: str


@pytest.mark.parametrize("stale", [True, False], ids=["lease-stale", "lease-fresh"])
async def test_a_job_waiting_in_its_key_s_mailbox_starts_only_if_its_lease_is_still_fresh(
    store: Store, stale: bool
) -> None:
    """The worker took the job while the lease was fresh; the key's actor takes it once
    its earlier message ends. With the lease gone stale meanwhile the handler never
    starts and the job goes back unrun, its attempt refunded; with the lease fresh it
    runs (the check stops only what it must)."""
    Owner.gate = anyio.Event()
    ran: list[int] = []

    async def work(job: Work, ctx: fiefdom.JobContext[Any]) -> None:
        ran.append(ctx.id)

    async with fiefdom.ActorSystem(name="start-check") as system:
        res = system.domain("res", Owner, idle_timeout=None)
        # A long lease: the node's loop renews every 10 s, so it does not run (and
        # refresh the lease) while the test holds the window open.
        engine = fiefdom.JobEngine(
            store, domains={"res": res}, lease=30.0, poll_interval=0.05, retention=None
        )
        engine.register(Work, work)
        async with engine, anyio.create_task_group() as group:
            group.start_soon(res.ask, KEY, Busy())
            await wait_until(lambda: res.is_active(KEY), what="the key's actor to be busy")
            job = await store.enqueue(Work(key=KEY))
            assert job.id is not None

            def queued_behind() -> bool:
                stats = res.key_statistics(KEY)
                return stats is not None and stats.mailbox_depth >= 1

            await wait_until(queued_behind, what="the job to wait in the key's mailbox")
            node = engine.ownership
            assert isinstance(node, Node)
            if stale:
                # What a pause past the lease leaves: the last renewal long ago, the
                # node's loop not yet woken to notice it.
                node._renewed_at = -math.inf
            Owner.gate.set()

            async def settled() -> bool:
                info = await store.get_job(job.id)
                assert info is not None
                if stale:
                    return info.state is not JobState.RUNNING
                return info.state is JobState.COMPLETED

            await wait_until(settled, what="the job to be given back or completed")
            info = await store.get_job(job.id)
            assert info is not None
            if stale:
                assert ran == []
                assert info.state in (JobState.AVAILABLE, JobState.SCHEDULED)
                assert info.attempt == 0, "a job given back unrun keeps its attempt"
                # The node would fence itself now; let it renew, so that the engine
                # stops with its partitions held as a live node does.
                node._renewed_at = time.monotonic()
            else:
                assert ran == [job.id]
