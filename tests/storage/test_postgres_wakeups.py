"""On PostgreSQL every enqueue statement notifies the engines of other processes,
at commit, once for each queue it gave an available job (the table has no trigger
for it since migration 0013): the single INSERT, the JSON batch (with and without
unique keys) and the COPY. A job that is not available (scheduled for later, or a
duplicate skipped) and an enqueue rolled back notify nobody.

Each test listens on its own connection, the way another process's engine does. A
sentinel notification sent after the enqueue has committed marks the end of what
it sent (notifications arrive in commit order), so a test that expects no
notification waits for the sentinel, not for a time. Queue names are unique to
each test: the channel is shared by the whole database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import pytest
from enqueue_jobs import Keyed, Plain
from storage_helpers import wait_until

from fiefdom.jobs import JobContext, JobEngine
from fiefdom.storage import Store, StoreError, _postgres_enqueue, open_store
from fiefdom.storage._postgres_enqueue import NOTIFY_CHANNEL

pytestmark = pytest.mark.dialect("postgres")

HANG_GUARD = 30.0


class Heard:
    """What one listening connection hears on the jobs' channel."""

    def __init__(self, conn: asyncpg.Connection[Any]) -> None:
        self.conn = conn
        self.payloads: asyncio.Queue[str] = asyncio.Queue()

    def on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.payloads.put_nowait(str(payload))

    async def until_sentinel(self, store_url: str, ours: set[str]) -> list[str]:
        """Every payload of ``ours`` heard before a sentinel sent now (from another
        connection, so after everything committed before it)."""
        sentinel = f"sentinel-{uuid.uuid4().hex}"
        other = await asyncpg.connect(store_url)
        try:
            await other.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, sentinel)
        finally:
            await other.close()
        got: list[str] = []
        while True:
            payload = await asyncio.wait_for(self.payloads.get(), timeout=HANG_GUARD)
            if payload == sentinel:
                return got
            if payload in ours:
                got.append(payload)


@pytest.fixture
async def heard(store_url: str) -> AsyncIterator[Heard]:
    conn = await asyncpg.connect(store_url)
    h = Heard(conn)
    await conn.add_listener(NOTIFY_CHANNEL, h.on_notify)
    try:
        yield h
    finally:
        await conn.close()


def queues(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:10]
    return [f"wake-{tag}-{i}" for i in range(n)]


async def one_plain(store: Store, q: list[str]) -> None:
    await store.enqueue(Plain(n=1), queue=q[0])


async def one_keyed(store: Store, q: list[str]) -> None:
    await store.enqueue(Keyed(account=uuid.uuid4().hex), queue=q[0])


async def batch_plain(store: Store, q: list[str]) -> None:
    await store.enqueue_many([Plain(n=i) for i in range(3)], queue=q[0])
    await store.enqueue_many([Plain(n=i) for i in range(4)], queue=q[1])


async def batch_keyed(store: Store, q: list[str]) -> None:
    await store.enqueue_many([Keyed(account=uuid.uuid4().hex) for _ in range(3)], queue=q[0])
    await store.enqueue_many([Keyed(account=uuid.uuid4().hex) for _ in range(2)], queue=q[1])


ENQUEUES: dict[str, Callable[[Store, list[str]], Awaitable[None]]] = {
    "single": one_plain,
    "single_unique": one_keyed,
    "batch": batch_plain,
    "batch_unique": batch_keyed,
}


@pytest.mark.parametrize("path", sorted(ENQUEUES))
async def test_each_enqueue_statement_notifies_its_queues(
    store: Store, store_url: str, heard: Heard, path: str
) -> None:
    """Each statement notifies each queue it gave available jobs (once as heard: the
    server merges equal notifications of one transaction) and no other."""
    q = queues(2)
    await ENQUEUES[path](store, q)
    got = await heard.until_sentinel(store_url, set(q))
    expected = [q[0]] if path.startswith("single") else q
    assert got == expected


async def test_a_copied_batch_notifies_its_queue_once_after_it_is_stored(
    store: Store, store_url: str, heard: Heard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch taking the COPY path is notified after the COPY, once per queue; the
    jobs are there when the notification arrives."""
    monkeypatch.setattr(_postgres_enqueue, "COPY_ROWS", 2)
    q = queues(1)
    await store.enqueue_many([Plain(n=i) for i in range(5)], queue=q[0])
    assert await heard.until_sentinel(store_url, set(q)) == q
    async with store.read() as tx:
        assert await tx.fetchval("SELECT count(*) FROM fiefdom_jobs WHERE queue = $1", q[0]) == 5


async def test_a_copied_batch_whose_notification_fails_stores_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COPY and its notification are one transaction: when the notification
    fails after the rows were copied, the enqueue fails and no job is stored (an
    error means nothing was committed)."""
    monkeypatch.setattr(_postgres_enqueue, "COPY_ROWS", 2)
    real = _postgres_enqueue.notify_queues
    calls: list[list[str]] = []

    async def fails_after_sending(conn: Any, queues: Sequence[str]) -> None:
        await real(conn, queues)
        calls.append(list(queues))
        raise StoreError("the connection was lost after the notification")

    monkeypatch.setattr(_postgres_enqueue, "notify_queues", fails_after_sending)
    q = queues(1)
    with pytest.raises(StoreError, match="after the notification"):
        await store.enqueue_many([Plain(n=i) for i in range(5)], queue=q[0])
    assert calls == [q]
    async with store.read() as tx:
        assert await tx.fetchval("SELECT count(*) FROM fiefdom_jobs WHERE queue = $1", q[0]) == 0


async def test_jobs_that_are_not_available_notify_nobody(
    store: Store, store_url: str, heard: Heard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scheduled jobs send nothing, whichever statement inserts them (the single
    INSERT, the JSON batch, the COPY), and neither does a duplicate that was
    skipped."""
    monkeypatch.setattr(_postgres_enqueue, "COPY_ROWS", 5)
    q = queues(3)
    await store.enqueue(Plain(n=1), queue=q[0], delay=3600)
    await store.enqueue_many([Plain(n=i) for i in range(3)], queue=q[0], delay=3600)
    await store.enqueue_many([Plain(n=i) for i in range(5)], queue=q[0], delay=3600)
    account = uuid.uuid4().hex
    await store.enqueue(Keyed(account=account), queue=q[1])
    assert await heard.until_sentinel(store_url, set(q)) == [q[1]]
    dup = await store.enqueue(Keyed(account=account), queue=q[2])
    assert dup.duplicate
    assert await heard.until_sentinel(store_url, set(q)) == []


async def test_an_enqueue_rolled_back_notifies_nobody(
    store: Store, store_url: str, heard: Heard
) -> None:
    """Inside a caller's transaction the notification is sent at its commit: a
    rollback sends none, a commit sends each queue once."""

    class Abort(Exception):
        pass

    q = queues(2)
    try:
        async with store.transaction() as tx:
            await store.enqueue(Plain(n=1), queue=q[0], tx=tx)
            await store.enqueue_many([Plain(n=i) for i in range(3)], queue=q[1], tx=tx)
            raise Abort
    except Abort:
        pass
    assert await heard.until_sentinel(store_url, set(q)) == []
    async with store.transaction() as tx:
        await store.enqueue(Plain(n=1), queue=q[0], tx=tx)
        await store.enqueue(Plain(n=2), queue=q[0], tx=tx)
        await store.enqueue_many([Plain(n=i) for i in range(3)], queue=q[1], tx=tx)
    assert sorted(await heard.until_sentinel(store_url, set(q))) == q


async def test_an_idle_engine_on_another_store_wakes_for_a_new_job(
    store: Store, store_url: str
) -> None:
    """An engine whose poll would not come for an hour runs a job enqueued through
    another store (another pool, as another process has) when it is notified."""
    other = open_store(store_url)
    await other.open()
    ran = asyncio.Event()
    q = queues(1)[0]

    async def handle(job: Plain, ctx: JobContext[Any]) -> None:
        ran.set()

    async def listening() -> bool:
        # The engine's notification connection (opened after ``since``) has run its
        # LISTENs: its last statement is one of them, or the ping it sends only after
        # them. A job enqueued from now on is found through its notification alone.
        async with store.read() as tx:
            return bool(
                await tx.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND backend_start >= $1 AND pid <> pg_backend_pid() "
                    "AND (query LIKE 'LISTEN %' OR query = 'SELECT 1')",
                    since,
                )
            )

    engine = JobEngine(other, queues={q: 1}, poll_interval=3600, ownership=None, retention=None)
    engine.register(Plain, handle)
    async with store.read() as tx:
        since = await tx.fetchval("SELECT clock_timestamp()")
    try:
        async with engine:
            await wait_until(listening, what="the engine to listen")
            await store.enqueue(Plain(n=1), queue=q)
            await asyncio.wait_for(ran.wait(), timeout=HANG_GUARD)
    finally:
        await other.close()
