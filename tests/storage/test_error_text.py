"""A job's error text is data (DESIGN rule 5): whatever a handler raises (NUL,
lone surrogates, megabytes, a ``__str__`` that raises) is stored escaped and
capped, every job ends in a terminal or retryable state, and the engine keeps
draining other jobs. Both dialects."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storage_helpers import engine, wait_until

from fiefdom.jobs import JobContext
from fiefdom.jobs._kinds import MAX_MESSAGE, describe_error, safe_text
from fiefdom.storage import Job, JobOptions, JobState, Store, open_store

ENDED = {JobState.COMPLETED, JobState.DISCARDED, JobState.RETRYABLE, JobState.CANCELLED}


def no_backoff(attempt: int) -> float:
    return 0.0


class Raise(Job):
    """Raises an error whose message is the text at ``index`` of the test's list."""

    options = JobOptions(kind="raise", max_attempts=1, backoff=no_backoff)
    index: int


class Fine(Job):
    options = JobOptions(kind="fine")
    n: int


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


HOSTILE = [
    "\x00",
    "before\x00after",
    "\ud800",
    "lone \udfff low surrogate",
    "\x00\ud800\x00" * 1000,
    "x" * (10 * 1024 * 1024),  # 10 MB
    "\x1b[31mred\x1b[0m\r\n\t\x7f",
    "'); DROP TABLE fiefdom_jobs; --",
    '{"json": "\\u0000"}',
]


async def _drain(store_url: str, texts: list[str | None]) -> dict[int, Any]:
    """Run one failing job per text (None: a ``__str__`` that raises) beside as many
    good jobs, on a fresh store; returns the final JobInfo of every job."""
    store = open_store(store_url)
    await store.open(migrate=True)
    try:

        async def fail(job: Raise, ctx: JobContext[Any]) -> None:
            text = texts[job.index]
            if text is None:
                raise BadStr
            raise ValueError(text)

        async def fine(job: Fine, ctx: JobContext[Any]) -> None:
            return None

        eng = engine(store, lease=30.0, heartbeat=1.0)
        eng.register(Raise, fail)
        eng.register(Fine, fine)
        jobs: list[Job] = []
        for i in range(len(texts)):
            jobs += [Raise(index=i), Fine(n=i)]
        results = await store.enqueue_many(jobs)
        ids = [r.id for r in results]
        assert all(isinstance(i, int) for i in ids)

        async def all_ended() -> bool:
            for job_id in ids:
                assert job_id is not None
                info = await store.get_job(job_id)
                if info is None or info.state not in ENDED:
                    return False
            return True

        async with eng:
            await wait_until(all_ended, what="every job to end")
        infos = {}
        for job_id in ids:
            assert job_id is not None
            infos[job_id] = await store.get_job(job_id)
        assert eng.statistics().finish_failures == 0
        return infos
    finally:
        await store.close()


async def test_hostile_error_texts_are_stored_escaped_and_capped(store_url: str) -> None:
    """NUL, lone surrogates, 10 MB and a raising __str__ each end their job discarded
    with an escaped, capped message; the good jobs beside them all complete."""
    texts: list[str | None] = [*HOSTILE, None]
    infos = await _drain(store_url, texts)
    failed = [i for i in infos.values() if i.kind == "raise"]
    good = [i for i in infos.values() if i.kind == "fine"]
    assert {i.state for i in good} == {JobState.COMPLETED}
    assert {i.state for i in failed} == {JobState.DISCARDED}
    for info in failed:
        (error,) = info.errors
        assert "\x00" not in error.message
        assert len(error.message) <= MAX_MESSAGE + 100
        error.message.encode("utf-8")  # no lone surrogate survived
        text = texts[msgspec.json.decode(info.args)["index"]]
        if text is None:
            assert "str() raised" in error.message
        elif len(text) > MAX_MESSAGE:
            assert error.message.endswith(f"[truncated: {len(text)} characters in all]")
        else:
            assert error.message == safe_text(text, MAX_MESSAGE)
        assert error.type == "builtins.ValueError" or text is None


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.text(alphabet=st.characters(codec=None), max_size=300), min_size=1, max_size=6))
def test_any_error_text_ends_its_job_and_never_stalls_others(
    store_url: str, texts: list[str]
) -> None:
    """Arbitrary text (every code point, surrogates and NUL included) raised by handlers:
    every job ends, the good ones complete, and the finisher never stalls."""
    infos = asyncio.run(_drain(store_url, list(texts)))
    for info in infos.values():
        assert info.state is (JobState.COMPLETED if info.kind == "fine" else JobState.DISCARDED)
        for error in info.errors:
            assert "\x00" not in error.message


@pytest.mark.parametrize(
    "text",
    [pytest.param(t, id=f"hostile-{i}") for i, t in enumerate(HOSTILE)],
)
def test_describe_error_gives_text_any_store_can_hold(text: str) -> None:
    """The recorded message and traceback encode as UTF-8, hold no NUL and are capped."""
    error = describe_error(ValueError(text), 1, 0.0)
    for field in (error.message, error.traceback, error.type):
        field.encode("utf-8")
        assert "\x00" not in field
    assert len(error.message) <= MAX_MESSAGE + 100


@pytest.mark.dialect("postgres")  # only jsonb refuses text (NUL); SQLite holds anything
async def test_an_outcome_the_store_refuses_does_not_hold_back_the_batch(store: Store) -> None:
    """A result the store cannot hold is recorded without its text, and the other
    results of the same batch are recorded: the engine keeps draining."""
    from fiefdom.jobs._core import Core, Held, Runner, Timing
    from fiefdom.jobs._finisher import Finisher
    from fiefdom.storage import AttemptError, Lease, Outcome, engine_queries

    for i in range(3):
        await store.enqueue(Fine(n=i))
    queries = engine_queries(store)
    claimed = await queries.claim("default", 10, worker="w", lease=30)
    assert len(claimed) == 3
    timing = Timing(lease=30, heartbeat=10, poll=1, rescue_every=1, batch=10, drain_timeout=1)
    core = Core(store, name="t", queues={"default": 1}, domains={}, timing=timing)
    runner = Runner("default", 1)
    batch = []
    for n, job in enumerate(claimed):
        held = Held(job, runner)
        core.held[job.id] = held
        runner.in_flight += 1
        # Bypasses describe_error: the raw text a careless writer would pass on.
        raw = AttemptError(attempt=1, at=0.0, type="T", message="raw\x00nul" if n == 1 else "ok")
        outcome = Outcome(lease=Lease(job.id, job.lease_token), state=JobState.DISCARDED, error=raw)
        batch.append((held, outcome))
    done, failed, _ = await Finisher(core)._write(batch)
    assert failed == []
    assert set(done) == {j.id for j in claimed}
    bad = await store.get_job(claimed[1].id)
    assert bad is not None
    assert bad.state is JobState.DISCARDED
    assert "could not be stored" in bad.errors[-1].message
