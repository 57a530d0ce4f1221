"""Transaction entry and exit are cancellation-safe (issue: a client that
disconnects mid-request wedged the SQLite store): hundreds of operations
cancelled at random instants, natively (``task.cancel()``, as a server does to a
request whose client left) and through anyio scopes, leave the store fully
usable on both dialects."""

from __future__ import annotations

import asyncio
import random

import anyio
import pytest

from fiefdom.storage import Job, JobOptions, JobState, Lease, Store, engine_queries


class Note(Job):
    options = JobOptions(kind="note")
    text: str


async def _operation(store: Store, n: int) -> None:
    kind = n % 6
    if kind == 0:
        await store.list_jobs(limit=50)
    elif kind == 1:
        await store.count_jobs()
    elif kind == 2:
        await store.enqueue(Note(text=str(n)))
    elif kind == 3:
        async with store.transaction() as tx:
            await tx.fetch("SELECT count(*) FROM fiefdom_jobs")
            await store.enqueue(Note(text=f"tx{n}"), tx=tx)
    elif kind == 4:
        await engine_queries(store).promote()
    else:
        await store.get_job(n)


async def _usable(store: Store) -> None:
    """Every kind of transaction still works: reads, writes, a user transaction, the
    engine's claim and finish."""
    before = sum(c.count for c in await store.count_jobs())
    result = await store.enqueue(Note(text="after"))
    assert result.id is not None
    async with store.transaction() as tx:
        assert await tx.fetchval("SELECT count(*) FROM fiefdom_jobs") == before + 1
    queries = engine_queries(store)
    claimed = await queries.claim("default", 1000, worker="w", lease=30)
    assert claimed
    for job in claimed:
        await queries.complete(Lease(job.id, job.lease_token))
    counts = {c.state: c.count for c in await store.count_jobs()}
    assert counts == {JobState.COMPLETED: before + 1}
    assert store.healthy


async def test_natively_cancelled_operations_never_wedge_the_store(store: Store) -> None:
    """Hundreds of reads, writes and transactions cancelled with task.cancel() at
    random instants (a disconnecting client): afterwards the store is fully usable,
    and the event loop's exception handler heard of no connection given back to the
    pool inside a transaction (a BEGIN cancelled in flight left one, reported as an
    error, before transactions were entered as context managers).

    What it may hear of: asyncpg's own futures of a query's cancellation, failed with
    "unexpected connection_lost() call" when the connection they belong to is closed
    with the cancellation still pending, and never awaited by the cancelled caller."""
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(
        lambda _, context: reported.append(
            f"{context.get('message')}: {context.get('exception')!r}"
        )
    )
    try:
        await _cancel_at_random(store)
    finally:
        loop.set_exception_handler(previous)
    asyncpg_cancellations = "ConnectionError('unexpected connection_lost() call')"
    assert [r for r in reported if not r.endswith(asyncpg_cancellations)] == []
    await _usable(store)


async def _cancel_at_random(store: Store) -> None:
    rng = random.Random(7)
    for round_ in range(20):
        tasks = [asyncio.create_task(_operation(store, round_ * 100 + i)) for i in range(25)]
        # Let them get going, then cut them at whatever instant they are at.
        for _ in range(rng.randint(0, 6)):
            await asyncio.sleep(0)
        for task in tasks:
            if rng.random() < 0.8:
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        unexpected = [
            r
            for r in results
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
        ]
        assert unexpected == []


async def test_scope_cancelled_operations_never_wedge_the_store(store: Store) -> None:
    """The same through anyio deadlines that expire mid-operation."""
    rng = random.Random(11)
    for i in range(300):
        with anyio.move_on_after(rng.choice([0, 0.0001, 0.001, 0.005])):
            await _operation(store, i)
    await _usable(store)


@pytest.mark.dialect("postgres")
async def test_an_applications_session_settings_never_leak_to_other_users(store: Store) -> None:
    """A SET in an application's transaction is reset when its connection goes back to
    the pool (the store skips that reset only after its own statements)."""
    async with store.transaction() as tx:
        await tx.execute("SET application_name = 'leaked'")
    for _ in range(20):
        await store.count_jobs()  # the store's own statements, on any pooled connection
        async with store.transaction() as tx:
            assert await tx.fetchval("SELECT current_setting('application_name')") != "leaked"
