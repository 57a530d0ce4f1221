"""The embedded SQLite backend (aiosqlite): WAL, an explicit ``synchronous``
setting, every write in a ``BEGIN IMMEDIATE`` transaction so that concurrent
writers queue on the database lock instead of failing half way through."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Literal
from urllib.parse import parse_qs, urlsplit

import aiosqlite
import anyio
import msgspec

from .._errors import StoreError, StoreUnavailable, UniqueConflict
from .._log import get_logger
from . import _migrations, _sqlite_tx
from ._jobs import STATE_BITS, Enqueued, JobInfo, JobState, QueueCount
from ._listing import SQLITE, count_listed_query, list_jobs_query, retry_candidates_query
from ._rows import NewJob, available_queues
from ._sql import (
    CANCELLED_STATE_SQL,
    SUPERSEDED_MESSAGE,
    check_bigint,
    job_info,
    state_bit_sql,
    unique_key_after,
)
from ._sqlite_tx import (
    Channel,
    SQLiteTransaction,
    T,
    Work,
    grouped,
    rollback,
    settled,
    wrap,
)
from ._store import (
    BULK_LIMIT,
    COUNT_CAP,
    FINAL_STATES,
    Store,
    Transaction,
    check_bulk,
)

log = get_logger("fiefdom.storage.sqlite")

_CHUNK = 500  # rows per INSERT: 15 parameters each stays under SQLite's 32766


# A job that re-enters a state its uniqueness counts takes its key back (one job
# per key, and only while no other job holds it); one that re-enters a waiting
# state while a duplicate holds the key is superseded by it. Parameters: the ids
# that just changed state (JSON array), now.
_RESTORE_KEYS_SQL = (
    "UPDATE fiefdom_jobs SET unique_key = unique_digest WHERE id IN ("
    "SELECT min(j.id) FROM fiefdom_jobs AS j WHERE j.id IN (SELECT value FROM json_each(?1)) "
    "AND j.unique_key IS NULL AND j.unique_digest IS NOT NULL "
    f"AND j.unique_states & {state_bit_sql('j.state')} "
    "AND NOT EXISTS (SELECT 1 FROM fiefdom_jobs AS h WHERE h.unique_key = j.unique_digest) "
    "GROUP BY j.unique_digest)"
)
_SUPERSEDE_SQL = (
    "UPDATE fiefdom_jobs AS j SET state = 'cancelled', finished_at = ?2, "
    "cancel_requested = 0, lease_expires_at = NULL, worker = NULL, "
    "errors = json_insert(j.errors, '$[#]', json_object('attempt', j.attempt, 'at', ?2, "
    "'type', 'fiefdom.Superseded', 'message', "
    + " || h.id || ".join(f"'{part}'" for part in SUPERSEDED_MESSAGE.split("{holder}"))
    + ", 'traceback', '')) "
    "FROM fiefdom_jobs AS h WHERE j.id IN (SELECT value FROM json_each(?1)) "
    "AND j.unique_key IS NULL AND j.unique_digest IS NOT NULL "
    "AND j.state IN ('available', 'scheduled', 'retryable') "
    f"AND j.unique_states & {state_bit_sql('j.state')} "
    "AND h.unique_key = j.unique_digest AND h.id <> j.id "
    "RETURNING id"
)


# The columns an enqueue writes; a job of a domain (or an ordered kind) also its
# domain, partition and ordered flag.
_INSERT_COLUMNS = (
    "kind, queue, state, priority, args, domain_key, max_attempts, unique_key, "
    "unique_states, created_at, run_at, unique_digest"
)
_INSERT_COLUMNS_KEYED = _INSERT_COLUMNS + ", domain, partition, ordered"
_ROW = "(" + ",".join("?" * 12) + ")"
_ROW_KEYED = "(" + ",".join("?" * 15) + ")"

_JOB_COLUMNS = (
    "id, kind, queue, state, priority, args, domain_key, attempt, max_attempts, errors, "
    "worker, cancel_requested, created_at, run_at, attempted_at, finished_at, snoozes"
)


async def restore_keys(tx: SQLiteTransaction, ids: Sequence[int], now: float) -> set[int]:
    """Give jobs that just re-entered a counted state their unique key back, or
    supersede them by the duplicate holding it (``Unique``'s docstring). The
    write lock is held, so no enqueue can take a key between the two steps."""
    if not ids:
        return set()
    batch = msgspec.json.encode(list(ids)).decode()
    await tx.raw(_RESTORE_KEYS_SQL, (batch,))
    superseded = await tx.raw(_SUPERSEDE_SQL, (batch, now))
    if superseded:
        log.info("superseded jobs by waiting duplicates", ids=[r[0] for r in superseded])
    return {r[0] for r in superseded}


def restore_keys_sync(conn: sqlite3.Connection, ids: Sequence[int], now: float) -> set[int]:
    """``restore_keys`` for a grouped operation, on the connection's thread; returns
    the ids superseded (the caller logs them, on the event loop)."""
    if not ids:
        return set()
    batch = msgspec.json.encode(list(ids)).decode()
    conn.execute(_RESTORE_KEYS_SQL, (batch,))
    return {r[0] for r in conn.execute(_SUPERSEDE_SQL, (batch, now)).fetchall()}


class SQLiteStore(Store):
    """``sqlite:///path``: four connections per store, each running one transaction
    at a time. Applications' ``transaction()`` blocks have their own; the engine's
    writes (claims, heartbeats, outcomes, rescue) and enqueues outside a
    transaction have theirs; inspection (``get_job``, ``list_jobs``, ``count_jobs``,
    ``ping``) reads on a third, read-only one; applications' ``read()`` blocks on a
    fourth, read-only too. So a user transaction kept open,
    even one that awaits a job, does not queue the engine behind it in this process
    until its first statement (which takes the write lock, below); from then on the
    engine's writes wait for it like any other writer's. Readers never wait: in
    WAL mode they never wait for a writer.

    Writers still take turns on SQLite's one write lock, across connections and
    processes (``busy_timeout``). A user transaction takes it at its first
    statement (``BEGIN IMMEDIATE``, so it cannot fail half way on a lock) and holds
    it until it ends: keep transactions that write shorter than the job lease, or
    heartbeats wait and another engine may rescue a job that is still running."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    notifies_processes = False

    def __init__(
        self,
        url: str,
        *,
        synchronous: Literal["off", "normal", "full", "extra"] = "full",
        tune_gc: bool = True,
    ) -> None:
        super().__init__(url, tune_gc=tune_gc)
        parts = urlsplit(url)
        # sqlite:///rel.db -> "rel.db"; sqlite:////abs.db -> "/abs.db"
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc or not path:
            raise StoreError(
                f"bad SQLite URL {url!r}: use sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        query = parse_qs(parts.query)
        sync = query.get("synchronous", [synchronous])[0].lower()
        if sync not in ("off", "normal", "full", "extra"):
            raise StoreError(
                f"bad SQLite URL {url!r}: synchronous must be off, normal, full or extra"
            )
        self.path = path
        self.synchronous = sync
        # See the class docstring: the engine's, applications', and readers'.
        self._engine = Channel("engine")
        self._user = Channel("user")
        self._reader = Channel("reader", read_only=True)
        # Applications' read() blocks: read-only too, and apart from the store's own
        # reads, so that one kept open never holds up a readiness probe.
        self._app_reader = Channel("app-reader", read_only=True)

    # -- lifecycle -------------------------------------------------------------------

    async def _connect(self) -> None:
        channels = (self._engine, self._user, self._reader, self._app_reader)
        try:
            # The engine's first: it switches a new file to WAL before the others open.
            for channel in channels:
                channel.conn = await self._open_connection(
                    read_only=channel.read_only, engine=channel is self._engine
                )
        except BaseException:
            await self._disconnect()
            raise

    async def _open_connection(
        self, *, read_only: bool, engine: bool = False
    ) -> aiosqlite.Connection:
        try:
            conn = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path}: {exc}") from exc
        try:
            # The same settings on every connection: synchronous is per connection,
            # and each must wait for the write lock rather than fail at once.
            await conn.execute(f"PRAGMA busy_timeout = {_sqlite_tx.BUSY_TIMEOUT_MS}")
            async with conn.execute("PRAGMA journal_mode = WAL") as cur:
                row = await cur.fetchone()
            if row is None or str(row[0]).lower() != "wal":
                raise StoreError(f"SQLite database {self.path} refused WAL mode (got {row})")
            await conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            await conn.execute("PRAGMA foreign_keys = ON")
            if read_only:
                # Inspection must never take the write lock by mistake.
                await conn.execute("PRAGMA query_only = ON")
            if engine:
                # A claim or finish of 100 jobs changes some 20 pages (80 KiB): its
                # temporary storage (the statement journal that lets one statement be
                # undone alone spills to a file past 64 KiB) kept in memory, a claim
                # takes a fifth less time. Nothing temporary is part of what a commit
                # makes durable.
                await conn.execute("PRAGMA temp_store = MEMORY")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        return conn

    async def _disconnect(self) -> None:
        for channel in (self._app_reader, self._reader, self._user, self._engine):
            if channel.conn is not None:
                conn, channel.conn = channel.conn, None
                with anyio.CancelScope(shield=True):
                    await conn.close()

    @asynccontextmanager
    async def _tx(
        self, channel: Channel | None = None, *, write: bool = True, lazy: bool = False
    ) -> AsyncIterator[SQLiteTransaction]:
        """A transaction on ``channel`` (the engine's by default). ``lazy`` defers
        the BEGIN to the first statement."""
        self._check_open()
        channel = self._engine if channel is None else channel
        async with channel.lock:
            conn = channel.conn
            assert conn is not None
            begin = "BEGIN IMMEDIATE" if write else "BEGIN"
            tx = SQLiteTransaction(self, conn, channel, begin=begin)
            try:
                if not lazy:
                    await tx._begin()
                yield tx
            except BaseException:
                if tx.begun:
                    with anyio.CancelScope(shield=True):
                        await rollback(self, conn)
                raise
            if tx.begun:
                try:
                    with anyio.CancelScope(shield=True):
                        await settled(conn.execute("COMMIT"))
                except sqlite3.Error as exc:
                    with anyio.CancelScope(shield=True):
                        await rollback(self, conn)
                    raise wrap(exc) from exc
                # A native cancellation raised from settled comes after the COMMIT
                # ended: the transaction committed, and the caller is gone.
            self._mark(True)
        if tx.wake:
            self._wake_local(sorted(tx.wake))

    async def _grouped(
        self,
        work: Work[T],
        undo: Callable[[T], Awaitable[object]] | None = None,
    ) -> T:
        """Run ``work`` in a write transaction on the engine's connection, together
        with the other grouped operations waiting for it (``grouped``)."""
        self._check_open()
        return await grouped(self, self._engine, work, undo)

    def _read(self) -> AbstractAsyncContextManager[SQLiteTransaction]:
        """A read transaction on the read-only connection: a snapshot (WAL), which
        waits for no writer and no other connection of this store."""
        return self._tx(self._reader, write=False)

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return self._tx(self._user, lazy=True)

    def read(self) -> AbstractAsyncContextManager[Transaction]:
        return self._tx(self._app_reader, write=False)

    # -- migrations ------------------------------------------------------------------

    async def _version_in(self, tx: SQLiteTransaction) -> int:
        rows = await tx.raw(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'fiefdom_schema'"
        )
        if not rows:
            return 0
        rows = await tx.raw("SELECT coalesce(max(version), 0) FROM fiefdom_schema")
        return int(rows[0][0])

    async def schema_version(self) -> int:
        async with self._read() as tx:
            return await self._version_in(tx)

    async def migrate(self) -> int:
        async with self._tx() as tx:
            await tx.raw(
                "CREATE TABLE IF NOT EXISTS fiefdom_schema "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            current = await self._version_in(tx)
            migrations = _migrations.load("sqlite")
            for migration in migrations[current:]:
                for statement in _split(migration.sql):
                    await tx.raw(statement)
                await tx.raw(
                    "INSERT INTO fiefdom_schema (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
                log.info("migrated", path=self.path, version=migration.version)
            return max(current, len(migrations))

    # -- enqueueing ------------------------------------------------------------------

    async def _insert_rows(
        self, rows: Sequence[NewJob], *, tx: Transaction | None = None
    ) -> list[Enqueued]:
        self._check_tx(tx)
        if not rows:
            return []
        if tx is None:
            async with self._tx() as own:
                return await self._insert(own, rows)
        assert isinstance(tx, SQLiteTransaction)
        return await self._insert(tx, rows)

    async def _insert(self, tx: SQLiteTransaction, rows: Sequence[NewJob]) -> list[Enqueued]:
        now = time.time()
        inserted: list[tuple[int, bytes | None]] = []
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            params: list[object] = []
            # A chunk without a keyed or ordered job leaves domain, partition and
            # ordered to their defaults (NULL, NULL, 0): three parameters fewer per
            # row to bind.
            keyed = any(r.domain is not None or r.partition is not None or r.ordered for r in chunk)
            for r in chunk:
                params += (
                    r.kind,
                    r.queue,
                    r.state.value,
                    r.priority,
                    r.args.decode(),
                    r.key,
                    r.max_attempts,
                    r.unique_key,
                    r.unique_states,
                    now,
                    now if r.run_at is None else r.run_at,
                    r.unique_digest,
                )
                if keyed:
                    params += (r.domain, r.partition, 1 if r.ordered else 0)
            columns, row_sql = (
                (_INSERT_COLUMNS_KEYED, _ROW_KEYED) if keyed else (_INSERT_COLUMNS, _ROW)
            )
            got = await tx.raw(
                f"INSERT INTO fiefdom_jobs ({columns}) VALUES "
                + ",".join([row_sql] * len(chunk))
                + " ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING "
                "RETURNING id, unique_key",
                params,
            )
            inserted += [(r[0], r[1]) for r in got]
        existing: dict[bytes, int] = {}
        if len(inserted) < len(rows):
            taken = {key for _, key in inserted if key is not None}
            wanted = list({r.unique_key for r in rows if r.unique_key is not None} - taken)
            for start in range(0, len(wanted), _CHUNK):
                part = wanted[start : start + _CHUNK]
                got = await tx.raw(
                    "SELECT unique_key, id FROM fiefdom_jobs WHERE unique_key IN ("
                    + ",".join("?" * len(part))
                    + ")",
                    part,
                )
                existing.update((r[0], r[1]) for r in got)
        tx.wake.update(available_queues(rows))
        return self._match_inserted(rows, inserted, existing)

    # -- the engine's side -----------------------------------------------------------

    # -- administration --------------------------------------------------------------

    async def get_job(self, job_id: int) -> JobInfo | None:
        check_bigint(job_id=job_id)
        async with self._read() as tx:
            rows = await tx.raw(f"SELECT {_JOB_COLUMNS} FROM fiefdom_jobs WHERE id = ?", (job_id,))
        return job_info(rows[0]) if rows else None

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        kind: str | None = None,
        after_id: int = 0,
        limit: int = 100,
        key: str | None = None,
        since: datetime | None = None,
        newest_first: bool = False,
    ) -> list[JobInfo]:
        sql, args = list_jobs_query(
            _JOB_COLUMNS,
            queue=queue,
            state=state,
            kind=kind,
            after_id=after_id,
            limit=limit,
            key=key,
            since=None if since is None else since.timestamp(),
            newest_first=newest_first,
            dialect=SQLITE,
        )
        async with self._read() as tx:
            rows = await tx.raw(sql, args)
        return [job_info(r) for r in rows]

    async def count_listed(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        kind: str | None = None,
        key: str | None = None,
        since: datetime | None = None,
        cap: int = COUNT_CAP,
    ) -> int:
        sql, args = count_listed_query(
            queue=queue,
            state=state,
            kind=kind,
            key=key,
            since=None if since is None else since.timestamp(),
            cap=cap,
            dialect=SQLITE,
        )
        async with self._read() as tx:
            rows = await tx.raw(sql, args)
        return int(rows[0][0])

    async def retry_jobs(
        self,
        *,
        state: JobState,
        queue: str | None = None,
        kind: str | None = None,
        limit: int = BULK_LIMIT,
    ) -> tuple[int, int]:
        check_bulk(states=[state], limit=limit)
        bit = STATE_BITS[JobState.AVAILABLE]
        sql, args = retry_candidates_query(
            state=state,
            queue=queue,
            kind=kind,
            limit=limit,
            dialect=SQLITE,
        )
        retried = skipped = 0
        async with self._tx() as tx:
            now = time.time()
            for (job_id,) in await tx.raw(sql, args):
                # The write lock is held throughout: no enqueue takes a key meanwhile.
                holder = await tx.raw(
                    "SELECT 1 FROM fiefdom_jobs AS j JOIN fiefdom_jobs AS h "
                    "ON h.unique_key = j.unique_digest AND h.id <> j.id "
                    f"WHERE j.id = ? AND j.unique_states & {bit}",
                    (job_id,),
                )
                if holder:
                    skipped += 1
                    continue
                rows = await tx.raw(
                    "UPDATE fiefdom_jobs SET state = 'available', run_at = ?, "
                    "finished_at = NULL, max_attempts = max(max_attempts, attempt + 1), "
                    "snoozes = 0, cancel_requested = 0, "
                    f"{unique_key_after(bit, keep='unique_digest')} "
                    "WHERE id = ? RETURNING queue",
                    (now, job_id),
                )
                tx.wake.update(r[0] for r in rows)
                retried += len(rows)
        return retried, skipped

    async def prune_jobs(
        self,
        *,
        older_than: float,
        states: Sequence[JobState] = FINAL_STATES,
        queue: str | None = None,
        kind: str | None = None,
        limit: int = BULK_LIMIT,
    ) -> int:
        check_bulk(states=states, older_than=older_than, limit=limit)
        check_bigint(limit=limit)
        if not states:
            return 0
        args: list[object] = [time.time() - older_than]
        where = [
            "state IN (" + ", ".join(f"'{JobState(s).value}'" for s in states) + ")",
            "finished_at < ?1",
        ]
        for column, value in (("queue", queue), ("kind", kind)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ?{len(args)}")
        args.append(limit)
        async with self._tx() as tx:
            rows = await tx.raw(
                "DELETE FROM fiefdom_jobs WHERE id IN (SELECT id FROM fiefdom_jobs WHERE "
                f"{' AND '.join(where)} LIMIT ?{len(args)}) RETURNING id",
                args,
            )
        return len(rows)

    async def count_jobs(self) -> list[QueueCount]:
        async with self._read() as tx:
            rows = await tx.raw(
                "SELECT queue, state, count(*) FROM fiefdom_jobs GROUP BY queue, state "
                "ORDER BY queue, state"
            )
        return [QueueCount(queue=r[0], state=JobState(r[1]), count=r[2]) for r in rows]

    async def retry_job(self, job_id: int) -> bool:
        check_bigint(job_id=job_id)
        bit = STATE_BITS[JobState.AVAILABLE]
        async with self._tx() as tx:
            # The write lock is held: no enqueue can take the key between the
            # check and the update.
            holder = await tx.raw(
                "SELECT h.id FROM fiefdom_jobs AS j JOIN fiefdom_jobs AS h "
                "ON h.unique_key = j.unique_digest AND h.id <> j.id "
                f"WHERE j.id = ? AND j.unique_states & {bit} "
                "AND j.state IN ('discarded', 'cancelled', 'completed')",
                (job_id,),
            )
            if holder:
                raise UniqueConflict(job_id, holder[0][0])
            rows = await tx.raw(
                "UPDATE fiefdom_jobs SET state = 'available', run_at = ?, finished_at = NULL, "
                "max_attempts = max(max_attempts, attempt + 1), snoozes = 0, "
                "cancel_requested = 0, "
                f"{unique_key_after(bit, keep='unique_digest')} "
                "WHERE id = ? AND state IN ('discarded', 'cancelled', 'completed') "
                "RETURNING queue",
                (time.time(), job_id),
            )
            tx.wake.update(r[0] for r in rows)
        return bool(rows)

    async def _set_paused(self, queue: str, paused: bool) -> None:
        async with self._tx() as tx:
            await tx.raw(
                "INSERT INTO fiefdom_queues (name, paused, updated_at) VALUES (?1, ?2, ?3) "
                "ON CONFLICT (name) DO UPDATE SET paused = ?2, updated_at = ?3",
                (queue, 1 if paused else 0, time.time()),
            )

    async def paused_queues(self) -> set[str]:
        async with self._read() as tx:
            rows = await tx.raw("SELECT name FROM fiefdom_queues WHERE paused")
        return {r[0] for r in rows}

    async def cancel_job(self, job_id: int) -> JobState | None:
        check_bigint(job_id=job_id)
        async with self._tx() as tx:
            now = time.time()
            rows = await tx.raw(
                "UPDATE fiefdom_jobs SET "
                f"state = {CANCELLED_STATE_SQL}, "
                "cancel_requested = CASE WHEN state = 'running' THEN 1 ELSE 0 END, "
                "finished_at = CASE WHEN state = 'running' THEN NULL ELSE ? END, "
                f"{unique_key_after(state_bit_sql(CANCELLED_STATE_SQL))} "
                "WHERE id = ? AND state IN ('available', 'scheduled', 'retryable', 'running') "
                "RETURNING state",
                (now, job_id),
            )
            if rows and rows[0][0] == "cancelled":
                await restore_keys(tx, [job_id], now)
            if not rows:
                rows = await tx.raw("SELECT state FROM fiefdom_jobs WHERE id = ?", (job_id,))
        if not rows:
            return None
        state = JobState(rows[0][0])
        if state is JobState.RUNNING:
            self._cancel_local(job_id)
        return state


def _split(script: str) -> list[str]:
    """Split a migration script into statements (SQLite runs one per call)."""
    statements: list[str] = []
    current: list[str] = []
    for line in script.splitlines(keepends=True):
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current.append(line)
        text = "".join(current)
        if sqlite3.complete_statement(text):
            statements.append(text.strip())
            current = []
    if "".join(current).strip():
        raise RuntimeError(f"incomplete statement in a migration: {''.join(current)!r}")
    return statements
