"""Type checked by ``mypy --strict`` from test_protocol_types.py, never run: the
client's ``call`` returns the reply type of a ``Request[R]`` (None for a tell), and
its job methods take and return the library's own types. Each ``type: ignore``
marks an error mypy must report (strict mode flags an unused one)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar, assert_type

import msgspec

import fiefdom
from fiefdom.protocol import Client

T = TypeVar("T")


class Balance(fiefdom.Request[int]):
    pass


class Lookup(fiefdom.Request[T], Generic[T]):
    key: str


class Names(Lookup[list[str]]):
    pass


class Deposit(msgspec.Struct):
    amount: int


async def calls(client: Client) -> None:
    assert_type(await client.call("accounts", Balance(), key="alice"), int)
    assert_type(await client.call("names", Names(key="k")), list[str])
    assert_type(await client.call("accounts", Deposit(amount=1), key="alice"), None)


async def jobs(client: Client) -> None:
    enqueued = await client.enqueue("nap", {"seconds": 1.0})
    assert_type(enqueued, fiefdom.Enqueued)
    assert enqueued.id is not None
    job = await client.get_job(enqueued.id)
    assert_type(job, fiefdom.JobInfo)
    assert_type(job.state, fiefdom.JobState)
    assert_type(job.errors, list[fiefdom.AttemptError])
    assert_type(await client.list_jobs(state=fiefdom.JobState.RUNNING), list[fiefdom.JobInfo])
    await client.list_jobs(state="running")  # type: ignore[arg-type]
    assert_type(await client.retry_job(job.id), fiefdom.JobInfo)
    assert_type(await client.cancel_job(job.id), fiefdom.JobInfo)


async def job_operations(client: Client, since: datetime) -> None:
    page = await client.jobs_page(state=fiefdom.JobState.DISCARDED, since=since, count=True)
    assert_type(page.jobs, list[fiefdom.JobInfo])
    assert_type(page.total, int | None)
    await client.jobs_page(state="discarded")  # type: ignore[arg-type]
    await client.jobs_page(since=1.0)  # type: ignore[arg-type]
    job, previous = await client.job_action("retry", 1, force=True)
    assert_type(job, fiefdom.JobInfo)
    assert_type(previous, fiefdom.JobState | None)
    await client.job_action("rerun", 1)  # type: ignore[arg-type]
    await client.job_action("cancel", 1, force="yes")  # type: ignore[arg-type]
    kinds = await client.job_kinds()
    assert_type(kinds[0].kind, str)
    assert_type(kinds[0].max_attempts, int)
    assert_type(kinds[0].timeout, float | None)
    assert_type(
        await client.retry_jobs(fiefdom.JobState.DISCARDED, kind="k", force=True), tuple[int, int]
    )
    await client.retry_jobs("discarded")  # type: ignore[arg-type]
    assert_type(
        await client.prune_jobs(86400.0, states=[fiefdom.JobState.COMPLETED], queue="q"),
        tuple[int, bool],
    )
    await client.prune_jobs(1.0, states=["completed"])  # type: ignore[list-item]
    assert_type(await client.call_by_name("counter", "Increment", {"by": 2}), Any)
    await client.call_by_name("counter", Deposit(amount=1))  # type: ignore[arg-type]
