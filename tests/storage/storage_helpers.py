"""Helpers shared by the storage tests."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from fiefdom.jobs import JobEngine, Retention
from fiefdom.storage import JobState, Store


def engine(store: Store, **overrides: Any) -> JobEngine:
    """An engine with the short intervals tests need (leases of seconds, fast polling)."""
    options: dict[str, Any] = {
        "queues": {"default": 10},
        "lease": 2.0,
        "heartbeat": 0.5,
        "poll_interval": 0.05,
        "rescue_interval": 0.1,
        "drain_timeout": 5.0,
        "retention": None,
    }
    options.update(overrides)
    retention = options.pop("retention")
    if not isinstance(retention, Retention):
        retention = None
    return JobEngine(store, retention=retention, **options)


async def wait_until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = 30.0,
    what: str = "the condition",
) -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        await anyio.sleep(0.01)


async def state_of(store: Store, job_id: int | None) -> JobState | None:
    """The job's state, None if it is gone."""
    assert job_id is not None
    info = await store.get_job(job_id)
    return None if info is None else info.state


async def reaches(store: Store, job_id: int | None, state: JobState) -> None:
    """Wait until the job is in ``state`` (within the hang guard)."""

    async def check() -> bool:
        return await state_of(store, job_id) == state

    await wait_until(check, what=f"job {job_id} to be {state}")
