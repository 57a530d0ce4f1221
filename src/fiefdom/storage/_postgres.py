"""The PostgreSQL backend (asyncpg): a connection pool, the engine's batches passed
as arrays and expanded with ``unnest`` so a batch is one statement (an enqueue's
as one JSON array of rows, or a COPY when large), claims with
``FOR UPDATE SKIP LOCKED``, and LISTEN/NOTIFY for wake-ups across processes.
Times come from the database's clock (``now()``), so engines on several
machines agree on lease expiry. The pool and its connections are in
``_postgres_pool``, the enqueue's statements in ``_postgres_enqueue``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import asyncpg

from .._errors import UniqueConflict
from .._log import get_logger
from . import _migrations
from ._jobs import STATE_BITS, Enqueued, JobInfo, JobState, QueueCount
from ._listing import POSTGRES, count_listed_query, list_jobs_query, retry_candidates_query
from ._postgres_enqueue import insert_rows, notify_queues
from ._postgres_pool import DRIVER_ERRORS, PostgresPool, PostgresTransaction, wrap
from ._rows import NewJob, available_queues
from ._sql import (
    CANCELLED_STATE_SQL,
    SUPERSEDED_MESSAGE,
    check_bigint,
    job_info,
    state_bit_sql,
    unique_key_after,
)
from ._store import (
    BULK_LIMIT,
    COUNT_CAP,
    FINAL_STATES,
    Transaction,
    check_bulk,
)

if TYPE_CHECKING:
    from ._postgres_pool import Conn

log = get_logger("fiefdom.storage.postgres")

_MIGRATION_LOCK = 0x6669_6566_646F_6D  # an arbitrary constant: "fiefdom" in hex


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


_JOB_COLUMNS = (
    "id, kind, queue, state, priority, args::text AS args, domain_key, attempt, "
    "max_attempts, errors::text AS errors, worker, cancel_requested, "
    "extract(epoch FROM created_at)::float8 AS created_at, "
    "extract(epoch FROM run_at)::float8 AS run_at, "
    "extract(epoch FROM attempted_at)::float8 AS attempted_at, "
    "extract(epoch FROM finished_at)::float8 AS finished_at, snoozes"
)


class PostgresStore(PostgresPool):
    """``postgresql://...``: an asyncpg pool; broken connections are replaced on
    the next use, and every operation that cannot reach the database raises
    StoreUnavailable and marks the store unhealthy until one succeeds."""

    backend: Literal["sqlite", "postgres"] = "postgres"
    notifies_processes = True

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

    # -- enqueueing ------------------------------------------------------------------

    async def _insert_rows(
        self, rows: Sequence[NewJob], *, tx: Transaction | None = None
    ) -> list[Enqueued]:
        self._check_tx(tx)
        if not rows:
            return []
        if tx is None:
            # No transaction of its own but that of a batch split into statements,
            # which it commits: the lane's contract.
            result: list[Enqueued] = await self._run_lane(lambda conn: self._insert(conn, rows))
        else:
            assert isinstance(tx, PostgresTransaction)
            try:
                result = await self._insert(tx.conn, rows)
            except DRIVER_ERRORS as exc:
                raise wrap(exc, self.url) from exc
        if tx is None:
            # Committed: wake this process's engines without waiting for NOTIFY.
            self._wake_local(available_queues(rows))
        return result

    async def _insert(self, conn: Conn, rows: Sequence[NewJob]) -> list[Enqueued]:
        # The insert notifies engines (at commit) of queues with available jobs.
        inserted = await insert_rows(conn, rows)
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
            dialect=POSTGRES,
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
        sql, args = count_listed_query(
            queue=queue,
            state=state,
            kind=kind,
            key=key,
            since=None if since is None else since.timestamp(),
            cap=cap,
            dialect=POSTGRES,
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
        bit = STATE_BITS[JobState.AVAILABLE]
        sql, args = retry_candidates_query(
            state=state,
            queue=queue,
            kind=kind,
            limit=limit,
            dialect=POSTGRES,
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
                await notify_queues(conn, queues)
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
            await notify_queues(conn, [r[0] for r in rows])
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
