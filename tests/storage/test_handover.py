"""A job handed back by a stopping engine is not run elsewhere while its handler is
still unwinding (GUARANTEES 000/1a): the give-back is written only after the handler
in the owning actor has really returned."""

from __future__ import annotations

import anyio
import pytest
from storage_helpers import engine, wait_until

import fiefdom
from fiefdom.jobs import JobContext
from fiefdom.storage import Job, JobOptions, JobState, Store, open_store


class Owner(fiefdom.Actor[fiefdom.Request[None]]):
    """The actor owning one resource; jobs for it run inside it."""

    def __init__(self, key: str) -> None:
        self.key = key


class Touch(Job):
    options = JobOptions(kind="touch", domain="resources", key="resource")
    resource: str


@pytest.mark.slow
async def test_a_job_given_back_at_stop_runs_elsewhere_only_after_its_handler_exited(
    store: Store, store_url: str
) -> None:
    """Engine A stops while its domain job cleans up slowly after cancellation; engine B
    (its own actor system, as another process would have) starts the job only after
    A's handler has exited, never beside it."""
    log: list[str] = []
    entered = anyio.Event()

    async def slow_to_stop(job: Touch, ctx: JobContext[Owner]) -> None:
        log.append("A start")
        entered.set()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.3)  # the handler's own cleanup (a process reaped)
            log.append("A exit")

    async def quick(job: Touch, ctx: JobContext[Owner]) -> None:
        log.append("B start")

    other = open_store(store_url)
    await other.open()
    try:
        await store.enqueue(Touch(resource="r1"))
        async with fiefdom.ActorSystem(name="a") as system_a:
            resources_a = system_a.domain("resources", Owner, idle_timeout=None)
            engine_a = engine(store, domains={"resources": resources_a}, drain_timeout=0.05)
            engine_a.register(Touch, slow_to_stop)
            async with fiefdom.ActorSystem(name="b") as system_b:
                resources_b = system_b.domain("resources", Owner, idle_timeout=None)
                engine_b = engine(other, domains={"resources": resources_b})
                engine_b.register(Touch, quick)
                async with engine_a:
                    await entered.wait()
                async with engine_b:

                    async def completed() -> bool:
                        counts = {c.state: c.count for c in await store.count_jobs()}
                        return counts == {JobState.COMPLETED: 1}

                    await wait_until(completed, what="the job to complete on engine B")
    finally:
        await other.close()
    assert log == ["A start", "A exit", "B start"]
