"""A transaction waiting for SQLite's write lock can be cancelled (GUARANTEES 000/1a,
"stale owner"): while another process holds the lock, a cancelled writer ends at
once, having begun nothing, instead of when the lock is free (up to busy_timeout).

Why it matters: a handler whose key was taken from its process is cancelled, and it
must have ended before the key's next owner runs. SQLite's own busy wait cannot be
interrupted, so a BEGIN IMMEDIATE waits in short steps and gives up between two of
them once cancelled. A writer that is not cancelled still waits for the lock as
before, and commits once it is free.

Each test holds the lock from a separate process and releases it only after the
cancelled writer has ended: with a BEGIN that cannot be given up, the writer would
wait for the lock and the hang guard would fail the test."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import Process
from storage_helpers import wait_until

from fiefdom.storage import Store
from fiefdom.storage._sqlite import SQLiteStore

pytestmark = pytest.mark.dialect("sqlite")

# Only a hang guard: with the wait given up, each test ends in well under a second.
GUARD = 20.0

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
print("released", flush=True)
"""


async def said(process: Process) -> str:
    """The next line the process printed."""
    assert process.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        line += await process.stdout.receive(1)
    return line.decode().strip()


class Holder:
    """Another process holding the database's write lock."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.released = False

    async def release(self) -> None:
        if not self.released:
            self.released = True
            assert self.process.stdin is not None
            await self.process.stdin.send(b"\n")
            assert await said(self.process) == "released"


@asynccontextmanager
async def lock_held(store: SQLiteStore) -> AsyncIterator[Holder]:
    """Another process holds the database's write lock until the block ends (or its
    ``release``)."""
    async with await anyio.open_process([sys.executable, "-c", HOLDER, store.path]) as process:
        assert await said(process) == "held"
        holder = Holder(process)
        try:
            yield holder
        finally:
            await holder.release()
        assert await process.wait() == 0


async def began_waiting(store: SQLiteStore, waits: int) -> None:
    """Until a writer of ``store`` has found the write lock held (more than ``waits``
    BEGINs have waited for it)."""
    await wait_until(lambda: store._user.lock_waits > waits, what="a writer to wait for the lock")


async def writes(store: Store) -> int:
    async with store.read() as tx:
        return int(await tx.fetchval("SELECT count(*) FROM lock_wait_rows"))


async def prepared(store: Store) -> SQLiteStore:
    assert isinstance(store, SQLiteStore)
    async with store.transaction() as tx:
        await tx.execute("CREATE TABLE lock_wait_rows (n integer NOT NULL)")
    return store


async def write(store: Store, n: int) -> None:
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO lock_wait_rows (n) VALUES ($1)", n)


async def test_a_writer_cancelled_while_another_process_holds_the_lock_ends_at_once(
    store: Store,
) -> None:
    """Cancelled through its anyio scope while it waits for the lock: it ends before the
    lock is released, wrote nothing, and the store's next writer commits."""
    sqlite = await prepared(store)
    waits = sqlite._user.lock_waits
    ended = anyio.Event()
    with anyio.fail_after(GUARD):
        async with lock_held(sqlite), anyio.create_task_group() as group:
            scope = anyio.CancelScope()

            async def writer() -> None:
                with scope:
                    await write(sqlite, 1)
                ended.set()

            group.start_soon(writer)
            await began_waiting(sqlite, waits)
            scope.cancel()
            await ended.wait()
            assert scope.cancelled_caught
    assert await writes(sqlite) == 0
    await write(sqlite, 2)
    assert await writes(sqlite) == 1
    async with sqlite.transaction() as tx:
        # The wait in steps leaves the connection's own timeout as it was.
        assert await tx.fetchval("PRAGMA busy_timeout") == 30_000


async def test_a_writer_cancelled_natively_while_waiting_ends_at_once(store: Store) -> None:
    """task.cancel() (a server cancelling the request of a client that left) ends
    the wait the same way."""
    sqlite = await prepared(store)
    waits = sqlite._user.lock_waits
    with anyio.fail_after(GUARD):
        async with lock_held(sqlite):
            task = asyncio.ensure_future(write(sqlite, 1))
            await began_waiting(sqlite, waits)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert await writes(sqlite) == 0
    await write(sqlite, 2)
    assert await writes(sqlite) == 1


async def test_a_writer_left_alone_waits_for_the_lock_and_commits(store: Store) -> None:
    """Not cancelled, a writer goes on waiting step after step, and commits once the
    other process releases the lock."""
    sqlite = await prepared(store)
    waits = sqlite._user.lock_waits
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as group, lock_held(sqlite):
            group.start_soon(write, sqlite, 1)
            await began_waiting(sqlite, waits)
            # Still waiting: nothing could commit while the other process holds
            # the lock.
            assert await writes(sqlite) == 0
    assert await writes(sqlite) == 1


async def write_and_hold(store: Store, n: int) -> None:
    """Write, then hold the transaction open until cancelled: it never reaches its
    COMMIT by itself."""
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO lock_wait_rows (n) VALUES ($1)", n)
        await anyio.Event().wait()


async def test_a_cancellation_racing_the_lock_s_release_leaves_no_transaction_open(
    store: Store,
) -> None:
    """Cancelled as the lock is released: whether its BEGIN won the lock or was given
    up, the writer ends cancelled with nothing written, and the connection is left
    without a transaction (the next writer commits).

    The writer holds its transaction open until cancelled. A writer that committed
    as soon as it had the lock could finish its COMMIT before the cancellation
    arrived (a COMMIT handed to SQLite is not undone: the caller is cancelled after
    it), and nothing would be left to race."""
    sqlite = await prepared(store)
    for n in range(10):
        waits = sqlite._user.lock_waits
        with anyio.fail_after(GUARD):
            async with lock_held(sqlite) as holder:
                task = asyncio.ensure_future(write_and_hold(sqlite, n))
                await began_waiting(sqlite, waits)
                # Released and cancelled at once: the BEGIN may or may not take the lock
                # before it learns of the cancellation.
                await holder.release()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
    assert await writes(sqlite) == 0
    await write(sqlite, 99)
    assert await writes(sqlite) == 1
