"""Ordered keys: the jobs of one key of an ordered kind run in enqueue order, a job
that fails (and is retried) or is snoozed holds back the ones behind it, and one that
is discarded or cancelled lets them go. Both dialects."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storage_helpers import engine, wait_until

import fiefdom
from fiefdom.jobs import JobContext, Snooze
from fiefdom.storage import Job, JobOptions, JobState, Store, open_store


def quick(attempt: int) -> float:
    return 0.02


class Delivery(Job):
    """A webhook delivery: attempts fail as ``plan[attempt - 1]`` says."""

    options = JobOptions(
        kind="delivery", domain="hooks", key="hook", ordered=True, max_attempts=3, backoff=quick
    )
    hook: str
    n: int
    plan: list[str]  # per attempt: "ok", "fail" or "snooze"


class Hook(fiefdom.Actor[Any]):
    def __init__(self, key: str) -> None:
        self.key = key

    async def receive(self, msg: Any) -> None:
        return None


FINAL = {JobState.COMPLETED, JobState.DISCARDED, JobState.CANCELLED}


async def run(store: Store, deliveries: list[Delivery]) -> list[tuple[str, int, str]]:
    """Drain ``deliveries`` with 4 workers; returns (hook, n, outcome) in the order the
    attempts ran."""
    ran: list[tuple[str, int, str]] = []
    runs: dict[int, int] = {}  # per delivery (a snooze gives its attempt back)

    async def deliver(job: Delivery, ctx: JobContext[Hook]) -> None:
        runs[job.n] = runs.get(job.n, 0) + 1
        step = job.plan[min(runs[job.n], len(job.plan)) - 1]
        ran.append((job.hook, job.n, step))
        await anyio.lowlevel.checkpoint()
        if step == "fail":
            raise RuntimeError("the endpoint answered 500")
        if step == "snooze":
            raise Snooze(0.02)

    async with fiefdom.ActorSystem(name="ordered") as system:
        hooks = system.domain("hooks", Hook)
        eng = engine(store, queues={"default": 4}, domains={"hooks": hooks})
        eng.register(Delivery, deliver)
        results = await store.enqueue_many(deliveries)
        ids = [r.id for r in results]

        async def all_final() -> bool:
            for job_id in ids:
                assert job_id is not None
                info = await store.get_job(job_id)
                if info is None or info.state not in FINAL:
                    return False
            return True

        async with eng:
            await wait_until(all_final, what="every delivery to end")
    return ran


def check_order(deliveries: list[Delivery], ran: list[tuple[str, int, str]]) -> None:
    """No attempt of a job ran while an earlier job of its key had not ended, and every
    job's attempts ran in plan order."""
    ended: dict[tuple[str, int], int] = {}  # when each job's last run ran
    for index, (hook, n, step) in enumerate(ran):
        failures = sum(1 for h, m, s in ran[: index + 1] if (h, m) == (hook, n) and s == "fail")
        if step == "ok" or failures >= 3:  # completed, or discarded at its last attempt
            ended[(hook, n)] = index
    for index, (hook, n, _) in enumerate(ran):
        for earlier in (d for d in deliveries if d.hook == hook and d.n < n):
            assert ended.get((hook, earlier.n), len(ran)) < index, (
                f"{hook}#{n} ran (step {index}) before {hook}#{earlier.n} had ended"
            )


PLANS = st.lists(st.sampled_from(["ok", "fail", "snooze"]), min_size=1, max_size=3).map(
    lambda steps: [*steps, "ok"]
)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), PLANS), min_size=1, max_size=12))
def test_a_keys_deliveries_run_in_enqueue_order(
    store_url: str, jobs: list[tuple[str, list[str]]]
) -> None:
    """Whatever fails, is retried or snoozed, each hook's deliveries run one after the
    other in the order they were enqueued (a model of webhook deliveries)."""
    deliveries = [Delivery(hook=hook, n=n, plan=plan) for n, (hook, plan) in enumerate(jobs)]

    async def check() -> None:
        store = open_store(store_url)
        await store.open(migrate=True)
        try:
            async with store.transaction() as tx:
                await tx.execute("DELETE FROM fiefdom_jobs")
            ran = await run(store, deliveries)
        finally:
            await store.close()
        check_order(deliveries, ran)

    asyncio.run(check())


async def test_a_discarded_job_lets_the_ones_behind_it_go(store: Store) -> None:
    """A delivery that fails all its attempts is discarded, and the next one of its key
    then runs: an ordered key is held back, never blocked for good."""
    deliveries = [
        Delivery(hook="a", n=0, plan=["fail", "fail", "fail"]),
        Delivery(hook="a", n=1, plan=["ok"]),
    ]
    ran = await run(store, deliveries)
    assert ran == [("a", 0, "fail")] * 3 + [("a", 1, "ok")]
    states = {msgspec.json.decode(j.args)["n"]: j.state for j in await store.list_jobs()}
    assert states == {0: JobState.DISCARDED, 1: JobState.COMPLETED}


def test_ordered_needs_a_key() -> None:
    """ordered=True without a domain key is refused with a message naming the fix."""
    with pytest.raises(ValueError, match="ordered=True"):
        JobOptions(kind="x", ordered=True)
