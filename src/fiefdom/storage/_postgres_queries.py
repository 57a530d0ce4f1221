"""The job engine's queries on PostgreSQL (claim, finish, heartbeat, rescue,
promote, prune, LISTEN): the internal port only ``fiefdom.jobs`` uses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

import anyio
import asyncpg
import msgspec

from .._errors import StoreUnavailable
from .._log import get_logger
from ._jobs import STATE_BITS, STATE_OF, ClaimedJob, JobState, Lease, Outcome
from ._postgres import PostgresStore, restore_keys
from ._postgres_enqueue import NOTIFY_CHANNEL, notify_queues
from ._postgres_pool import DRIVER_ERRORS, PING_EVERY, close_gracefully, wrap
from ._queries import EngineQueries
from ._sql import LEASE_EXPIRED_SQL, RESCUED_STATE_SQL, state_bit_sql, unique_key_after
from ._store import Notifications

if TYPE_CHECKING:
    from ._postgres_pool import Conn

# Attempt errors, as the finish statement stores them (JSON).
_error_encoder = msgspec.json.Encoder()

log = get_logger("fiefdom.storage.postgres")

# The claim: one statement; SKIP LOCKED lets concurrent claimers pass each other. It
# skips jobs of a domain key that has a job running (that job holds no worker slot
# while it waits), and, given partitions, jobs of keys in others.
# $1 queue, $2 limit, $3 worker, $4 lease seconds, $5 partitions.
_CLAIM_SQL = (
    "WITH picked AS (SELECT k.id FROM fiefdom_jobs AS k WHERE k.state = 'available' "
    "AND k.queue = $1 {partitions}"
    # r.id <> k.id (always true) keeps the check a probe of the running-keys index
    # per candidate: PostgreSQL would otherwise read every running job once into a
    # hash, which costs a claim the whole running set.
    "AND (k.domain_key IS NULL OR NOT EXISTS (SELECT 1 FROM fiefdom_jobs AS r "
    "WHERE r.state = 'running' AND r.domain_key IS NOT NULL "
    "AND r.domain = k.domain AND r.domain_key = k.domain_key AND r.id <> k.id)) "
    # An ordered job waits for every earlier unfinished ordered job of its key.
    "AND (NOT k.ordered OR NOT EXISTS (SELECT 1 FROM fiefdom_jobs AS o "
    "WHERE o.ordered AND o.state IN ('available', 'scheduled', 'retryable', 'running') "
    "AND o.domain = k.domain AND o.domain_key = k.domain_key AND o.id < k.id)) "
    "ORDER BY k.priority, k.run_at, k.id LIMIT $2 FOR UPDATE SKIP LOCKED) "
    "UPDATE fiefdom_jobs AS j SET state = 'running', attempt = j.attempt + 1, "
    "lease_token = j.lease_token + 1, worker = $3, attempted_at = now(), "
    "lease_expires_at = now() + make_interval(secs => $4), "
    f"{unique_key_after(STATE_BITS[JobState.RUNNING], table='j.')} "
    "FROM picked WHERE j.id = picked.id "
    "RETURNING j.id, j.kind, j.queue, j.args::text, j.attempt, j.max_attempts, "
    "j.lease_token, j.domain_key, j.priority, extract(epoch FROM now() - j.run_at)::float8, "
    "j.domain, j.partition, j.snoozes"
)
CLAIM_SQL = _CLAIM_SQL.format(partitions="")
CLAIM_OWNED_SQL = _CLAIM_SQL.format(
    partitions="AND (k.partition IS NULL OR k.partition = ANY($5::smallint[])) "
)


# Whether finish must run a batch in a transaction: some job in it would re-enter a
# counted state without its unique key (restored in the same transaction), or its
# lease is stale. Uncorrelated, so it holds for all of the batch or none of it. It
# reads the rows finish has just locked (the CTE ``locked`` of _FINISH_SQL: their
# latest committed versions), not the table again.
_NEEDS_TX = (
    "SELECT 1 FROM unnest($1::bigint[], $2::bigint[], $7::smallint[]) AS x(id, token, bit) "
    "LEFT JOIN locked AS k ON k.id = x.id AND k.lease_token = x.token "
    "AND k.state = 'running' WHERE k.id IS NULL OR (k.unique_key IS NULL "
    "AND k.unique_digest IS NOT NULL AND k.unique_states & x.bit <> 0)"
)


def _available_queues(rescued: Sequence[tuple[int, str, str, JobState]]) -> list[str]:
    return sorted({queue for _, _, queue, state in rescued if state is JobState.AVAILABLE})


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

# An outcome write. Its rows are first locked in id order (as _LOCK_IN_ORDER, with
# the columns _NEEDS_TX reads), by an uncorrelated condition that PostgreSQL checks
# once, before it reads a row to update: the count reads all of the CTE, so every
# row is locked by then. (Joining the CTE instead, as _LOCK_IN_ORDER's users do,
# led the planner to rescan it once per row.) Then each row is updated where its
# lease still holds. {condition}: more of the WHERE clause. $1 ids (sorted), $2
# tokens, $3 states, $4 delays, $5 refunds (0 or 1), $6 errors (JSON text), $7 the
# new states' bits, $8 snoozes (0 or 1, added to the job's count).
_FINISH_SQL = (
    "WITH locked AS MATERIALIZED (SELECT id, lease_token, state, unique_key, unique_digest, "
    "unique_states FROM fiefdom_jobs WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE) "
    "UPDATE fiefdom_jobs AS j SET state = d.state, "
    "attempt = j.attempt - d.refund, snoozes = j.snoozes + d.snooze, "
    "run_at = CASE WHEN d.delay IS NULL THEN j.run_at "
    "ELSE now() + make_interval(secs => d.delay) END, "
    "finished_at = CASE WHEN d.state IN ('completed', 'cancelled', 'discarded') "
    "THEN now() END, "
    "errors = CASE WHEN d.error IS NULL THEN j.errors "
    "ELSE j.errors || jsonb_build_array(d.error::jsonb) END, "
    "lease_expires_at = NULL, worker = NULL, cancel_requested = false, "
    f"{unique_key_after('d.bit', table='j.')} "
    "FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::float8[], "
    "$5::integer[], $6::text[], $7::smallint[], $8::integer[]) "
    "AS d(id, token, state, delay, refund, error, bit, snooze) "
    "WHERE (SELECT count(*) FROM locked) > 0 "
    "AND j.id = d.id AND j.lease_token = d.token "
    "AND j.state = 'running' {condition}RETURNING j.id, j.queue, j.state"
)
FINISH_SQL = _FINISH_SQL.format(condition="")
FINISH_FAST_SQL = _FINISH_SQL.format(condition=f"AND NOT EXISTS ({_NEEDS_TX}) ")

# A batch of plain completions (no error, delay, refund or snooze: almost every
# batch of a busy queue) as FINISH_FAST_SQL would record it, from the ids and
# tokens alone: two arrays for the driver to encode instead of eight (a finish of
# 100 took 0.36 ms of the client's CPU, now 0.20), and an update that computes no
# per-row CASE. Same locks in the same order, same fencing, same uniqueness rule
# (the completed state's bit is a constant), and it too records nothing when a job
# of the batch needs the transaction. $1 ids (sorted), $2 tokens.
_COMPLETED_BIT = STATE_BITS[JobState.COMPLETED]
FINISH_COMPLETED_SQL = (
    "WITH locked AS MATERIALIZED (SELECT id, lease_token, state, unique_key, unique_digest, "
    "unique_states FROM fiefdom_jobs WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE) "
    "UPDATE fiefdom_jobs AS j SET state = 'completed', finished_at = now(), "
    "lease_expires_at = NULL, worker = NULL, cancel_requested = false, "
    f"{unique_key_after(_COMPLETED_BIT, table='j.')} "
    "FROM unnest($1::bigint[], $2::bigint[]) AS d(id, token) "
    "WHERE (SELECT count(*) FROM locked) > 0 "
    "AND j.id = d.id AND j.lease_token = d.token AND j.state = 'running' "
    "AND NOT EXISTS (SELECT 1 FROM unnest($1::bigint[], $2::bigint[]) AS x(id, token) "
    "LEFT JOIN locked AS k ON k.id = x.id AND k.lease_token = x.token "
    "AND k.state = 'running' WHERE k.id IS NULL OR (k.unique_key IS NULL "
    f"AND k.unique_digest IS NOT NULL AND k.unique_states & {_COMPLETED_BIT} <> 0)) "
    "RETURNING j.id, j.queue, j.state"
)


_LEASE_EXPIRED = LEASE_EXPIRED_SQL.format(
    cancel="j.cancel_requested", attempt="j.attempt", max_attempts="j.max_attempts"
)


class PostgresQueries(EngineQueries):
    """The engine's side of a ``PostgresStore``."""

    def __init__(self, store: PostgresStore) -> None:
        super().__init__(store)
        self._pg = store

    async def claim(
        self,
        queue: str,
        limit: int,
        *,
        worker: str,
        lease: float,
        partitions: Collection[int] | None = None,
    ) -> list[ClaimedJob]:
        if partitions is None:
            rows = await self._pg._run(
                lambda conn: conn.fetch(CLAIM_SQL, queue, limit, worker, lease)
            )
        else:
            owned = sorted(partitions)
            rows = await self._pg._run(
                lambda conn: conn.fetch(CLAIM_OWNED_SQL, queue, limit, worker, lease, owned)
            )
        return [ClaimedJob.from_row(r) for r in rows]

    async def finish(self, outcomes: Sequence[Outcome]) -> dict[int, JobState]:
        if not outcomes:
            return {}
        superseded: set[int] = set()
        woken: list[str] = []

        async def run(conn: Conn) -> list[asyncpg.Record]:
            # One statement, outside a transaction, records the whole batch when no
            # outcome in it brings a job back into a counted state without its
            # unique key and no lease in it is stale (almost every batch). Otherwise
            # it records nothing, and the batch runs again in a transaction that
            # also restores the keys: all or nothing, so a failure cannot leave
            # part of the batch committed, which the engine's retry would then
            # report as stale leases (no event, no outcome count, no NOTIFY).
            if all(o.plain_completion for o in outcomes):
                ordered = sorted(outcomes, key=lambda o: o.lease.job_id)
                rows = list(
                    await conn.fetch(
                        FINISH_COMPLETED_SQL,
                        [o.lease.job_id for o in ordered],
                        [o.lease.token for o in ordered],
                    )
                )
            else:
                rows = list(await update(conn, outcomes, FINISH_FAST_SQL))
            if not rows:
                async with conn.transaction():
                    rows = list(await update(conn, outcomes, FINISH_SQL))
                    superseded.update(await restore_keys(conn, [r[0] for r in rows]))
            # Rows missing from a non-empty first result lost their lease between the
            # check and the row lock (a rescue): stale, nothing left to record.
            woken[:] = sorted({r[1] for r in rows if r[2] == "available"})
            await notify_queues(conn, woken)
            return rows

        async def update(conn: Conn, outcomes: Sequence[Outcome], sql: str) -> list[asyncpg.Record]:
            # By id: heartbeats lock the same rows in the same order (_LOCK_IN_ORDER).
            outcomes = sorted(outcomes, key=lambda o: o.lease.job_id)
            return await conn.fetch(
                sql,
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
                [1 if o.snooze else 0 for o in outcomes],
            )

        rows = await self._pg._run(run)
        self._pg._wake_local(woken)
        return {r[0]: JobState.CANCELLED if r[0] in superseded else STATE_OF[r[2]] for r in rows}

    async def heartbeat(
        self, leases: Sequence[Lease], *, lease: float
    ) -> tuple[set[int], set[int]]:
        if not leases:
            return set(), set()
        # By id: outcome writes lock the same rows in the same order (_LOCK_IN_ORDER).
        leases = sorted(leases, key=lambda x: x.job_id)
        rows = await self._pg._run(
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
        async def run(conn: Conn) -> list[tuple[int, str, str, JobState]]:
            async with conn.transaction():
                return await rescue_in(conn)

        async def rescue_in(conn: Conn) -> list[tuple[int, str, str, JobState]]:
            rows = await conn.fetch(
                "WITH expired AS (SELECT id FROM fiefdom_jobs WHERE state = 'running' "
                "AND lease_expires_at < now() FOR UPDATE SKIP LOCKED) "
                "UPDATE fiefdom_jobs AS j SET "
                f"state = {RESCUED_STATE_SQL}, "
                "finished_at = CASE WHEN j.cancel_requested OR j.attempt >= j.max_attempts "
                "THEN now() END, run_at = now(), lease_expires_at = NULL, worker = NULL, "
                "errors = j.errors || jsonb_build_array(jsonb_build_object('attempt', j.attempt, "
                "'at', extract(epoch FROM now()), 'type', 'fiefdom.LeaseExpired', 'message', "
                f"{_LEASE_EXPIRED}, 'traceback', '')), "
                f"{unique_key_after(state_bit_sql(RESCUED_STATE_SQL), table='j.')} "
                "FROM expired WHERE j.id = expired.id "
                "RETURNING j.id, j.kind, j.queue, j.state"
            )
            # A job superseded by a waiting duplicate ends cancelled: report the
            # state the table holds, not the one the first statement wrote.
            superseded = await restore_keys(conn, [r[0] for r in rows])
            rescued = [
                (r[0], r[1], r[2], JobState.CANCELLED if r[0] in superseded else JobState(r[3]))
                for r in rows
            ]
            await notify_queues(conn, _available_queues(rescued))
            return rescued

        rescued: list[tuple[int, str, str, JobState]] = await self._pg._run(run)
        self._pg._wake_local(_available_queues(rescued))
        return rescued

    async def promote(self) -> list[str]:
        async def run(conn: Conn) -> list[str]:
            async with conn.transaction():
                return await promote_in(conn)

        async def promote_in(conn: Conn) -> list[str]:
            rows = await conn.fetch(
                "WITH due AS (SELECT id FROM fiefdom_jobs WHERE state IN "
                "('scheduled', 'retryable') AND run_at <= now() ORDER BY run_at LIMIT 1000 "
                "FOR UPDATE SKIP LOCKED) "
                "UPDATE fiefdom_jobs AS j SET state = 'available', "
                f"{unique_key_after(STATE_BITS[JobState.AVAILABLE], table='j.')} "
                "FROM due WHERE j.id = due.id RETURNING j.id, j.queue"
            )
            await restore_keys(conn, [r[0] for r in rows])
            queues = sorted({r[1] for r in rows})
            await notify_queues(conn, queues)
            return queues

        queues: list[str] = await self._pg._run(run)
        self._pg._wake_local(queues)
        return queues

    async def prune(
        self, *, completed: float, cancelled: float, discarded: float, limit: int = 10_000
    ) -> int:
        rows = await self._pg._run(
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

    async def listen(self, subscriber: Notifications, ready: Callable[[], None]) -> None:
        self._pg._check_open()
        try:
            conn = await asyncpg.connect(self._pg._dsn, timeout=10)
        except DRIVER_ERRORS as exc:
            self._pg._mark(False)
            raise wrap(exc, self._pg.url) from exc
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
            await conn.add_listener(NOTIFY_CHANNEL, on_jobs)
            await conn.add_listener("fiefdom_cancel", on_cancel)
            await conn.add_listener("fiefdom_queues", on_queue)
            self._pg._mark(True)
            ready()
            while True:
                with anyio.move_on_after(PING_EVERY):
                    await lost.wait()
                if lost.is_set():
                    break
                # A connection can die without a word (a network cut): ask it.
                await conn.execute("SELECT 1", timeout=PING_EVERY)
        except DRIVER_ERRORS as exc:
            self._pg._mark(False)
            raise wrap(exc, self._pg.url) from exc
        finally:
            if not conn.is_closed():
                await close_gracefully(conn, 2)
        self._pg._mark(False)
        raise StoreUnavailable(f"the notification connection to {self._pg.url} was lost")
