"""SQLite's transactions: the connection each runs on (``Channel``), the BEGIN that
waits for the write lock in steps a cancellation can end, the COMMIT and ROLLBACK that
no cancellation interrupts, and the grouped transactions of the engine's claims and
finishes (several operations in one commit, each failing alone)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any, TypeVar, cast

import aiosqlite
import anyio

from .._errors import StoreError, StoreNotOpen
from .._log import get_logger
from .._shielded import to_the_end
from ._store import Store, Transaction, read_only_write

log = get_logger("fiefdom.storage.sqlite")

PLACEHOLDER = re.compile(r"\$(\d+)")
BUSY_TIMEOUT_MS = 30_000


def is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY (any extended form): another connection held the write lock for
    all of ``busy_timeout``."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_BUSY


# What SQLite says of a write on a query_only connection.
_READ_ONLY = "readonly database"


def _first_word(sql: str) -> str:
    words = sql.split(maxsplit=1)
    return words[0].upper() if words else "the statement"


def wrap(exc: sqlite3.Error) -> StoreError:
    if is_busy(exc):
        # Contention, not an outage: the database answered, so this is no
        # StoreUnavailable and the store stays healthy.
        return StoreError(
            f"SQLite database is locked: a transaction held the write lock longer than "
            f"busy_timeout ({BUSY_TIMEOUT_MS / 1000:g}s); keep write transactions short "
            f"({exc})"
        )
    return StoreError(f"SQLite: {exc}")


class SQLiteTransaction(Transaction):
    def __init__(
        self,
        store: Store,
        conn: aiosqlite.Connection,
        channel: Channel,
        *,
        begin: str | None = None,
    ) -> None:
        self.store = store
        self.channel = channel
        self.read_only = channel.read_only
        self._conn = conn
        self.wake: set[str] = set()
        # The BEGIN still to run before the first statement (a user transaction
        # takes SQLite's write lock only when it first touches the database).
        self.begin = begin
        # Whether a BEGIN was handed to the connection's thread: from then on the
        # way out must roll back, even if the await on it was cancelled.
        self.begun = False

    async def _begin(self) -> None:
        assert self.begin is not None
        begin, self.begin = self.begin, None
        self.begun = True
        await _begin(self.store, self._conn, begin, self.channel)

    async def execute(self, sql: str, *args: object) -> None:
        if self.begin is not None:
            await self._begin()
        try:
            await self._conn.execute(PLACEHOLDER.sub(r"?\1", sql), args)
        except sqlite3.Error as exc:
            raise self._error(exc, sql) from exc

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        if self.begin is not None:
            await self._begin()
        try:
            rows = await self._conn.execute_fetchall(PLACEHOLDER.sub(r"?\1", sql), args)
        except sqlite3.Error as exc:
            raise self._error(exc, sql) from exc
        return [tuple(r) for r in rows]

    def _error(self, exc: sqlite3.Error, sql: str) -> StoreError:
        if self.read_only and _READ_ONLY in str(exc):
            return read_only_write(_first_word(sql), f"SQLite: {exc}")
        return wrap(exc)

    async def raw(self, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
        """Run with SQLite's own ``?`` placeholders (the store's internal queries).
        The statement and the fetch of its rows are one call on the connection's
        thread (not three: execute, fetch, close)."""
        if self.begin is not None:
            await self._begin()
        try:
            return list(await self._conn.execute_fetchall(sql, args))
        except sqlite3.Error as exc:
            raise wrap(exc) from exc


# Transaction bookkeeping must survive any cancellation. aiosqlite runs statements
# in order on one thread per connection, and a statement handed to it runs to its
# end even when the await on it is cancelled: an anyio shield keeps anyio's
# cancellation out, but not a native ``task.cancel()`` (a server cancelling the
# request of a client that left). So: a BEGIN that may have been handed over is
# always followed by a ROLLBACK on the way out (queued behind it, so it runs
# after it), the end of a transaction runs in a task of its own that no
# cancellation reaches, and a BEGIN that still finds a transaction open (left by
# anything else) rolls it back and begins again.
#
# The one wait that must not hold a cancellation off is the wait for the write
# lock: another connection, maybe another process, may hold it for up to
# busy_timeout, and SQLite's own busy wait cannot be interrupted. A handler whose
# key was taken from its process is cancelled, and it must end before the key's
# next owner runs, not once the lock is free. So a BEGIN IMMEDIATE waits in short
# steps (``_LOCK_STEP_MS`` of SQLite's busy wait each), and between two steps it
# gives up if its caller was cancelled meanwhile: no transaction was begun.
NO_TRANSACTION = "no transaction is active"
_NESTED = "within a transaction"
_LOCK_STEP_MS = 50


class _Abandoned(Exception):
    """A BEGIN IMMEDIATE given up between two steps of its wait for the write lock,
    its caller cancelled: no transaction was begun."""


def _begin_on_thread(
    conn: sqlite3.Connection, begin: str, abandon: threading.Event, channel: Channel
) -> None:
    """On the connection's thread: run ``begin``; a BEGIN IMMEDIATE waits for the
    write lock for up to busy_timeout in all, in steps, until ``abandon`` is set."""
    if abandon.is_set():
        raise _Abandoned
    if begin != "BEGIN IMMEDIATE":  # a reader's BEGIN takes no lock
        begin_or_reopen(conn, begin)
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    conn.execute(f"PRAGMA busy_timeout = {_LOCK_STEP_MS}")
    try:
        waited = False
        while True:
            try:
                begin_or_reopen(conn, begin)
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
            if not waited:
                waited = True
                channel.lock_waits += 1
            if abandon.is_set():
                raise _Abandoned
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def begin_or_reopen(conn: sqlite3.Connection, begin: str) -> None:
    try:
        conn.execute(begin)
    except sqlite3.OperationalError as exc:
        if _NESTED not in str(exc):
            raise
        log.warning("found a transaction left open on a connection; rolling it back")
        conn.execute("ROLLBACK")
        conn.execute(begin)


async def _begin(store: Store, conn: aiosqlite.Connection, begin: str, channel: Channel) -> None:
    """Run ``begin`` on the connection's thread. A cancellation that arrives while
    it waits for the write lock ends the wait within a step, then is raised (a
    BEGIN that succeeded meanwhile is rolled back by the caller's way out)."""
    abandon = threading.Event()
    step = asyncio.ensure_future(
        conn._execute(  # type: ignore[no-untyped-call]
            _begin_on_thread, conn._conn, begin, abandon, channel
        )
    )
    cancelled: asyncio.CancelledError | None = None
    while not step.done():
        try:
            await asyncio.wait((step,))  # never cancels the step, never raises its error
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
            abandon.set()
    error = step.exception()
    if cancelled is not None and (error is None or isinstance(error, _Abandoned)):
        raise cancelled
    if isinstance(error, sqlite3.Error):
        if not is_busy(error):
            store._mark(False)
        raise wrap(error) from error
    if error is not None:
        raise error


async def settled(step: Awaitable[object]) -> None:
    """Run ``step`` to its end in a task no cancellation reaches; a natively
    cancelled caller still waits for it (so the connection's state is known), then
    gets its cancellation. Callers also hold an anyio shield, which keeps anyio's
    own cancellation out."""
    ended, cancelled = await to_the_end(step)
    ended.result()  # an error of the step itself comes first
    if cancelled is not None:
        raise cancelled


async def rollback(store: Store, conn: aiosqlite.Connection) -> None:
    try:
        await settled(conn.execute("ROLLBACK"))
    except sqlite3.Error as exc:
        if NO_TRANSACTION not in str(exc):  # the BEGIN itself failed: nothing to undo
            log.exception("rollback failed", store=store.url)


class Channel:
    """One aiosqlite connection and the lock that runs one transaction at a time on
    it (a SQLite connection has one transaction at a time)."""

    __slots__ = (
        "commits",
        "conn",
        "lock",
        "lock_waits",
        "name",
        "queued",
        "read_only",
        "runner",
    )

    def __init__(self, name: str, *, read_only: bool = False) -> None:
        self.name = name
        self.read_only = read_only
        self.conn: aiosqlite.Connection | None = None
        self.lock = anyio.Lock()
        # Grouped operations (``SQLiteStore._grouped``) waiting for the connection,
        # and the task running them; transactions they committed (a statistic).
        self.queued: list[Op] = []
        self.runner: asyncio.Task[None] | None = None
        self.commits = 0
        # BEGIN IMMEDIATEs that found the write lock held and waited for it.
        self.lock_waits = 0


# -- grouped transactions ---------------------------------------------------------------
#
# The engine's claims and finishes are small transactions, and each commit is a
# WAL write and (synchronous=full) an fsync. Those that wait for the engine's
# connection together run in one transaction, in one call on the connection's
# thread: BEGIN IMMEDIATE, each operation's statements, COMMIT. So a claim and a
# finish cost one commit and one thread hop instead of two commits and six hops.
# The guarantees of a transaction of their own are kept:
#
# - a result is handed back only once the transaction holding it has committed
#   (the thread returns after COMMIT);
# - an error in one operation fails only that one: the group is rolled back and
#   each operation runs again alone, in a transaction of its own (a BEGIN that
#   fails is no operation's doing and fails them all);
# - once handed to the thread, an operation runs to its end whatever happens to
#   its caller; a caller cancelled after that waits for it, and its ``undo``
#   gives back what it took (a claim's jobs), rather than leaving them running
#   for nobody until their leases expire.

T = TypeVar("T")

# What an operation runs on the connection's thread, inside the transaction, given
# the time read once the write lock is held (so that a lease is never counted from
# before a wait for other writers).
Work = Callable[[sqlite3.Connection, float], T]


class Op:
    __slots__ = ("future", "taken", "work")

    def __init__(self, work: Work[object], future: asyncio.Future[object]) -> None:
        self.work = work
        self.future = future
        # Handed to the connection's thread: it will run, come what may.
        self.taken = False


class BeginFailed(Exception):
    """The BEGIN of a group failed: no operation of it ran."""

    def __init__(self, error: sqlite3.Error) -> None:
        super().__init__(str(error))
        self.error = error


def _begin_sync(conn: sqlite3.Connection) -> None:
    try:
        begin_or_reopen(conn, "BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise BeginFailed(exc) from exc


def transaction_sync(
    conn: sqlite3.Connection, works: Sequence[Work[object]], channel: Channel
) -> list[object]:
    """One transaction running ``works`` in order; rolled back on any error."""
    _begin_sync(conn)
    try:
        now = time.time()
        results = [work(conn, now) for work in works]
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            # Some errors (a full disk, an I/O error) end the transaction themselves.
            if NO_TRANSACTION not in str(exc):
                log.exception("rollback failed")
        raise
    channel.commits += 1
    return results


def run_group(
    aconn: aiosqlite.Connection, works: Sequence[Work[object]], channel: Channel
) -> list[tuple[bool, object]]:
    """On the connection's thread: ``works`` in one transaction, or, if one of them
    fails, each again in one of its own. Returns (ok, result or error) per work."""
    conn = aconn._conn
    if len(works) > 1:
        try:
            return [(True, r) for r in transaction_sync(conn, works, channel)]
        except BeginFailed as exc:
            return [(False, exc)] * len(works)
        except Exception:
            pass  # rolled back: each runs again alone (below)
    results: list[tuple[bool, object]] = []
    for work in works:
        try:
            results.append((True, transaction_sync(conn, [work], channel)[0]))
        except Exception as exc:
            results.append((False, exc))
    return results


async def grouped(
    store: Store,
    channel: Channel,
    work: Work[T],
    undo: Callable[[T], Awaitable[object]] | None = None,
) -> T:
    """Run ``work`` in a write transaction on the engine's connection, together
    with the other grouped operations waiting for it (see "grouped
    transactions" above). ``undo`` takes back the result of a ``work`` whose
    caller was cancelled after it was handed to the connection's thread."""
    loop = asyncio.get_running_loop()
    op = Op(cast("Work[object]", work), loop.create_future())
    channel.queued.append(op)
    if channel.runner is None:
        channel.runner = loop.create_task(_run_queued(store, channel))
    try:
        return cast(T, await asyncio.shield(op.future))
    except asyncio.CancelledError:
        if not op.taken:
            channel.queued.remove(op)
            raise
        # Handed over: it runs to its end. Wait for it (held from any further
        # cancellation), give back what it took, then be cancelled.
        with anyio.CancelScope(shield=True):
            while not op.future.done():
                with suppress(asyncio.CancelledError):
                    await asyncio.shield(op.future)
            if undo is not None and op.future.exception() is None:
                try:
                    await settled(undo(cast(T, op.future.result())))
                except asyncio.CancelledError:
                    pass
                except Exception:
                    log.exception("could not undo an operation whose caller was cancelled")
        raise


async def _run_queued(store: Store, channel: Channel) -> None:
    """Run the queued grouped operations, as many at a time as are waiting, until
    none is left."""
    try:
        while channel.queued:
            async with channel.lock:
                ops, channel.queued = channel.queued, []
                if not ops:  # their callers were cancelled while they waited
                    continue
                for op in ops:
                    op.taken = True
                conn = channel.conn
                results: list[tuple[bool, object]]
                if conn is None:
                    closed = StoreNotOpen("the store was closed")
                    results = [(False, closed)] * len(ops)
                else:
                    # Nothing cancels this task but the end of its loop; even
                    # then the results are handed out once the thread is done.
                    hop, cancelled = await to_the_end(
                        conn._execute(  # type: ignore[no-untyped-call]
                            run_group, conn, [op.work for op in ops], channel
                        )
                    )
                    error = hop.exception()
                    if isinstance(error, ValueError):  # aiosqlite's "Connection closed"
                        closed = StoreNotOpen(f"the store was closed ({error})")
                        closed.__cause__ = error
                        error = closed
                    results = hop.result() if error is None else [(False, error)] * len(ops)
                    if cancelled is not None:
                        _hand_out(store, ops, results)
                        raise cancelled
            _hand_out(store, ops, results)
    finally:
        channel.runner = None


def _hand_out(store: Store, ops: Sequence[Op], results: Sequence[tuple[bool, object]]) -> None:
    healthy: bool | None = None
    for op, (ok, value) in zip(ops, results, strict=True):
        if op.future.done():
            continue
        if ok:
            healthy = True
            op.future.set_result(value)
            continue
        if isinstance(value, BeginFailed):
            if not is_busy(value.error):
                healthy = False
            value = value.error
        if isinstance(value, sqlite3.Error):
            wrapped = wrap(value)
            wrapped.__cause__ = value
            value = wrapped
        assert isinstance(value, BaseException)
        op.future.set_exception(value)
    if healthy is not None:
        store._mark(healthy)
