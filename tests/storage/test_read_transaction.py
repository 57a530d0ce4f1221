"""``store.read()``: an application reads its own tables in a read-only transaction,
on both dialects. It sees what is committed as one snapshot, waits for no writer and
holds none up, and a write in it (a statement, or ``enqueue(tx=...)``) fails with an
error saying to use ``store.transaction()``."""

from __future__ import annotations

import anyio
import pytest

import fiefdom
from fiefdom.storage import Job, JobOptions, Store


class Note(Job):
    options = JobOptions(kind="note")
    text: str


async def make_notes(store: Store, *bodies: str) -> None:
    async with store.transaction() as tx:
        await tx.execute("CREATE TABLE notes (id integer PRIMARY KEY, body text NOT NULL)")
        for i, body in enumerate(bodies, 1):
            await tx.execute("INSERT INTO notes (id, body) VALUES ($1, $2)", i, body)


async def test_a_read_sees_the_committed_rows(store: Store) -> None:
    """fetch, fetchval and execute (a SELECT) work as in transaction(), with the same
    placeholders; the transaction says it is read-only."""
    await make_notes(store, "one", "two")
    async with store.read() as tx:
        assert tx.read_only
        assert tx.store is store
        assert await tx.fetch("SELECT id, body FROM notes ORDER BY id") == [(1, "one"), (2, "two")]
        assert await tx.fetchval("SELECT body FROM notes WHERE id = $1", 2) == "two"
        await tx.execute("SELECT count(*) FROM notes")
    async with store.transaction() as tx:
        assert not tx.read_only


async def test_a_write_in_a_read_fails_clearly(store: Store) -> None:
    """An INSERT in store.read() raises StoreError naming the statement and what to use
    instead; nothing is written, and the store reads and writes on afterwards."""
    await make_notes(store, "one")
    with pytest.raises(fiefdom.StoreError) as info:
        async with store.read() as tx:
            await tx.execute("INSERT INTO notes (id, body) VALUES ($1, $2)", 2, "two")
    message = str(info.value)
    assert message.startswith(
        "INSERT cannot run in a read-only transaction (store.read()): "
        "write inside store.transaction() instead ("
    )
    async with store.read() as tx:
        assert await tx.fetchval("SELECT count(*) FROM notes") == 1
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO notes (id, body) VALUES ($1, $2)", 2, "two")
    assert await store.ping()


async def test_enqueue_in_a_read_is_refused(store: Store) -> None:
    """enqueue(tx=...) with a read-only transaction is refused before it writes."""
    async with store.read() as tx:
        with pytest.raises(
            fiefdom.StoreError, match=r"^enqueue\(tx=\.\.\.\) cannot run in a read-only transaction"
        ):
            await store.enqueue(Note(text="no"), tx=tx)
    assert await store.list_jobs() == []


async def test_a_read_is_one_snapshot_and_holds_no_writer_up(store: Store) -> None:
    """A write committed while a read is open (so the read takes no write lock) is not
    seen by that read, and is seen by the next one."""
    await make_notes(store, "one")
    with anyio.fail_after(30):  # a hang guard: nothing here may wait for the other
        async with store.read() as tx:
            assert await tx.fetchval("SELECT count(*) FROM notes") == 1
            async with store.transaction() as writer:
                await writer.execute("INSERT INTO notes (id, body) VALUES ($1, $2)", 2, "two")
            assert await tx.fetchval("SELECT count(*) FROM notes") == 1
        async with store.read() as tx:
            assert await tx.fetchval("SELECT count(*) FROM notes") == 2


async def test_a_read_waits_for_no_writer(store: Store) -> None:
    """While a transaction that has written is open (holding SQLite's write lock), a
    read returns at once with the committed state, and the store answers its probes."""
    await make_notes(store, "one")
    with anyio.fail_after(30):
        async with store.transaction() as writer:
            await writer.execute("INSERT INTO notes (id, body) VALUES ($1, $2)", 2, "two")
            async with store.read() as tx:
                assert await tx.fetch("SELECT body FROM notes") == [("one",)]
            assert await store.ping()


async def test_an_open_read_does_not_hold_up_the_stores_own_reads(store: Store) -> None:
    """A read kept open by another task does not make the store's inspection (ping,
    listing) wait: applications' reads run apart from the store's own."""
    await make_notes(store, "one")
    opened, release = anyio.Event(), anyio.Event()

    async def reader() -> None:
        async with store.read() as tx:
            await tx.fetch("SELECT body FROM notes")
            opened.set()
            await release.wait()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await opened.wait()
            try:
                assert await store.ping()
                assert await store.list_jobs() == []
            finally:
                release.set()
