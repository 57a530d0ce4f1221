"""The PostgreSQL backend (asyncpg): a connection pool, the engine's batches passed
as arrays and expanded with ``unnest`` so a batch is one statement (an enqueue's
as one JSON array of rows), claims with
``FOR UPDATE SKIP LOCKED``, and LISTEN/NOTIFY for wake-ups across processes.
Times come from the database's clock (``now()``), so engines on several
machines agree on lease expiry."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

import anyio
import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from .._errors import StoreError, StoreUnavailable, UniqueConflict
from .._log import get_logger
from . import _migrations
from ._jobs import STATE_BITS, AttemptError, Enqueued, JobInfo, JobState, QueueCount
from ._rows import NewJob
from ._sql import (
    CANCELLED_STATE_SQL,
    SUPERSEDED_MESSAGE,
    check_bigint,
    count_listed_query,
    job_info,
    list_jobs_query,
    retry_candidates_query,
    state_bit_sql,
    unique_key_after,
)
from ._store import (
    BULK_LIMIT,
    COUNT_CAP,
    FINAL_STATES,
    Store,
    Transaction,
    check_bulk,
    read_only_write,
)

_json_encoder = msgspec.json.Encoder()

log = get_logger("fiefdom.storage.postgres")

if TYPE_CHECKING:
    Conn: TypeAlias = PoolConnectionProxy[Any]
_MIGRATION_LOCK = 0x6669_6566_646F_6D  # an arbitrary constant: "fiefdom" in hex
_PING_EVERY = 5.0
_error_encoder = msgspec.json.Encoder()

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown
    asyncpg.exceptions.InterfaceError,
    # Raised when a connection the server dropped is used mid-protocol.
    asyncpg.exceptions.InternalClientError,
)


_DRIVER_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *_CONNECTION_ERRORS)

_CLOSE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *_DRIVER_ERRORS)


def _error_json(error: AttemptError) -> str:
    return _error_encoder.encode(error).decode()


def _wrap(exc: BaseException, url: str) -> StoreError:
    if isinstance(exc, _CONNECTION_ERRORS):
        return StoreUnavailable(f"PostgreSQL at {url} is unavailable: {exc!r}")
    return StoreError(f"PostgreSQL: {exc}")


def _safe_url(url: str) -> str:
    """The URL without its password (it ends up in logs and errors)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class _PooledConnection(asyncpg.Connection):
    """A pooled connection that skips asyncpg's session reset on release (advisory
    unlock, CLOSE ALL, UNLISTEN, RESET ALL: a round trip on every release) unless an
    application's transaction ran on it. The store's own statements leave no session
    state: no SET, no session advisory lock, no cursor, no LISTEN (notifications have
    a connection of their own). An open transaction is rolled back on release either
    way (asyncpg always does that)."""

    _fiefdom_reset = False

    def needs_reset(self) -> None:
        self._fiefdom_reset = True

    def get_reset_query(self) -> str:
        if self._fiefdom_reset:
            self._fiefdom_reset = False
            return str(super().get_reset_query())
        return ""


class _PostgresTransaction(Transaction):
    def __init__(self, store: PostgresStore, conn: Conn, *, read_only: bool = False) -> None:
        self.store = store
        self.conn = conn
        self.read_only = read_only

    async def execute(self, sql: str, *args: object) -> None:
        try:
            await self.conn.execute(sql, *args)
        except _DRIVER_ERRORS as exc:
            raise self._error(exc, sql) from exc

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        try:
            return [tuple(r) for r in await self.conn.fetch(sql, *args)]
        except _DRIVER_ERRORS as exc:
            raise self._error(exc, sql) from exc

    def _error(self, exc: BaseException, sql: str) -> StoreError:
        if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
            words = sql.split(maxsplit=1)
            statement = words[0].upper() if words else "the statement"
            return read_only_write(statement, f"PostgreSQL: {exc}")
        return _wrap(exc, self.store.url)


# A job that re-enters a state its uniqueness counts takes its key back (one job
# per key, and only while no other job holds it); one that re-enters a waiting
# state while a duplicate holds the key is superseded by it. $1: the ids that just
# changed state.
_RESTORE_KEYS_SQL = (
    "UPDATE fiefdom_jobs SET unique_key = unique_digest WHERE id IN ("
    "SELECT min(j.id) FROM fiefdom_jobs AS j WHERE j.id = ANY($1::bigint[]) "
    "AND j.unique_key IS NULL AND j.unique_digest IS NOT NULL "
    f"AND j.unique_states & {state_bit_sql('j.state')} <> 0 "
    "AND NOT EXISTS (SELECT 1 FROM fiefdom_jobs AS h WHERE h.unique_key = j.unique_digest) "
    "GROUP BY j.unique_digest)"
)
_SUPERSEDE_SQL = (
    "UPDATE fiefdom_jobs AS j SET state = 'cancelled', finished_at = now(), "
    "cancel_requested = false, lease_expires_at = NULL, worker = NULL, "
    "errors = j.errors || jsonb_build_array(jsonb_build_object('attempt', j.attempt, "
    "'at', extract(epoch FROM now()), 'type', 'fiefdom.Superseded', 'message', "
    + " || h.id || ".join(f"'{part}'" for part in SUPERSEDED_MESSAGE.split("{holder}"))
    + ", 'traceback', '')) "
    "FROM fiefdom_jobs AS h WHERE j.id = ANY($1::bigint[]) "
    "AND j.unique_key IS NULL AND j.unique_digest IS NOT NULL "
    "AND j.state IN ('available', 'scheduled', 'retryable') "
    f"AND j.unique_states & {state_bit_sql('j.state')} <> 0 "
    "AND h.unique_key = j.unique_digest AND h.id <> j.id "
    "RETURNING j.id"
)


async def restore_keys(conn: Conn, ids: Sequence[int]) -> set[int]:
    """Give jobs that just re-entered a counted state their unique key back, or
    supersede them by the duplicate holding it (``Unique``'s docstring). Call it
    inside the transaction that changed their state."""
    if not ids:
        return set()
    for _ in range(5):
        try:
            # A savepoint: a concurrent enqueue (or another engine's restore) may
            # commit the same key after this statement's snapshot; the unique index
            # then refuses it, and a new snapshot sees that holder.
            async with conn.transaction():
                await conn.execute(_RESTORE_KEYS_SQL, list(ids))
            break
        except asyncpg.UniqueViolationError:
            continue
    superseded = await conn.fetch(_SUPERSEDE_SQL, list(ids))
    if superseded:
        log.info("superseded jobs by waiting duplicates", ids=[r[0] for r in superseded])
    return {r[0] for r in superseded}


# Enqueueing: a batch is one JSON array of rows (a positional array each, the job's
# arguments embedded as they were encoded, unique keys in hex), one parameter the
# server parses once (an array per column costs the driver a check per element),
# expanded and inserted in its order (ids grow in that order); a single job, the
# most common enqueue, as plain parameters (a cheaper statement to run). A
# duplicate of a unique job is skipped (the unique index), and looked up afterwards.
# Rows that hold no unique key cannot conflict (the only other unique index is the
# generated id's): they take the statements without ON CONFLICT, which PostgreSQL
# inserts directly instead of speculatively (a speculative insert takes a lock and
# writes a second WAL record per row to confirm it): a batch of 10,000 inserts
# about a sixth faster.
_INSERT_INTO = (
    "INSERT INTO fiefdom_jobs (kind, queue, state, priority, args, domain_key, "
    "max_attempts, unique_key, unique_states, run_at, unique_digest, domain, partition, "
    "ordered) "
)
_RETURNING = "RETURNING id, unique_key"
_ON_CONFLICT = "ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING " + _RETURNING
_INSERT_MANY = (
    _INSERT_INTO + "SELECT r ->> 0, r ->> 1, r ->> 2, (r ->> 3)::smallint, r -> 4, r ->> 5, "
    "(r ->> 6)::integer, decode(r ->> 7, 'hex'), (r ->> 8)::smallint, "
    "coalesce(to_timestamp((r ->> 9)::float8), now()), decode(r ->> 10, 'hex'), r ->> 11, "
    "(r ->> 12)::smallint, (r ->> 13)::boolean "
    "FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(r, ord) "
    "ORDER BY ord "
)
_INSERT_ONE = (
    _INSERT_INTO + "VALUES ($1::text, $2::text, $3::text, $4::smallint, $5::text::jsonb, "
    "$6::text, $7::integer, $8::bytea, $9::smallint, "
    "coalesce(to_timestamp($10::float8), now()), $11::bytea, $12::text, $13::smallint, "
    "$14::boolean) "
)
_INSERT_MANY_SQL = _INSERT_MANY + _ON_CONFLICT
_INSERT_MANY_PLAIN_SQL = _INSERT_MANY + _RETURNING
_INSERT_ONE_SQL = _INSERT_ONE + _ON_CONFLICT
_INSERT_ONE_PLAIN_SQL = _INSERT_ONE + _RETURNING


# A batch statement takes at most this many rows, or rows whose arguments and keys
# add up to this many bytes: its JSON stays far below what a jsonb value may hold
# (256 MiB), and the rows the server expands from it stay few (an expansion larger
# than its work_mem goes to disk). A larger batch is several statements in one
# transaction.
_BATCH_ROWS = 10_000
_BATCH_BYTES = 32 * 1024 * 1024


def _chunks(rows: Sequence[NewJob]) -> list[Sequence[NewJob]]:
    chunks: list[Sequence[NewJob]] = []
    start = size = 0
    for i, r in enumerate(rows):
        # The arguments and the key, and a bound on the rest of the row.
        row = len(r.args) + (0 if r.key is None else len(r.key)) + 1024
        if i > start and (i - start >= _BATCH_ROWS or size + row > _BATCH_BYTES):
            chunks.append(rows[start:i])
            start, size = i, 0
        size += row
    chunks.append(rows[start:])
    return chunks


def _json_rows(rows: Sequence[NewJob]) -> str:
    """The JSON array of rows _INSERT_MANY_SQL expands. Text that is not valid
    Unicode (a queue name holding a lone surrogate) is refused, as the driver
    refuses it in a statement's parameters."""
    try:
        encoded = _json_encoder.encode(
            [
                (
                    r.kind,
                    r.queue,
                    r.state.value,
                    r.priority,
                    msgspec.Raw(r.args),
                    r.key,
                    r.max_attempts,
                    None if r.unique_key is None else r.unique_key.hex(),
                    r.unique_states,
                    r.run_at,
                    None if r.unique_digest is None else r.unique_digest.hex(),
                    r.domain,
                    r.partition,
                    r.ordered,
                )
                for r in rows
            ]
        )
    except UnicodeEncodeError as exc:
        raise StoreError(f"PostgreSQL: invalid input for a batch of jobs: {exc}") from exc
    return encoded.decode()


def _timestamp(param: str) -> str:
    """A parameter of unix seconds as the timestamptz the time columns hold."""
    return f"to_timestamp({param}::float8)"


_JOB_COLUMNS = (
    "id, kind, queue, state, priority, args::text AS args, domain_key, attempt, "
    "max_attempts, errors::text AS errors, worker, cancel_requested, "
    "extract(epoch FROM created_at)::float8 AS created_at, "
    "extract(epoch FROM run_at)::float8 AS run_at, "
    "extract(epoch FROM attempted_at)::float8 AS attempted_at, "
    "extract(epoch FROM finished_at)::float8 AS finished_at, snoozes"
)


# Upper bounds (seconds) of the acquire-time histogram's buckets.
ACQUIRE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


@dataclasses.dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A PostgreSQL store's connection pool: its size, the connections in use, the
    callers waiting for one, and how long getting one took (``acquire_buckets[i]``
    counts the acquires that took at most ``ACQUIRE_BUCKETS[i]`` seconds)."""

    max_size: int
    size: int
    in_use: int
    waiting: int
    acquires: int
    acquire_seconds: float
    acquire_buckets: tuple[int, ...]


class PostgresStore(Store):
    """``postgresql://...``: an asyncpg pool; broken connections are replaced on
    the next use, and every operation that cannot reach the database raises
    StoreUnavailable and marks the store unhealthy until one succeeds."""

    backend: Literal["sqlite", "postgres"] = "postgres"
    notifies_processes = True

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        pool_min_size: int = 1,
        statement_timeout: float | None = None,
    ) -> None:
        super().__init__(_safe_url(url))
        if pool_size < 2:
            raise StoreError(f"pool_size must be at least 2, got {pool_size}")
        if not 0 <= pool_min_size <= pool_size:
            raise StoreError(
                f"pool_min_size must be 0 to pool_size ({pool_size}), got {pool_min_size}"
            )
        if statement_timeout is not None and not statement_timeout > 0:
            raise StoreError(f"statement_timeout must be positive seconds, got {statement_timeout}")
        self._dsn = url
        self._pool_size = pool_size
        self._pool_min_size = pool_min_size
        self._statement_timeout = statement_timeout
        self._pool: asyncpg.Pool[Any] | None = None
        self._waiting = 0  # callers waiting for a pooled connection
        self._acquires = 0
        self._acquire_seconds = 0.0
        self._acquire_buckets = [0] * len(ACQUIRE_BUCKETS)

    def pool_statistics(self) -> PoolStatistics:
        """The connection pool now (what ``/metrics`` exposes)."""
        pool = self._pool
        size = 0 if pool is None else pool.get_size()
        idle = 0 if pool is None else pool.get_idle_size()
        return PoolStatistics(
            max_size=self._pool_size,
            size=size,
            in_use=max(0, size - idle),
            waiting=self._waiting,
            acquires=self._acquires,
            acquire_seconds=self._acquire_seconds,
            acquire_buckets=tuple(self._acquire_buckets),
        )

    # -- lifecycle -------------------------------------------------------------------

    async def _connect(self) -> None:
        try:
            settings: dict[str, str] = {}
            if self._statement_timeout is not None:
                # In milliseconds: PostgreSQL cancels a statement running longer.
                settings["statement_timeout"] = str(max(1, round(self._statement_timeout * 1000)))
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._pool_min_size,
                max_size=self._pool_size,
                connection_class=_PooledConnection,
                server_settings=settings or None,
            )
        except _DRIVER_ERRORS as exc:
            raise _wrap(exc, self.url) from exc

    async def _disconnect(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with anyio.CancelScope(shield=True):
                try:
                    with anyio.fail_after(10):
                        await pool.close()
                except TimeoutError:
                    pool.terminate()

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[Conn]:
        self._check_open()
        assert self._pool is not None
        began = time.monotonic()
        self._waiting += 1
        try:
            conn = await self._pool.acquire()
        except _DRIVER_ERRORS as exc:
            self._mark(False)
            raise _wrap(exc, self.url) from exc
        finally:
            self._waiting -= 1
        self._count_acquire(time.monotonic() - began)
        try:
            yield conn
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._pool.release(conn)
                except _DRIVER_ERRORS:
                    # Resetting a connection the server dropped fails; the pool has
                    # already discarded it and opens a new one when needed.
                    self._mark(False)
                    log.warning("a broken connection was dropped from the pool", url=self.url)

    def _count_acquire(self, took: float) -> None:
        self._acquires += 1
        self._acquire_seconds += took
        for i, bound in enumerate(ACQUIRE_BUCKETS):
            if took <= bound:
                self._acquire_buckets[i] += 1

    async def _run(self, fn: Callable[[Conn], Any]) -> Any:
        """Run one operation on a pooled connection, wrapping driver errors."""
        async with self._acquire() as conn:
            try:
                result = await fn(conn)
            except _DRIVER_ERRORS as exc:
                if isinstance(exc, _CONNECTION_ERRORS):
                    self._mark(False)
                raise _wrap(exc, self.url) from exc
        self._mark(True)
        return result

    @asynccontextmanager
    async def _tx(
        self, *, application: bool = False, read_only: bool = False
    ) -> AsyncIterator[_PostgresTransaction]:
        async with self._acquire() as conn:
            if application:
                # Its statements are the application's (a SET, say): reset the session
                # when the connection goes back to the pool.
                # (The pool's proxy forwards to its _PooledConnection.)
                cast(_PooledConnection, conn).needs_reset()
            try:
                if read_only:
                    # One snapshot for all its statements, as SQLite's WAL reads have
                    # (a read-only transaction never fails to serialize).
                    transaction = conn.transaction(isolation="repeatable_read", readonly=True)
                else:
                    transaction = conn.transaction()
                await transaction.start()
            except _DRIVER_ERRORS as exc:
                self._mark(False)
                raise _wrap(exc, self.url) from exc
            tx = _PostgresTransaction(self, conn, read_only=read_only)
            try:
                yield tx
            except BaseException:
                with anyio.CancelScope(shield=True):
                    try:
                        await transaction.rollback()
                    except _CONNECTION_ERRORS as exc:
                        # The connection is gone, and the transaction with it: the
                        # server rolled it back. The error being raised says why.
                        log.debug(
                            "rollback skipped: connection lost",
                            url=self.url,
                            error=str(exc) or type(exc).__name__,
                        )
                    except _DRIVER_ERRORS as exc:
                        log.warning(
                            "rollback failed", url=self.url, error=str(exc) or type(exc).__name__
                        )
                raise
            else:
                # Shielded: once we start the COMMIT we wait for its answer.
                with anyio.CancelScope(shield=True):
                    try:
                        await transaction.commit()
                    except _DRIVER_ERRORS as exc:
                        self._mark(not isinstance(exc, _CONNECTION_ERRORS))
                        raise _wrap(exc, self.url) from exc
        self._mark(True)

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return self._tx(application=True)

    def read(self) -> AbstractAsyncContextManager[Transaction]:
        return self._tx(application=True, read_only=True)

    # -- migrations ------------------------------------------------------------------

    async def schema_version(self) -> int:
        async def run(conn: Conn) -> int:
            if await conn.fetchval("SELECT to_regclass('fiefdom_schema')") is None:
                return 0
            return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM fiefdom_schema"))

        return int(await self._run(run))

    async def migrate(self) -> int:
        async with self._tx() as tx:
            # Serialises concurrent migrators (several engines starting at once).
            await tx.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS fiefdom_schema (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = int(await tx.fetchval("SELECT coalesce(max(version), 0) FROM fiefdom_schema"))
            migrations = _migrations.load("postgres")
            for migration in migrations[current:]:
                await tx.execute(migration.sql)
                await tx.execute(
                    "INSERT INTO fiefdom_schema (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
                log.info("migrated", url=self.url, version=migration.version)
            return max(current, len(migrations))

    async def _notify_queues(self, conn: Conn, queues: Sequence[str]) -> None:
        if queues:
            await conn.execute(
                "SELECT pg_notify('fiefdom_jobs', q) FROM unnest($1::text[]) AS q", list(queues)
            )

    # -- enqueueing ------------------------------------------------------------------

    async def _insert_rows(
        self, rows: Sequence[NewJob], *, tx: Transaction | None = None
    ) -> list[Enqueued]:
        self._check_tx(tx)
        if not rows:
            return []
        if tx is None:
            result: list[Enqueued] = await self._run(lambda conn: self._insert(conn, rows))
        else:
            assert isinstance(tx, _PostgresTransaction)
            try:
                result = await self._insert(tx.conn, rows)
            except _DRIVER_ERRORS as exc:
                raise _wrap(exc, self.url) from exc
        if tx is None:
            # Committed: wake this process's engines without waiting for NOTIFY.
            self._wake_local(sorted({r.queue for r in rows if r.state is JobState.AVAILABLE}))
        return result

    async def _insert(self, conn: Conn, rows: Sequence[NewJob]) -> list[Enqueued]:
        # The INSERT trigger notifies engines (at commit) of queues with available jobs.
        if len(rows) == 1:
            r = rows[0]
            got = await conn.fetch(
                _INSERT_ONE_SQL if r.unique_key is not None else _INSERT_ONE_PLAIN_SQL,
                r.kind,
                r.queue,
                r.state.value,
                r.priority,
                r.args.decode(),
                r.key,
                r.max_attempts,
                r.unique_key,
                r.unique_states,
                r.run_at,
                r.unique_digest,
                r.domain,
                r.partition,
                r.ordered,
            )
        else:
            got = await self._insert_many(conn, rows)
        inserted = [(r[0], r[1]) for r in got]
        existing: dict[bytes, int] = {}
        if len(inserted) < len(rows):
            taken = {key for _, key in inserted if key is not None}
            wanted = list({r.unique_key for r in rows if r.unique_key is not None} - taken)
            found = await conn.fetch(
                "SELECT unique_key, id FROM fiefdom_jobs WHERE unique_key = ANY($1::bytea[])",
                wanted,
            )
            existing = {r[0]: r[1] for r in found}
        return self._match_inserted(rows, inserted, existing)

    async def _insert_many(self, conn: Conn, rows: Sequence[NewJob]) -> list[asyncpg.Record]:
        chunks = _chunks(rows)
        keyed = any(r.unique_key is not None for r in rows)
        sql = _INSERT_MANY_SQL if keyed else _INSERT_MANY_PLAIN_SQL
        if len(chunks) == 1:
            return await conn.fetch(sql, _json_rows(chunks[0]))
        if conn.is_in_transaction():  # the caller's: all or nothing with it
            return await self._insert_chunks(conn, chunks, sql)
        # Several statements: one transaction, so the batch is still all or nothing.
        async with conn.transaction():
            return await self._insert_chunks(conn, chunks, sql)

    @staticmethod
    async def _insert_chunks(
        conn: Conn, chunks: Sequence[Sequence[NewJob]], sql: str
    ) -> list[asyncpg.Record]:
        got: list[asyncpg.Record] = []
        for chunk in chunks:
            got += await conn.fetch(sql, _json_rows(chunk))
        return got

    # -- the engine's side -----------------------------------------------------------

    # -- administration --------------------------------------------------------------

    async def get_job(self, job_id: int) -> JobInfo | None:
        check_bigint(job_id=job_id)
        row = await self._run(
            lambda conn: conn.fetchrow(
                f"SELECT {_JOB_COLUMNS} FROM fiefdom_jobs WHERE id = $1", job_id
            )
        )
        return None if row is None else job_info(row)

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
        check_bigint(after_id=after_id, limit=limit)
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
            placeholder=lambda n: f"${n}",
            timestamp=_timestamp,
        )
        rows = await self._run(lambda conn: conn.fetch(sql, *args))
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
        check_bigint(cap=cap)
        sql, args = count_listed_query(
            queue=queue,
            state=state,
            kind=kind,
            key=key,
            since=None if since is None else since.timestamp(),
            cap=cap,
            placeholder=lambda n: f"${n}",
            timestamp=_timestamp,
        )
        return int(await self._run(lambda conn: conn.fetchval(sql, *args)))

    async def retry_jobs(
        self,
        *,
        state: JobState,
        queue: str | None = None,
        kind: str | None = None,
        limit: int = BULK_LIMIT,
    ) -> tuple[int, int]:
        check_bulk(states=[state], limit=limit)
        check_bigint(limit=limit)
        bit = STATE_BITS[JobState.AVAILABLE]
        sql, args = retry_candidates_query(
            state=state, queue=queue, kind=kind, limit=limit, placeholder=lambda n: f"${n}"
        )

        async def run(conn: Conn) -> tuple[list[str], int]:
            # One transaction: an error (a duplicate enqueued between a job's check
            # and its update takes the key) rolls every retry back.
            async with conn.transaction():
                ids = [r[0] for r in await conn.fetch(sql + " FOR UPDATE", *args)]
                rows = await conn.fetch(
                    "UPDATE fiefdom_jobs AS j SET state = 'available', run_at = now(), "
                    "finished_at = NULL, max_attempts = greatest(max_attempts, attempt + 1), "
                    "snoozes = 0, cancel_requested = false, "
                    f"{unique_key_after(bit, table='j.', keep='unique_digest')} "
                    "WHERE j.id = ANY($1::bigint[]) AND (j.unique_states & "
                    f"{bit} = 0 OR j.unique_digest IS NULL OR ("
                    # Not while a duplicate holds the key, and of the jobs retried
                    # that share one, only the oldest takes it (as one by one would).
                    "NOT EXISTS (SELECT 1 FROM fiefdom_jobs AS h "
                    "WHERE h.unique_key = j.unique_digest AND h.id <> j.id) "
                    "AND j.id = (SELECT min(c.id) FROM fiefdom_jobs AS c "
                    "WHERE c.id = ANY($1::bigint[]) AND c.unique_digest = j.unique_digest "
                    f"AND c.unique_states & {bit} <> 0))) "
                    "RETURNING j.queue",
                    ids,
                )
                queues = [r[0] for r in rows]
                await self._notify_queues(conn, queues)
                return queues, len(ids) - len(rows)

        queues, skipped = await self._run(run)
        self._wake_local(queues)
        return len(queues), skipped

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
        args: list[object] = [older_than]
        where = [
            "state IN (" + ", ".join(f"'{JobState(s).value}'" for s in states) + ")",
            "finished_at < now() - make_interval(secs => $1)",
        ]
        for column, value in (("queue", queue), ("kind", kind)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        args.append(limit)
        rows = await self._run(
            lambda conn: conn.fetch(
                "DELETE FROM fiefdom_jobs WHERE id IN (SELECT id FROM fiefdom_jobs WHERE "
                f"{' AND '.join(where)} LIMIT ${len(args)}) RETURNING id",
                *args,
            )
        )
        return len(rows)

    async def count_jobs(self) -> list[QueueCount]:
        rows = await self._run(
            lambda conn: conn.fetch(
                "SELECT queue, state, count(*) FROM fiefdom_jobs GROUP BY queue, state "
                "ORDER BY queue, state"
            )
        )
        return [QueueCount(queue=r[0], state=JobState(r[1]), count=r[2]) for r in rows]

    async def retry_job(self, job_id: int) -> bool:
        check_bigint(job_id=job_id)
        bit = STATE_BITS[JobState.AVAILABLE]

        async def run(conn: Conn) -> list[asyncpg.Record]:
            try:
                rows = await conn.fetch(
                    "UPDATE fiefdom_jobs SET state = 'available', run_at = now(), "
                    "finished_at = NULL, max_attempts = greatest(max_attempts, attempt + 1), "
                    "snoozes = 0, cancel_requested = false, "
                    f"{unique_key_after(bit, keep='unique_digest')} "
                    "WHERE id = $1 AND state IN ('discarded', 'cancelled', 'completed') "
                    "RETURNING queue",
                    job_id,
                )
            except asyncpg.UniqueViolationError as exc:
                # The statement failed as a whole: the job is unchanged.
                holder = await conn.fetchval(
                    "SELECT h.id FROM fiefdom_jobs AS j JOIN fiefdom_jobs AS h "
                    "ON h.unique_key = j.unique_digest AND h.id <> j.id WHERE j.id = $1",
                    job_id,
                )
                raise UniqueConflict(job_id, holder) from exc
            await self._notify_queues(conn, [r[0] for r in rows])
            return rows

        rows = await self._run(run)
        self._wake_local([r[0] for r in rows])
        return bool(rows)

    async def _set_paused(self, queue: str, paused: bool) -> None:
        # The table's trigger notifies every engine at commit.
        await self._run(
            lambda conn: conn.execute(
                "INSERT INTO fiefdom_queues (name, paused) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = now()",
                queue,
                paused,
            )
        )

    async def paused_queues(self) -> set[str]:
        rows = await self._run(
            lambda conn: conn.fetch("SELECT name FROM fiefdom_queues WHERE paused")
        )
        return {r[0] for r in rows}

    async def cancel_job(self, job_id: int) -> JobState | None:
        check_bigint(job_id=job_id)

        async def run(conn: Conn) -> str | None:
            async with conn.transaction():
                state = await conn.fetchval(
                    "UPDATE fiefdom_jobs SET "
                    f"state = {CANCELLED_STATE_SQL}, "
                    "cancel_requested = (state = 'running'), "
                    "finished_at = CASE WHEN state = 'running' THEN NULL ELSE now() END, "
                    f"{unique_key_after(state_bit_sql(CANCELLED_STATE_SQL))} "
                    "WHERE id = $1 AND state IN ('available', 'scheduled', 'retryable', "
                    "'running') RETURNING state",
                    job_id,
                )
                if state is None:
                    return await conn.fetchval(  # type: ignore[no-any-return]
                        "SELECT state FROM fiefdom_jobs WHERE id = $1", job_id
                    )
                if state == "cancelled":
                    await restore_keys(conn, [job_id])
                if state == "running":
                    await conn.execute("SELECT pg_notify('fiefdom_cancel', $1)", str(job_id))
                return str(state)

        found = await self._run(run)
        if found is None:
            return None
        state = JobState(found)
        if state is JobState.RUNNING:
            self._cancel_local(job_id)
        return state
