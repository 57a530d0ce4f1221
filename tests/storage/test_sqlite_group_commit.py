"""SQLite's grouped transactions: a claim and a finish that wait for the engine's
connection together run in one transaction (one commit, one call on the
connection's thread), without giving up what each had in a transaction of its own:
results are reported only once committed, an error in one fails only that one,
and a claim cancelled once handed over still gives its jobs back."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest
from storage_helpers import wait_until

from fiefdom.storage import (
    ClaimedJob,
    Job,
    JobOptions,
    JobState,
    Lease,
    Outcome,
    Store,
    StoreError,
    engine_queries,
)
from fiefdom.storage._sqlite import SQLiteStore

pytestmark = pytest.mark.dialect("sqlite")

T = TypeVar("T")


class Note(Job):
    options = JobOptions(kind="note")
    text: str


class Refused(Job):
    options = JobOptions(kind="refused", queue="refused")
    text: str


@contextmanager
def reader(store_url: str) -> Iterator[sqlite3.Connection]:
    """A connection of the test's own: it sees only what has committed."""
    conn = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def states(conn: sqlite3.Connection) -> dict[int, tuple[str, int, int]]:
    """Each job's committed (state, attempt, lease_token)."""
    rows = conn.execute("SELECT id, state, attempt, lease_token FROM fiefdom_jobs").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def together(store: Store, *calls: Awaitable[T]) -> list[T | BaseException]:
    """Start ``calls`` while the engine's connection is held, so that they queue for
    it together, then let them run; returns each one's result or error."""
    assert isinstance(store, SQLiteStore)
    channel = store._engine
    async with channel.lock:
        tasks = [asyncio.ensure_future(c) for c in calls]
        await wait_until(lambda: len(channel.queued) == len(calls), what="the calls to queue")
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_claim_and_a_finish_waiting_together_commit_once(store: Store) -> None:
    """A claim and a finish queued for the engine's connection at the same time run
    in one transaction: one commit between them, each with its own result."""
    assert isinstance(store, SQLiteStore)
    await store.enqueue_many([Note(text=str(i)) for i in range(4)])
    queries = engine_queries(store)
    first = await queries.claim("default", 2, worker="w", lease=30)
    commits = store._engine.commits
    claimed, finished = await together(
        store,
        queries.claim("default", 10, worker="w", lease=30),
        queries.finish(
            [Outcome(lease=Lease(j.id, j.lease_token), state=JobState.COMPLETED) for j in first]
        ),
    )
    assert store._engine.commits == commits + 1
    assert isinstance(claimed, list)
    assert sorted(j.id for j in claimed) == sorted(set(range(1, 5)) - {j.id for j in first})
    assert finished == {j.id: JobState.COMPLETED for j in first}


async def test_grouped_results_are_reported_only_after_their_commit(
    store: Store, store_url: str
) -> None:
    """At the instant a grouped claim or finish returns, another connection already
    sees both operations' writes: nothing is reported before the shared commit."""
    await store.enqueue_many([Note(text=str(i)) for i in range(4)])
    queries = engine_queries(store)
    first = await queries.claim("default", 2, worker="w", lease=30)
    with reader(store_url) as conn:

        async def claim() -> dict[int, tuple[str, int, int]]:
            jobs = await queries.claim("default", 10, worker="w", lease=30)
            assert len(jobs) == 2
            return states(conn)  # no await in between: what had committed on return

        async def finish() -> dict[int, tuple[str, int, int]]:
            outcomes = [
                Outcome(lease=Lease(j.id, j.lease_token), state=JobState.COMPLETED) for j in first
            ]
            assert await queries.finish(outcomes)
            return states(conn)

        seen = await together(store, claim(), finish())
    done = {j.id for j in first}
    for snapshot in seen:
        assert isinstance(snapshot, dict)
        assert {i: s[0] for i, s in snapshot.items()} == {
            i: "completed" if i in done else "running" for i in range(1, 5)
        }


async def test_a_failing_finish_does_not_fail_the_claim_grouped_with_it(
    store: Store, store_url: str
) -> None:
    """A finish the database refuses (a trigger aborting it) fails alone: the claim
    that shared its transaction is run again in one of its own and commits."""
    assert isinstance(store, SQLiteStore)
    await store.enqueue_many([Note(text=str(i)) for i in range(4)])
    async with store.transaction() as tx:
        await tx.execute(
            "CREATE TRIGGER refuse AFTER UPDATE OF state ON fiefdom_jobs "
            "WHEN NEW.state = 'discarded' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    queries = engine_queries(store)
    first = await queries.claim("default", 2, worker="w", lease=30)
    claimed, finished = await together(
        store,
        queries.claim("default", 10, worker="w", lease=30),
        queries.finish(
            [Outcome(lease=Lease(j.id, j.lease_token), state=JobState.DISCARDED) for j in first]
        ),
    )
    assert isinstance(finished, StoreError)
    assert "refused by the test" in str(finished)
    assert isinstance(claimed, list)
    assert len(claimed) == 2
    with reader(store_url) as conn:
        assert {i: s[0] for i, s in states(conn).items()} == dict.fromkeys(range(1, 5), "running")
    assert store.healthy


async def test_a_failing_claim_does_not_fail_the_finish_grouped_with_it(
    store: Store, store_url: str
) -> None:
    """A claim the database refuses fails alone: the finish that shared its
    transaction is run again in one of its own and commits."""
    await store.enqueue_many([Note(text="a"), Refused(text="b")])
    async with store.transaction() as tx:
        await tx.execute(
            "CREATE TRIGGER refuse AFTER UPDATE OF state ON fiefdom_jobs "
            "WHEN NEW.state = 'running' AND NEW.queue = 'refused' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    queries = engine_queries(store)
    (first,) = await queries.claim("default", 10, worker="w", lease=30)
    claimed, finished = await together(
        store,
        queries.claim("refused", 10, worker="w", lease=30),
        queries.finish(
            [Outcome(lease=Lease(first.id, first.lease_token), state=JobState.COMPLETED)]
        ),
    )
    assert isinstance(claimed, StoreError)
    assert "refused by the test" in str(claimed)
    assert finished == {first.id: JobState.COMPLETED}
    with reader(store_url) as conn:
        assert states(conn) == {first.id: ("completed", 1, 1), 2: ("available", 0, 0)}


async def test_a_claim_cancelled_once_handed_over_gives_its_jobs_back(
    store: Store, store_url: str
) -> None:
    """A claim cancelled after it was handed to the connection's thread (its BEGIN
    waiting for another writer) still runs; it waits for it, then gives the jobs
    it took back, as they were, before it is cancelled."""
    assert isinstance(store, SQLiteStore)
    await store.enqueue_many([Note(text=str(i)) for i in range(3)])
    queries = engine_queries(store)
    with reader(store_url) as holder:
        holder.execute("BEGIN IMMEDIATE")  # the claim's BEGIN waits for this writer
        task = asyncio.ensure_future(queries.claim("default", 10, worker="w", lease=30))
        await wait_until(
            lambda: store._engine.runner is not None and not store._engine.queued,
            what="the claim to be handed over",
        )
        task.cancel()
        holder.execute("ROLLBACK")
        with pytest.raises(asyncio.CancelledError):
            await task
        # The claim ran (every token moved on), and its jobs are back, attempt refunded.
        assert states(holder) == dict.fromkeys(range(1, 4), ("available", 0, 1))
    again: list[ClaimedJob] = await queries.claim("default", 10, worker="w", lease=30)
    assert sorted(j.id for j in again) == [1, 2, 3]


async def test_a_claim_cancelled_while_queued_never_runs(store: Store, store_url: str) -> None:
    """A claim cancelled while it still waits for the engine's connection is taken
    out of the queue: it never runs, and later operations are unaffected."""
    assert isinstance(store, SQLiteStore)
    await store.enqueue_many([Note(text=str(i)) for i in range(3)])
    queries = engine_queries(store)
    async with store._engine.lock:
        task = asyncio.ensure_future(queries.claim("default", 10, worker="w", lease=30))
        await wait_until(lambda: len(store._engine.queued) == 1, what="the claim to queue")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert store._engine.queued == []
    with reader(store_url) as conn:
        assert states(conn) == dict.fromkeys(range(1, 4), ("available", 0, 0))
    assert len(await queries.claim("default", 10, worker="w", lease=30)) == 3


async def test_only_the_engine_connection_keeps_temporary_storage_in_memory(
    store: Store,
) -> None:
    """The engine's connection (claims, finishes) keeps its statement journals and
    other temporary storage in memory; the other connections keep SQLite's default."""
    assert isinstance(store, SQLiteStore)
    channels = (store._engine, store._user, store._reader, store._app_reader)
    settings: dict[str, int] = {}
    for channel in channels:
        assert channel.conn is not None
        rows = await channel.conn.execute_fetchall("PRAGMA temp_store")
        settings[channel.name] = next(iter(rows))[0]
    assert settings == {"engine": 2, "user": 0, "reader": 0, "app-reader": 0}


async def test_a_batch_of_plain_completions_writes_what_the_general_finish_writes(
    store: Store, store_url: str
) -> None:
    """A finish whose outcomes are all plain completions runs a shorter statement:
    it leaves a completed job exactly as the general statement (used for a batch
    with any other outcome) does, and refuses a stale lease the same way."""
    await store.enqueue_many([Note(text=str(i)) for i in range(4)])
    queries = engine_queries(store)
    jobs = await queries.claim("default", 4, worker="w", lease=30)
    a, b, c, d = (Lease(j.id, j.lease_token) for j in jobs)
    stale = Lease(a.job_id, a.token + 1)
    plain = await queries.finish(
        [Outcome(lease=x, state=JobState.COMPLETED) for x in (a, stale, b)]
    )
    mixed = await queries.finish(
        [
            Outcome(lease=c, state=JobState.COMPLETED),
            Outcome(lease=d, state=JobState.AVAILABLE, refund=True),
        ]
    )
    assert plain == {a.job_id: JobState.COMPLETED, b.job_id: JobState.COMPLETED}
    assert mixed == {c.job_id: JobState.COMPLETED, d.job_id: JobState.AVAILABLE}
    columns = (
        "state, attempt, snoozes, errors, worker, lease_expires_at, cancel_requested, "
        "unique_key, lease_token, run_at = created_at, finished_at IS NOT NULL"
    )
    with reader(store_url) as conn:
        rows = {
            r[0]: r[1:] for r in conn.execute(f"SELECT id, {columns} FROM fiefdom_jobs").fetchall()
        }
    assert rows[a.job_id] == rows[b.job_id] == rows[c.job_id]
    assert rows[a.job_id] == ("completed", 1, 0, "[]", None, None, 0, None, 1, 1, 1)


async def test_plain_completions_look_their_jobs_up_by_id(store: Store) -> None:
    """The plain-completion statement finds each job by its id (the primary key),
    never by walking the table."""
    from fiefdom.storage._sqlite_queries import _COMPLETE_SQL

    assert isinstance(store, SQLiteStore)
    conn = store._engine.conn
    assert conn is not None
    plan = [
        r[3]
        for r in await conn.execute_fetchall(
            "EXPLAIN QUERY PLAN " + _COMPLETE_SQL, (0.0, "[[1, 1]]")
        )
    ]
    assert any(p.startswith("SEARCH fiefdom_jobs USING INTEGER PRIMARY KEY") for p in plan)
    assert not any(p.startswith("SCAN fiefdom_jobs") for p in plan)
