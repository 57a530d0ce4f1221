"""The PostgreSQL backend (asyncpg): a connection pool, batches passed as arrays
and expanded with ``unnest`` so a batch is one statement, claims with
``FOR UPDATE SKIP LOCKED``, and LISTEN/NOTIFY for wake-ups across processes.
Times come from the database's clock (``now()``), so engines on several
machines agree on lease expiry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import anyio
import asyncpg
import msgspec
import structlog
from asyncpg.pool import PoolConnectionProxy

from .._errors import StoreError, StoreUnavailable, UniqueConflict
from . import _migrations
from ._jobs import (
    LEASE_EXPIRED_SQL,
    STATE_BITS,
    SUPERSEDED_MESSAGE,
    AttemptError,
    ClaimedJob,
    Enqueued,
    JobInfo,
    JobState,
    Lease,
    NewJob,
    Outcome,
    QueueCount,
    state_bit_sql,
)
from ._store import Notifications, Store, Transaction

log = structlog.get_logger("fiefdom.storage.postgres")

if TYPE_CHECKING:
    Conn: TypeAlias = PoolConnectionProxy[Any]
_MIGRATION_LOCK = 0x6669_6566_646F_6D  # an arbitrary constant: "fiefdom" in hex
_PING_EVERY = 5.0
_errors_decoder = msgspec.json.Decoder(list[AttemptError])
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


class _PostgresTransaction(Transaction):
    def __init__(self, store: PostgresStore, conn: Conn) -> None:
        self.store = store
        self.conn = conn

    async def execute(self, sql: str, *args: object) -> None:
        try:
            await self.conn.execute(sql, *args)
        except _DRIVER_ERRORS as exc:
            raise _wrap(exc, self.store.url) from exc

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        try:
            return [tuple(r) for r in await self.conn.fetch(sql, *args)]
        except _DRIVER_ERRORS as exc:
            raise _wrap(exc, self.store.url) from exc


# The claim: one statement; SKIP LOCKED lets concurrent claimers pass each other.
# $1 queue, $2 limit, $3 worker, $4 lease seconds.
CLAIM_SQL = (
    "WITH picked AS (SELECT id FROM fiefdom_jobs WHERE state = 'available' "
    "AND queue = $1 ORDER BY priority, run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) "
    "UPDATE fiefdom_jobs AS j SET state = 'running', attempt = j.attempt + 1, "
    "lease_token = j.lease_token + 1, worker = $3, attempted_at = now(), "
    "lease_expires_at = now() + make_interval(secs => $4), "
    f"unique_key = CASE WHEN j.unique_states & {STATE_BITS[JobState.RUNNING]} <> 0 "
    "THEN j.unique_key END "
    "FROM picked WHERE j.id = picked.id "
    "RETURNING j.id, j.kind, j.queue, j.args::text, j.attempt, j.max_attempts, "
    "j.lease_token, j.domain_key, j.priority, extract(epoch FROM now() - j.run_at)::float8"
)


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


# Whether an outcome brings a job into a state its uniqueness counts while it does
# not hold its key (d.bit: the new state's bit).
# Whether finish must run a batch in a transaction: some job in it would re-enter a
# counted state without its unique key (restored in the same transaction), or its
# lease is stale. Uncorrelated, so it holds for all of the batch or none of it; the
# same parameters as finish's UPDATE ($1 ids, $2 tokens, $7 state bits).
_NEEDS_TX = (
    "SELECT 1 FROM unnest($1::bigint[], $2::bigint[], $7::smallint[]) AS x(id, token, bit) "
    "LEFT JOIN fiefdom_jobs AS k ON k.id = x.id AND k.lease_token = x.token "
    "AND k.state = 'running' WHERE k.id IS NULL OR (k.unique_key IS NULL "
    "AND k.unique_digest IS NOT NULL AND k.unique_states & x.bit <> 0)"
)


def _available_queues(rescued: Sequence[tuple[int, str, str, JobState]]) -> list[str]:
    return sorted({queue for _, _, queue, state in rescued if state is JobState.AVAILABLE})


async def _restore_keys(conn: Conn, ids: Sequence[int]) -> set[int]:
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


# Heartbeats and outcome writes of one engine run at once on two connections and
# name the same running jobs: each first locks its rows in id order, so neither
# can hold one row while waiting for another that the other holds (a deadlock).
# An UPDATE ... FROM unnest locks rows in whatever order its join plan meets them.
# MATERIALIZED keeps the CTE from being folded into the UPDATE. Claim, rescue and
# promote need no order: they SKIP LOCKED rows and so never wait for one.
# $1: the job ids.
_LOCK_IN_ORDER = (
    "WITH locked AS MATERIALIZED (SELECT id FROM fiefdom_jobs "
    "WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE) "
)


_LEASE_EXPIRED = LEASE_EXPIRED_SQL.format(
    cancel="j.cancel_requested", attempt="j.attempt", max_attempts="j.max_attempts"
)


_JOB_COLUMNS = (
    "id, kind, queue, state, priority, args::text, domain_key, attempt, max_attempts, "
    "errors::text, worker, cancel_requested, created_at, run_at, attempted_at, finished_at"
)


def _info(row: asyncpg.Record) -> JobInfo:
    return JobInfo(
        id=row[0],
        kind=row[1],
        queue=row[2],
        state=JobState(row[3]),
        priority=row[4],
        args=row[5],
        key=row[6],
        attempt=row[7],
        max_attempts=row[8],
        errors=_errors_decoder.decode(row[9]),
        worker=row[10],
        cancel_requested=row[11],
        created_at=row[12],
        run_at=row[13],
        attempted_at=row[14],
        finished_at=row[15],
    )


class PostgresStore(Store):
    """``postgresql://...``: an asyncpg pool; broken connections are replaced on
    the next use, and every operation that cannot reach the database raises
    StoreUnavailable and marks the store unhealthy until one succeeds."""

    backend: Literal["sqlite", "postgres"] = "postgres"
    notifies_processes = True

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        super().__init__(_safe_url(url))
        if pool_size < 2:
            raise StoreError(f"pool_size must be at least 2, got {pool_size}")
        self._dsn = url
        self._pool_size = pool_size
        self._pool: asyncpg.Pool[Any] | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def _connect(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._pool_size)
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
        try:
            conn = await self._pool.acquire()
        except _DRIVER_ERRORS as exc:
            self._mark(False)
            raise _wrap(exc, self.url) from exc
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
    async def _tx(self) -> AsyncIterator[_PostgresTransaction]:
        async with self._acquire() as conn:
            try:
                transaction = conn.transaction()
                await transaction.start()
            except _DRIVER_ERRORS as exc:
                self._mark(False)
                raise _wrap(exc, self.url) from exc
            tx = _PostgresTransaction(self, conn)
            try:
                yield tx
            except BaseException:
                with anyio.CancelScope(shield=True):
                    try:
                        await transaction.rollback()
                    except _DRIVER_ERRORS:
                        log.warning("rollback failed", url=self.url, exc_info=True)
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
        return self._tx()

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

    # -- notifications ---------------------------------------------------------------

    async def listen(self, subscriber: Notifications, ready: Callable[[], None]) -> None:
        self._check_open()
        try:
            conn = await asyncpg.connect(self._dsn, timeout=10)
        except _DRIVER_ERRORS as exc:
            self._mark(False)
            raise _wrap(exc, self.url) from exc
        lost = asyncio.Event()

        def on_jobs(_c: object, _pid: int, _channel: str, payload: object) -> None:
            subscriber.on_jobs(str(payload))

        def on_cancel(_c: object, _pid: int, _channel: str, payload: object) -> None:
            subscriber.on_cancel(int(str(payload)))

        def on_queue(_c: object, _pid: int, _channel: str, payload: object) -> None:
            change, _, queue = str(payload).partition(":")
            subscriber.on_paused(queue, change == "paused")

        try:
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener("fiefdom_jobs", on_jobs)
            await conn.add_listener("fiefdom_cancel", on_cancel)
            await conn.add_listener("fiefdom_queues", on_queue)
            self._mark(True)
            ready()
            while True:
                with anyio.move_on_after(_PING_EVERY):
                    await lost.wait()
                if lost.is_set():
                    break
                # A connection can die without a word (a network cut): ask it.
                await conn.execute("SELECT 1", timeout=_PING_EVERY)
        except _DRIVER_ERRORS as exc:
            self._mark(False)
            raise _wrap(exc, self.url) from exc
        finally:
            with anyio.CancelScope(shield=True):
                if not conn.is_closed():
                    try:
                        with anyio.fail_after(2):
                            await conn.close()
                    except _CLOSE_ERRORS:
                        conn.terminate()
        self._mark(False)
        raise StoreUnavailable(f"the notification connection to {self.url} was lost")

    async def _notify_queues(self, conn: Conn, queues: Sequence[str]) -> None:
        if queues:
            await conn.execute(
                "SELECT pg_notify('fiefdom_jobs', q) FROM unnest($1::text[]) AS q", list(queues)
            )

    # -- enqueueing ------------------------------------------------------------------

    async def insert_jobs(
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
        got = await conn.fetch(
            "INSERT INTO fiefdom_jobs (kind, queue, state, priority, args, domain_key, "
            "max_attempts, unique_key, unique_states, run_at, unique_digest) "
            "SELECT k, q, s, p, a::jsonb, dk, m, u, us, coalesce(to_timestamp(r), now()), ud "
            "FROM unnest($1::text[], $2::text[], $3::text[], $4::smallint[], $5::text[], "
            "$6::text[], $7::integer[], $8::bytea[], $9::smallint[], $10::float8[], "
            "$11::bytea[]) "
            "WITH ORDINALITY AS t(k, q, s, p, a, dk, m, u, us, r, ud, ord) ORDER BY ord "
            "ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING "
            "RETURNING id, unique_key",
            [r.kind for r in rows],
            [r.queue for r in rows],
            [r.state.value for r in rows],
            [r.priority for r in rows],
            [r.args.decode() for r in rows],
            [r.key for r in rows],
            [r.max_attempts for r in rows],
            [r.unique_key for r in rows],
            [r.unique_states for r in rows],
            [r.run_at for r in rows],
            [r.unique_digest for r in rows],
        )
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

    # -- the engine's side -----------------------------------------------------------

    async def claim(self, queue: str, limit: int, *, worker: str, lease: float) -> list[ClaimedJob]:
        rows = await self._run(
            lambda conn: conn.fetch(
                CLAIM_SQL,
                queue,
                limit,
                worker,
                lease,
            )
        )
        return [ClaimedJob.from_row(r) for r in rows]

    async def finish(self, outcomes: Sequence[Outcome]) -> dict[int, JobState]:
        if not outcomes:
            return {}
        superseded: set[int] = set()

        async def run(conn: Conn) -> list[asyncpg.Record]:
            # One statement, outside a transaction, records the whole batch when no
            # outcome in it brings a job back into a counted state without its
            # unique key and no lease in it is stale (almost every batch). Otherwise
            # it records nothing, and the batch runs again in a transaction that
            # also restores the keys: all or nothing, so a failure cannot leave
            # part of the batch committed, which the engine's retry would then
            # report as stale leases (no event, no outcome count, no NOTIFY).
            rows = list(await update(conn, outcomes, "AND NOT EXISTS (" + _NEEDS_TX + ") "))
            if not rows:
                async with conn.transaction():
                    rows = list(await update(conn, outcomes, ""))
                    superseded.update(await _restore_keys(conn, [r[0] for r in rows]))
            # Rows missing from a non-empty first result lost their lease between the
            # check and the row lock (a rescue): stale, nothing left to record.
            await self._notify_queues(conn, sorted({r[1] for r in rows if r[2] == "available"}))
            return rows

        async def update(
            conn: Conn, outcomes: Sequence[Outcome], condition: str
        ) -> list[asyncpg.Record]:
            # By id: heartbeats lock the same rows in the same order (_LOCK_IN_ORDER).
            outcomes = sorted(outcomes, key=lambda o: o.lease.job_id)
            return await conn.fetch(
                _LOCK_IN_ORDER + "UPDATE fiefdom_jobs AS j SET state = d.state, "
                "attempt = j.attempt - d.refund, "
                "run_at = CASE WHEN d.delay IS NULL THEN j.run_at "
                "ELSE now() + make_interval(secs => d.delay) END, "
                "finished_at = CASE WHEN d.state IN ('completed', 'cancelled', 'discarded') "
                "THEN now() END, "
                "errors = CASE WHEN d.error IS NULL THEN j.errors "
                "ELSE j.errors || jsonb_build_array(d.error::jsonb) END, "
                "lease_expires_at = NULL, worker = NULL, cancel_requested = false, "
                "unique_key = CASE WHEN j.unique_states & d.bit <> 0 THEN j.unique_key END "
                "FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::float8[], "
                "$5::integer[], $6::text[], $7::smallint[]) "
                "AS d(id, token, state, delay, refund, error, bit), locked "
                "WHERE j.id = d.id AND j.id = locked.id AND j.lease_token = d.token "
                "AND j.state = 'running' " + condition + "RETURNING j.id, j.queue, j.state",
                [o.lease.job_id for o in outcomes],
                [o.lease.token for o in outcomes],
                [o.state.value for o in outcomes],
                [o.delay for o in outcomes],
                [1 if o.refund else 0 for o in outcomes],
                [
                    None if o.error is None else _error_encoder.encode(o.error).decode()
                    for o in outcomes
                ],
                [STATE_BITS[o.state] for o in outcomes],
            )

        rows = await self._run(run)
        self._wake_local(sorted({r[1] for r in rows if r[2] == "available"}))
        return {r[0]: JobState.CANCELLED if r[0] in superseded else JobState(r[2]) for r in rows}

    async def heartbeat(
        self, leases: Sequence[Lease], *, lease: float
    ) -> tuple[set[int], set[int]]:
        if not leases:
            return set(), set()
        # By id: outcome writes lock the same rows in the same order (_LOCK_IN_ORDER).
        leases = sorted(leases, key=lambda x: x.job_id)
        rows = await self._run(
            lambda conn: conn.fetch(
                _LOCK_IN_ORDER + "UPDATE fiefdom_jobs AS j "
                "SET lease_expires_at = now() + make_interval(secs => $3) "
                "FROM unnest($1::bigint[], $2::bigint[]) AS d(id, token), locked "
                "WHERE j.id = d.id AND j.id = locked.id AND j.lease_token = d.token "
                "AND j.state = 'running' "
                "RETURNING j.id, j.cancel_requested",
                [x.job_id for x in leases],
                [x.token for x in leases],
                lease,
            )
        )
        return {r[0] for r in rows}, {r[0] for r in rows if r[1]}

    async def rescue(self) -> list[tuple[int, str, str, JobState]]:
        a, c, d = (
            STATE_BITS[s] for s in (JobState.AVAILABLE, JobState.CANCELLED, JobState.DISCARDED)
        )

        async def run(conn: Conn) -> list[tuple[int, str, str, JobState]]:
            async with conn.transaction():
                return await rescue_in(conn)

        async def rescue_in(conn: Conn) -> list[tuple[int, str, str, JobState]]:
            rows = await conn.fetch(
                "WITH expired AS (SELECT id FROM fiefdom_jobs WHERE state = 'running' "
                "AND lease_expires_at < now() FOR UPDATE SKIP LOCKED) "
                "UPDATE fiefdom_jobs AS j SET "
                "state = CASE WHEN j.cancel_requested THEN 'cancelled' "
                "WHEN j.attempt >= j.max_attempts THEN 'discarded' ELSE 'available' END, "
                "finished_at = CASE WHEN j.cancel_requested OR j.attempt >= j.max_attempts "
                "THEN now() END, run_at = now(), lease_expires_at = NULL, worker = NULL, "
                "errors = j.errors || jsonb_build_array(jsonb_build_object('attempt', j.attempt, "
                "'at', extract(epoch FROM now()), 'type', 'fiefdom.LeaseExpired', 'message', "
                f"{_LEASE_EXPIRED}, 'traceback', '')), "
                "unique_key = CASE WHEN j.cancel_requested THEN "
                f"(CASE WHEN j.unique_states & {c} <> 0 THEN j.unique_key END) "
                "WHEN j.attempt >= j.max_attempts THEN "
                f"(CASE WHEN j.unique_states & {d} <> 0 THEN j.unique_key END) "
                f"ELSE (CASE WHEN j.unique_states & {a} <> 0 THEN j.unique_key END) END "
                "FROM expired WHERE j.id = expired.id "
                "RETURNING j.id, j.kind, j.queue, j.state"
            )
            # A job superseded by a waiting duplicate ends cancelled: report the
            # state the table holds, not the one the first statement wrote.
            superseded = await _restore_keys(conn, [r[0] for r in rows])
            rescued = [
                (r[0], r[1], r[2], JobState.CANCELLED if r[0] in superseded else JobState(r[3]))
                for r in rows
            ]
            await self._notify_queues(conn, _available_queues(rescued))
            return rescued

        rescued: list[tuple[int, str, str, JobState]] = await self._run(run)
        self._wake_local(_available_queues(rescued))
        return rescued

    async def promote(self) -> list[str]:
        bit = STATE_BITS[JobState.AVAILABLE]

        async def run(conn: Conn) -> list[str]:
            async with conn.transaction():
                return await promote_in(conn)

        async def promote_in(conn: Conn) -> list[str]:
            rows = await conn.fetch(
                "WITH due AS (SELECT id FROM fiefdom_jobs WHERE state IN "
                "('scheduled', 'retryable') AND run_at <= now() ORDER BY run_at LIMIT 1000 "
                "FOR UPDATE SKIP LOCKED) "
                "UPDATE fiefdom_jobs AS j SET state = 'available', "
                f"unique_key = CASE WHEN j.unique_states & {bit} <> 0 THEN j.unique_key END "
                "FROM due WHERE j.id = due.id RETURNING j.id, j.queue"
            )
            await _restore_keys(conn, [r[0] for r in rows])
            queues = sorted({r[1] for r in rows})
            await self._notify_queues(conn, queues)
            return queues

        queues: list[str] = await self._run(run)
        self._wake_local(queues)
        return queues

    async def insert_periodic(self, row: NewJob) -> bool:
        result = await self.insert_jobs([row])
        return not result[0].duplicate

    # -- administration --------------------------------------------------------------

    async def get_job(self, job_id: int) -> JobInfo | None:
        row = await self._run(
            lambda conn: conn.fetchrow(
                f"SELECT {_JOB_COLUMNS} FROM fiefdom_jobs WHERE id = $1", job_id
            )
        )
        return None if row is None else _info(row)

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        kind: str | None = None,
        after_id: int = 0,
        limit: int = 100,
    ) -> list[JobInfo]:
        where = ["id > $1"]
        args: list[object] = [after_id]
        for column, value in (("queue", queue), ("state", state), ("kind", kind)):
            if value is not None:
                args.append(str(value))
                where.append(f"{column} = ${len(args)}")
        args.append(limit)
        sql = (
            f"SELECT {_JOB_COLUMNS} FROM fiefdom_jobs WHERE {' AND '.join(where)} "
            f"ORDER BY id LIMIT ${len(args)}"
        )
        rows = await self._run(lambda conn: conn.fetch(sql, *args))
        return [_info(r) for r in rows]

    async def count_jobs(self) -> list[QueueCount]:
        rows = await self._run(
            lambda conn: conn.fetch(
                "SELECT queue, state, count(*) FROM fiefdom_jobs GROUP BY queue, state "
                "ORDER BY queue, state"
            )
        )
        return [QueueCount(queue=r[0], state=JobState(r[1]), count=r[2]) for r in rows]

    async def retry_job(self, job_id: int) -> bool:
        bit = STATE_BITS[JobState.AVAILABLE]

        async def run(conn: Conn) -> list[asyncpg.Record]:
            try:
                rows = await conn.fetch(
                    "UPDATE fiefdom_jobs SET state = 'available', run_at = now(), "
                    "finished_at = NULL, max_attempts = greatest(max_attempts, attempt + 1), "
                    "cancel_requested = false, "
                    f"unique_key = CASE WHEN unique_states & {bit} <> 0 THEN unique_digest END "
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
        bit = STATE_BITS[JobState.CANCELLED]

        async def run(conn: Conn) -> str | None:
            async with conn.transaction():
                state = await conn.fetchval(
                    "UPDATE fiefdom_jobs SET "
                    "state = CASE WHEN state = 'running' THEN state ELSE 'cancelled' END, "
                    "cancel_requested = (state = 'running'), "
                    "finished_at = CASE WHEN state = 'running' THEN NULL ELSE now() END, "
                    f"unique_key = CASE WHEN state = 'running' OR unique_states & {bit} <> 0 "
                    "THEN unique_key END "
                    "WHERE id = $1 AND state IN ('available', 'scheduled', 'retryable', "
                    "'running') RETURNING state",
                    job_id,
                )
                if state is None:
                    return await conn.fetchval(  # type: ignore[no-any-return]
                        "SELECT state FROM fiefdom_jobs WHERE id = $1", job_id
                    )
                if state == "cancelled":
                    await _restore_keys(conn, [job_id])
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

    async def prune(
        self, *, completed: float, cancelled: float, discarded: float, limit: int = 10_000
    ) -> int:
        rows = await self._run(
            lambda conn: conn.fetch(
                "DELETE FROM fiefdom_jobs WHERE id IN (SELECT id FROM fiefdom_jobs WHERE "
                "(state = 'completed' AND finished_at < now() - make_interval(secs => $1)) OR "
                "(state = 'cancelled' AND finished_at < now() - make_interval(secs => $2)) OR "
                "(state = 'discarded' AND finished_at < now() - make_interval(secs => $3)) "
                "LIMIT $4) RETURNING id",
                completed,
                cancelled,
                discarded,
                limit,
            )
        )
        return len(rows)
