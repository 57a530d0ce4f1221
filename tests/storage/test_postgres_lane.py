"""PostgreSQL's enqueue outside a caller's transaction runs on a connection of the
store's own (the lane) when no other enqueue holds it, and on the pool otherwise.
These tests show that an acknowledged enqueue is committed, that concurrent enqueues
all land, that a server's error keeps the lane and any other failure replaces it (a
cancelled statement is cancelled on the server, not left to commit later), that the
lane has the pool's session settings and that closing the store closes it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from storage_helpers import wait_until

from fiefdom.storage import Job, JobOptions, Store, StoreError, open_store
from fiefdom.storage._postgres import PostgresStore

pytestmark = pytest.mark.dialect("postgres")


class Plain(Job):
    options = JobOptions(kind="lane.plain")
    n: int


def stats(store: Store) -> int:
    assert isinstance(store, PostgresStore)
    return store.pool_statistics().acquires


def lane_of(store: Store) -> Any:
    return getattr(store, "_lane", None)


async def value(url: str, sql: str) -> Any:
    """Read on a connection of its own: what other sessions see committed."""
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def count(url: str) -> int:
    return int(await value(url, "SELECT count(*) FROM fiefdom_jobs"))


async def test_an_acknowledged_enqueue_is_committed(store: Store, store_url: str) -> None:
    """Once enqueue returns, another session sees the job, and the lane holds no
    transaction open; the pool was not used."""
    acquires = stats(store)
    for n in range(3):
        queued = await store.enqueue(Plain(n=n))
        assert await value(store_url, f"SELECT count(*) FROM fiefdom_jobs WHERE id = {queued.id}")
    assert lane_of(store) is not None
    assert not lane_of(store).is_in_transaction()
    assert store.pool_statistics().acquires == acquires  # type: ignore[attr-defined]


async def test_concurrent_enqueues_take_the_pool_while_the_lane_is_busy(
    store: Store, store_url: str
) -> None:
    """Forty enqueues at once: one at a time holds the lane, the others take the
    pool; every job is stored once with an id of its own."""
    acquires = stats(store)
    results = await asyncio.gather(*(store.enqueue(Plain(n=n)) for n in range(40)))
    assert len({r.id for r in results}) == 40
    assert await count(store_url) == 40
    assert store.pool_statistics().acquires > acquires  # type: ignore[attr-defined]


async def test_a_server_error_keeps_the_lane(store: Store, store_url: str) -> None:
    """An enqueue the server refuses raises StoreError, stores nothing, and leaves
    the lane in place for the next one."""
    await store.enqueue(Plain(n=0))
    lane = lane_of(store)
    async with store.transaction() as tx:
        await tx.execute(
            "ALTER TABLE fiefdom_jobs ADD CONSTRAINT lane_test_refuse CHECK "
            "((args ->> 'n') IS NULL OR (args ->> 'n')::int <> 13)"
        )
    try:
        with pytest.raises(StoreError, match="lane_test_refuse"):
            await store.enqueue(Plain(n=13))
        assert lane_of(store) is lane
        assert not lane.is_closed()
        await store.enqueue(Plain(n=1))
    finally:
        async with store.transaction() as tx:
            await tx.execute("ALTER TABLE fiefdom_jobs DROP CONSTRAINT lane_test_refuse")
    assert await count(store_url) == 2
    assert lane_of(store) is lane


async def test_a_cancelled_enqueue_is_cancelled_on_the_server(store: Store, store_url: str) -> None:
    """An enqueue cancelled while its INSERT waits on a lock: the statement is
    cancelled on the server (the job is not stored when the lock is released), the
    lane is closed, and the next enqueue opens another."""
    await store.enqueue(Plain(n=0))
    lane = lane_of(store)
    locker = await asyncpg.connect(store_url)
    try:
        tr = locker.transaction()
        await tr.start()
        await locker.execute("LOCK TABLE fiefdom_jobs IN EXCLUSIVE MODE")
        task = asyncio.create_task(store.enqueue(Plain(n=1)))

        async def waits_on_the_lock() -> bool:
            waiting = await locker.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%INSERT INTO fiefdom_jobs%' AND datname = current_database()"
            )
            return bool(waiting)

        await wait_until(waits_on_the_lock, what="the enqueue to wait on the lock")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await tr.rollback()
    finally:
        await locker.close()
    assert lane.is_closed()
    assert lane_of(store) is None
    await store.enqueue(Plain(n=2))
    assert lane_of(store) is not None
    assert lane_of(store) is not lane
    stored = await value(
        store_url, "SELECT string_agg(args ->> 'n', ',' ORDER BY id) FROM fiefdom_jobs"
    )
    assert stored == "0,2"


async def test_the_lane_has_the_pools_settings(store_url: str) -> None:
    """statement_timeout, set on the pool's connections, is set on the lane too."""
    store = PostgresStore(store_url, statement_timeout=12.5)
    await store.open(migrate=True)
    try:
        await store.enqueue(Plain(n=0))
        assert await lane_of(store).fetchval("SHOW statement_timeout") == "12500ms"
    finally:
        await store.close()


async def test_closing_the_store_closes_the_lane(store_url: str) -> None:
    store = open_store(store_url)
    await store.open(migrate=True)
    await store.enqueue(Plain(n=0))
    lane = lane_of(store)
    await store.close()
    assert lane.is_closed()
    assert lane_of(store) is None


async def test_the_store_never_holds_more_than_pool_size_connections(store_url: str) -> None:
    """The lane is one of pool_size: with every pooled connection held by a
    transaction and enqueues waiting, the server sees pool_size connections of the
    store, not one more."""
    name = f"budget_{uuid.uuid4().hex[:8]}"
    store = open_store(f"{store_url}&application_name={name}", pool_size=3)
    await store.open(migrate=True)
    release = asyncio.Event()

    async def hold() -> None:
        async with store.transaction() as tx:
            await tx.execute("SELECT 1")
            await release.wait()

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(4):
                group.create_task(hold())
            enqueues = [group.create_task(store.enqueue(Plain(n=n))) for n in range(10)]
            await wait_until(lambda: any(t.done() for t in enqueues), what="the lane's enqueue")
            assert isinstance(store, PostgresStore)
            await wait_until(
                lambda: store.pool_statistics().waiting > 0, what="callers waiting for the pool"
            )
            held = await value(
                store_url,
                f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{name}'",
            )
            assert held == 3
            release.set()
        assert await count(store_url) == 10
    finally:
        release.set()
        await store.close()
