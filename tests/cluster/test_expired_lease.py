"""A lease that expires under its own node (DESIGN rule 2, "Cluster") by the store's
clock, not by the node's (its machine was suspended, or the store's clock stepped:
else the node fences itself). The node holds the partition again at its
next round, under a new epoch; another node could have held it and run
its keys meanwhile, so the work begun under the old epoch is stopped as for a loss:
the key's running job is cancelled and goes back to the queue, its actor stops, and
the job runs again under the new epoch.

The expiry is made the way the store sees one: the partition's lease expiry moved into
the past, on both dialects; nothing else (the job's own lease stays live, so nothing
but the expiry can stop its run; the lease is long, so that a stalled test run does
not expire it too)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio

import fiefdom
from fiefdom import JobState
from fiefdom.cluster import Node
from fiefdom.storage import Store, partition_of

sys.path.insert(0, str(Path(__file__).parent.parent / "storage"))

from storage_helpers import wait_until

KEY = "doc-1"


class Keeper(fiefdom.Actor[Any]):
    """The key's actor: counts its starts and stops."""

    starts = 0
    stops = 0

    def __init__(self, key: str) -> None:
        self.key = key

    async def on_start(self) -> None:
        Keeper.starts += 1

    async def on_stop(self) -> None:
        Keeper.stops += 1

    async def receive(self, msg: Any) -> None:
        return None


class Long(fiefdom.Job):
    options = fiefdom.JobOptions(kind="long", domain="res", key="key", max_attempts=5)
    key: str


async def test_an_expired_partition_s_running_job_and_actor_stop_and_the_job_runs_again(
    store: Store,
) -> None:
    """The first run, under epoch e, is cancelled once the lease expires; the key's actor
    stops; the job runs again, under e + 1, with its attempt given back."""
    Keeper.starts = Keeper.stops = 0
    runs: list[tuple[int | None, int]] = []  # (epoch, attempt) of each run, as it starts
    cancelled: list[int | None] = []
    release = anyio.Event()

    async def long(job: Long, ctx: fiefdom.JobContext[Any]) -> None:
        runs.append((ctx.epoch, ctx.attempt))
        try:
            await release.wait()
        except anyio.get_cancelled_exc_class():
            cancelled.append(ctx.epoch)
            raise

    async with fiefdom.ActorSystem(name="expiry") as system:
        res = system.domain("res", Keeper, idle_timeout=None)
        engine = fiefdom.JobEngine(
            store, domains={"res": res}, lease=6.0, poll_interval=0.05, retention=None
        )
        engine.register(Long, long)
        async with engine:
            node = engine.ownership
            assert isinstance(node, Node)
            job = await store.enqueue(Long(key=KEY))
            assert job.id is not None
            await wait_until(lambda: len(runs) == 1, what="the first run")
            assert res.is_active(KEY)
            (first_epoch, first_attempt), partition = runs[0], partition_of(KEY)
            assert first_epoch == node.epoch(partition) == 1
            ran_out = "now() - interval '1 hour'" if store.backend == "postgres" else "0"
            async with store.transaction() as tx:
                await tx.execute(
                    f"UPDATE fiefdom_partitions SET lease_expires_at = {ran_out} "
                    "WHERE partition = $1",
                    partition,
                )
            await wait_until(lambda: cancelled == [first_epoch], what="the first run to stop")
            await wait_until(lambda: len(runs) == 2, what="the job to run again")
            assert runs[1] == (first_epoch + 1, first_attempt), "new epoch, attempt given back"
            assert node.epoch(partition) == first_epoch + 1
            assert Keeper.stops >= 1, "the key's actor stopped with the expiry"
            assert Keeper.starts == Keeper.stops + 1, "and started afresh for the second run"
            view = node.view()
            assert view.counters.expired == 1
            assert view.counters.lost == view.counters.fences == 0
            release.set()

            async def completed() -> bool:
                info = await store.get_job(job.id)
                assert info is not None
                return info.state is JobState.COMPLETED

            await wait_until(completed, what="the second run to complete")
    info = await store.get_job(job.id)
    assert info is not None
    assert info.attempt == first_attempt
