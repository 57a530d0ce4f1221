"""Two edges the stateful property ran into, pinned as focused tests: a job engine's
stop() cancelled natively (``Task.cancel()``, which ``asyncio.timeout`` and the control
server's request tasks use) while it drains, and ids or limits past 64 bits given to the
store's public face."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import anyio
import pytest
from chaos_helpers import wait_until

from fiefdom import FiefdomError, State
from fiefdom.jobs import JobContext, JobEngine
from fiefdom.storage import Job, JobOptions, JobState, Store


class Held(Job):
    options = JobOptions(kind="chaos.held")


class Note(Job):
    options = JobOptions(kind="chaos.note")
    n: int


NATIVE_STOP_BUG = (
    "jobs/_engine.py JobEngine.stop(): the wait for the engine's task is shielded with "
    "anyio.CancelScope(shield=True), which asyncio's native Task.cancel() passes through: "
    "stop() raises CancelledError while the engine is still stopping, and its tasks "
    "outlive the call (an anyio cancellation is shielded and waits)"
)


@pytest.mark.slow
@pytest.mark.dialect("sqlite")  # the engine's own lifecycle: the dialect plays no part
@pytest.mark.parametrize(
    "how",
    ["anyio", "native"],
)
async def test_a_cancelled_stop_waits_for_the_engine(store: Store, how: str) -> None:
    """stop() cancelled mid-drain returns only once the engine has stopped (000/1e)."""
    started = anyio.Event()
    release = anyio.Event()

    async def held(job: Held, ctx: JobContext[Any]) -> None:
        started.set()
        await release.wait()

    await store.enqueue(Held())
    engine = JobEngine(
        store, queues={"default": 1}, poll_interval=0.02, drain_timeout=1.0, retention=None
    )
    engine.register(Held, held)
    await engine.start()
    try:
        await started.wait()
        if how == "anyio":
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(engine.stop)
                    await wait_until(lambda: engine.state is State.STOPPING, what="stopping")
                    scope.cancel()
        else:
            stopper = asyncio.ensure_future(engine.stop())
            await wait_until(lambda: engine.state is State.STOPPING, what="stopping")
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper
        state_after_stop = engine.state
    finally:
        release.set()
        await engine.stop()
    assert state_after_stop is State.STOPPED


BIG_ID_BUG = (
    "storage/_sqlite.py: an id, after_id or limit past 64 bits raises the sqlite3 "
    "driver's OverflowError unwrapped (not a FiefdomError), where PostgreSQL raises a "
    "StoreError"
)


@pytest.mark.slow
async def test_numbers_past_64_bits_are_typed_errors_and_the_store_goes_on(
    store: Store, backend: str, request: pytest.FixtureRequest
) -> None:
    """Numbers past 64 bits raise a FiefdomError on both dialects; the store goes on (001/2)."""
    calls = {
        "get_job(2**63)": lambda: store.get_job(2**63),
        "cancel_job(2**63)": lambda: store.cancel_job(2**63),
        "retry_job(-2**63-1)": lambda: store.retry_job(-(2**63) - 1),
        "list_jobs(after_id=2**63)": lambda: store.list_jobs(after_id=2**63),
        "list_jobs(limit=2**63)": lambda: store.list_jobs(limit=2**63),
    }
    untyped: dict[str, str] = {}
    for name, call in calls.items():
        try:
            await call()
        except FiefdomError:
            pass
        except Exception as exc:
            untyped[name] = f"{type(exc).__name__}: {exc}"
        else:
            untyped[name] = "no error"
    enqueued = await store.enqueue(Note(n=1))
    assert enqueued.id is not None
    assert await store.cancel_job(enqueued.id) is JobState.CANCELLED
    assert store.healthy
    assert not untyped, untyped
