"""Snoozes are counted and capped, on both dialects: each snooze adds one to the job's
``snoozes`` (in the statement that reschedules it) without using an attempt, and the
snooze past the engine's ``max_snoozes`` discards the job with an error naming the
setting; None is no limit."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storage_helpers import engine, wait_until
from structlog.testing import capture_logs

import fiefdom
from fiefdom.jobs import JobContext, JobEngine, Snooze, is_snooze
from fiefdom.storage import Job, JobEvent, JobInfo, JobOptions, JobState, Store, open_store

FINAL = {JobState.COMPLETED, JobState.DISCARDED, JobState.CANCELLED}


class Later(Job):
    """Snoozes on its first ``times`` runs (``times`` < 0: on every run), then completes.
    One attempt only: a snooze that used one would end it at once."""

    options = JobOptions(kind="later", max_attempts=1)
    times: int


class Run:
    """What the handler saw on each run of one job: its attempt and snooze count."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []  # (ctx.attempt, ctx.snoozes) per run
        self.stored: list[int] = []  # JobInfo.snoozes read by the handler as it ran
        self.events: list[JobEvent] = []


async def run_one(store: Store, times: int, **overrides: Any) -> tuple[JobInfo, Run]:
    """Run one ``Later(times)`` job on an engine with ``overrides`` until it ends."""
    run = Run()
    eng = engine(store, **overrides)

    @eng.handler(Later)
    async def later(job: Later, ctx: JobContext[Any]) -> None:
        run.seen.append((ctx.attempt, ctx.snoozes))
        info = await ctx.store.get_job(ctx.id)
        assert info is not None
        run.stored.append(info.snoozes)
        if times < 0 or len(run.seen) <= times:
            raise Snooze(0)

    eng.subscribe(run.events.append)
    enqueued = await store.enqueue(Later(times=times))
    assert enqueued.id is not None
    job_id = enqueued.id

    async def ended() -> bool:
        info = await store.get_job(job_id)
        return info is not None and info.state in FINAL

    async with eng:
        await wait_until(ended, what=f"job {job_id} to end")
    info = await store.get_job(job_id)
    assert info is not None
    return info, run


def test_the_default_cap_is_100() -> None:
    """An engine allows 100 snoozes unless told otherwise."""
    assert inspect.signature(JobEngine).parameters["max_snoozes"].default == 100


async def test_a_job_that_always_snoozes_is_discarded_after_max_snoozes(store: Store) -> None:
    """A handler that snoozes on every run is snoozed exactly ``max_snoozes`` times, all
    on its one attempt; its next snooze discards it with an error that says how many
    times it was snoozed and names the max_snoozes setting, logged at warning level
    with its kind, id and key."""
    with capture_logs() as logs:
        info, run = await run_one(store, -1, max_snoozes=3)
    assert info.state is JobState.DISCARDED
    assert info.snoozes == 3
    assert info.attempt == 1  # the snoozes gave their attempt back; the discard used it
    assert run.seen == [(1, 0), (1, 1), (1, 2), (1, 3)]
    [error] = info.errors
    assert error.type == "fiefdom.TooManySnoozes"
    assert error.attempt == 1
    assert error.message.startswith("snoozed 3 times and max_snoozes is 3: discarded")
    assert "[jobs] max_snoozes" in error.message
    [line] = [e for e in logs if e["event"] == "job snoozed too many times: discarded"]
    assert line["log_level"] == "warning"
    assert (line["kind"], line["job_id"], line["key"]) == ("later", info.id, None)
    assert (line["snoozes"], line["max_snoozes"]) == (3, 3)
    # Each snooze was an event of its own, saying so; the discard carries the error.
    snoozes = [e for e in run.events if is_snooze(e)]
    assert [e.detail for e in snoozes] == [f"snoozed for 0s (snooze {n})" for n in (1, 2, 3)]
    assert all(e.state is JobState.AVAILABLE for e in snoozes)
    # The events say so in a field of their own: exactly the snoozes carry it.
    assert [e for e in run.events if e.snoozed] == snoozes
    assert run.events[-1].state is JobState.DISCARDED
    assert run.events[-1].detail == error.message
    assert not is_snooze(run.events[-1])


async def test_the_count_grows_with_each_snooze_and_is_listed(store: Store) -> None:
    """Each snooze adds one to the stored count as it reschedules the job: every run
    reads one more in get_job than the run before, and list_jobs shows the total."""
    info, run = await run_one(store, 4, max_snoozes=10)
    assert info.state is JobState.COMPLETED
    assert run.stored == [0, 1, 2, 3, 4]
    assert run.seen == [(1, n) for n in range(5)]
    [listed] = [j for j in await store.list_jobs() if j.id == info.id]
    assert (listed.snoozes, listed.attempt, listed.errors) == (4, 1, [])


@pytest.mark.parametrize(
    ("max_snoozes", "state", "snoozes"), [(3, "discarded", 3), (None, "completed", 5)]
)
async def test_none_means_no_limit(
    store: Store, max_snoozes: int | None, state: str, snoozes: int
) -> None:
    """A job that snoozes 5 times before completing is discarded at its fourth snooze
    under max_snoozes=3, and completes under max_snoozes=None."""
    info, run = await run_one(store, 5, max_snoozes=max_snoozes)
    assert (info.state, info.snoozes, info.attempt) == (JobState(state), snoozes, 1)
    assert len(run.seen) == snoozes + 1


async def test_a_retry_starts_the_count_again(store: Store) -> None:
    """retry_job on a job discarded for its snoozes makes it available with its count
    back at 0, so that it may snooze again rather than be discarded at once."""
    info, _ = await run_one(store, -1, max_snoozes=0)
    assert (info.state, info.snoozes) == (JobState.DISCARDED, 0)
    info, _ = await run_one(store, -1, max_snoozes=1)
    assert (info.state, info.snoozes) == (JobState.DISCARDED, 1)
    assert await store.retry_job(info.id)
    again = await store.get_job(info.id)
    assert again is not None
    assert (again.state, again.snoozes, again.errors) == (JobState.AVAILABLE, 0, info.errors)
    assert await store.retry_jobs(state=JobState.DISCARDED) == (1, 0)  # the max_snoozes=0 one
    assert {j.snoozes for j in await store.list_jobs()} == {0}


def test_a_negative_cap_is_refused(store_url: str) -> None:
    """max_snoozes must be a count (or None): a negative one is a configuration error."""
    with pytest.raises(fiefdom.ConfigurationError, match="max_snoozes must be >= 0"):
        JobEngine(open_store(store_url), max_snoozes=-1, retention=None)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    cap=st.one_of(st.none(), st.integers(min_value=0, max_value=4)),
    times=st.integers(min_value=0, max_value=6),
)
def test_a_job_ends_as_its_snoozes_and_the_cap_say(
    store_url: str, cap: int | None, times: int
) -> None:
    """For any cap (None included) and any number of snoozes a handler asks for before
    completing: the job completes with that many snoozes when the cap allows them all,
    else it is discarded with ``cap`` snoozes; it ran once per snooze allowed plus once,
    always on its first attempt."""

    async def check() -> None:
        store = open_store(store_url)
        await store.open(migrate=True)
        try:
            async with store.transaction() as tx:
                await tx.execute("DELETE FROM fiefdom_jobs")
            info, run = await run_one(store, times, max_snoozes=cap)
        finally:
            await store.close()
        allowed = times if cap is None else min(times, cap)
        ends = JobState.COMPLETED if allowed == times else JobState.DISCARDED
        assert (info.state, info.snoozes, info.attempt) == (ends, allowed, 1)
        assert run.seen == [(1, n) for n in range(allowed + 1)]

    asyncio.run(check())


def test_a_snooze_from_a_daemon_without_the_field_is_still_recognised() -> None:
    """An event of a daemon from before ``JobEvent.snoozed`` (decoded without the
    field) is taken for a snooze by its detail; a job given back unrun is not one,
    and the field alone is enough whatever the detail says."""
    wire = {
        "topic": "jobs",
        "job_id": 7,
        "kind": "later",
        "queue": "default",
        "state": "available",
        "attempt": 1,
        "at": 1.0,
    }
    old = msgspec.json.decode(
        msgspec.json.encode({**wire, "detail": "snoozed for 5s (snooze 2)"}), type=JobEvent
    )
    assert not old.snoozed
    assert is_snooze(old)
    given_back = msgspec.json.decode(
        msgspec.json.encode({**wire, "detail": "given back at shutdown"}), type=JobEvent
    )
    assert not is_snooze(given_back)
    flagged = msgspec.json.decode(
        msgspec.json.encode({**wire, "detail": None, "snoozed": True}), type=JobEvent
    )
    assert is_snooze(flagged)
