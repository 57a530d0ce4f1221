"""The job engine's queries on SQLite (claim, finish, heartbeat, rescue, promote,
prune): the internal port only ``fiefdom.jobs`` uses. Every write runs on the
store's engine connection in a ``BEGIN IMMEDIATE`` transaction; claims and finishes
that wait for it together share one (``SQLiteStore._grouped``)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection, Sequence
from typing import Any

import msgspec

from .._log import get_logger
from ._jobs import STATE_BITS, STATE_OF, ClaimedJob, JobState, Lease, Outcome
from ._queries import EngineQueries
from ._sql import LEASE_EXPIRED_SQL, RESCUED_STATE_SQL, state_bit_sql, unique_key_after
from ._sqlite import SQLiteStore, restore_keys, restore_keys_sync

log = get_logger("fiefdom.storage.sqlite")

# The claim: one statement inside BEGIN IMMEDIATE (SQLite has one writer at a time).
# It skips jobs of a domain key that has a job running (that job holds no worker
# slot while it waits), and, given a list of partitions, jobs of keys in others.
# Parameters: worker, now, lease expiry, queue, limit, partitions (JSON array).
_CLAIM_SQL = (
    "UPDATE fiefdom_jobs SET state = 'running', attempt = attempt + 1, "
    "lease_token = lease_token + 1, worker = ?1, attempted_at = ?2, "
    "lease_expires_at = ?3, "
    f"{unique_key_after(STATE_BITS[JobState.RUNNING])} "
    "WHERE id IN (SELECT j.id FROM fiefdom_jobs AS j INDEXED BY fiefdom_jobs_claim "
    "WHERE j.state = 'available' AND j.queue = ?4 {partitions}"
    "AND (j.domain_key IS NULL OR NOT EXISTS (SELECT 1 FROM fiefdom_jobs AS r "
    "WHERE r.state = 'running' AND r.domain_key = j.domain_key AND r.domain = j.domain)) "
    "AND (NOT j.ordered OR NOT EXISTS (SELECT 1 FROM fiefdom_jobs AS o "
    "WHERE o.ordered AND o.state IN ('available', 'scheduled', 'retryable', 'running') "
    "AND o.domain = j.domain AND o.domain_key = j.domain_key AND o.id < j.id)) "
    "ORDER BY j.priority, j.run_at, j.id LIMIT ?5) "
    "RETURNING id, kind, queue, args, attempt, max_attempts, lease_token, "
    "domain_key, priority, ?2 - run_at, domain, partition, snoozes"
)
CLAIM_SQL = _CLAIM_SQL.format(partitions="")
CLAIM_OWNED_SQL = _CLAIM_SQL.format(
    partitions="AND (j.partition IS NULL OR j.partition IN (SELECT value FROM json_each(?6))) "
)


# The finish: every outcome of a batch in one statement (a JSON array of rows).
# Parameters: now, the batch.
_FINISH_SQL = (
    "UPDATE fiefdom_jobs AS j SET state = d.state, attempt = j.attempt - d.refund, "
    "snoozes = j.snoozes + d.snooze, "
    "run_at = CASE WHEN d.delay IS NULL THEN j.run_at ELSE ?1 + d.delay END, "
    "finished_at = CASE WHEN d.state IN ('completed', 'cancelled', 'discarded') "
    "THEN ?1 END, "
    "errors = CASE WHEN d.error IS NULL THEN j.errors "
    "ELSE json_insert(j.errors, '$[#]', json(d.error)) END, "
    "lease_expires_at = NULL, worker = NULL, cancel_requested = 0, "
    f"{unique_key_after('d.bit', table='j.')} "
    "FROM (SELECT value ->> 0 AS id, value ->> 1 AS token, value ->> 2 AS state, "
    "value ->> 3 AS delay, value ->> 4 AS refund, value ->> 5 AS error, "
    "value ->> 6 AS bit, value ->> 7 AS snooze FROM json_each(?2)) AS d "
    # +j.state: look each job up by id, never walk every running job.
    "WHERE j.id = d.id AND j.lease_token = d.token AND +j.state = 'running' "
    "RETURNING id, queue, state, unique_digest IS NOT NULL"
)


# The finish of a batch whose every outcome is a plain completion (no error, delay,
# refund or snooze: what a drain writes): the same changes, fencing and uniqueness
# rule as _FINISH_SQL's for such rows, without extracting eight fields per row from
# the batch (a sixth less time). Parameters: now, the batch of [id, token] pairs.
_COMPLETE_SQL = (
    "UPDATE fiefdom_jobs SET state = 'completed', finished_at = ?1, "
    "lease_expires_at = NULL, worker = NULL, cancel_requested = 0, "
    f"{unique_key_after(STATE_BITS[JobState.COMPLETED])} "
    "WHERE +state = 'running' AND (id, lease_token) IN "
    "(SELECT value ->> 0, value ->> 1 FROM json_each(?2)) "
    "RETURNING id, queue, state, unique_digest IS NOT NULL"
)


_LEASE_EXPIRED = LEASE_EXPIRED_SQL.format(
    cancel="cancel_requested", attempt="attempt", max_attempts="max_attempts"
)


def _keyed(rows: Sequence[Sequence[Any]], column: int = 3) -> list[int]:
    """The ids (column 0) of the rows whose ``column`` says the job has a unique key:
    only those can take a key back or be superseded (``restore_keys``), so a batch
    without one skips its two statements."""
    return [r[0] for r in rows if r[column]]


class SQLiteQueries(EngineQueries):
    """The engine's side of a ``SQLiteStore``."""

    def __init__(self, store: SQLiteStore) -> None:
        super().__init__(store)
        self._sqlite = store

    async def claim(
        self,
        queue: str,
        limit: int,
        *,
        worker: str,
        lease: float,
        partitions: Collection[int] | None = None,
    ) -> list[ClaimedJob]:
        extra: tuple[str, ...] = ()
        if partitions is None:
            sql = CLAIM_SQL
        else:
            sql, extra = CLAIM_OWNED_SQL, (msgspec.json.encode(sorted(partitions)).decode(),)

        def work(conn: sqlite3.Connection, now: float) -> list[Any]:
            # ``now`` is read once the write lock is held: BEGIN IMMEDIATE may have
            # waited for other writers, and a lease counted from before that wait
            # could already have expired when the claim commits.
            return conn.execute(sql, (worker, now, now + lease, queue, limit, *extra)).fetchall()

        rows = await self._sqlite._grouped(work, self._give_back)
        return [ClaimedJob.from_row(r) for r in rows]

    async def _give_back(self, rows: list[Any]) -> None:
        """The jobs of a claim whose caller was cancelled once it had run: back to
        the queue as they were (their attempt refunded, their place kept)."""
        if rows:
            outcomes = [
                Outcome(lease=Lease(r[0], r[6]), state=JobState.AVAILABLE, refund=True)
                for r in rows
            ]
            await self.finish(outcomes)
            log.info("a cancelled claim gave its jobs back", ids=[r[0] for r in rows])

    async def finish(self, outcomes: Sequence[Outcome]) -> dict[int, JobState]:
        if not outcomes:
            return {}
        sql = _COMPLETE_SQL if all(o.plain_completion for o in outcomes) else _FINISH_SQL
        if sql is _COMPLETE_SQL:
            batch = msgspec.json.encode([(o.lease.job_id, o.lease.token) for o in outcomes])
        else:
            batch = msgspec.json.encode(
                [
                    (
                        o.lease.job_id,
                        o.lease.token,
                        o.state.value,
                        o.delay,
                        1 if o.refund else 0,
                        o.error,
                        STATE_BITS[o.state],
                        1 if o.snooze else 0,
                    )
                    for o in outcomes
                ]
            )
        text = batch.decode()

        def work(conn: sqlite3.Connection, now: float) -> tuple[list[Any], set[int]]:
            rows = conn.execute(sql, (now, text)).fetchall()
            return rows, restore_keys_sync(conn, _keyed(rows), now)

        rows, superseded = await self._sqlite._grouped(work)
        if superseded:
            log.info("superseded jobs by waiting duplicates", ids=sorted(superseded))
        woken = {r[1] for r in rows if r[2] == "available"}
        if woken:
            self._sqlite._wake_local(sorted(woken))
        return {r[0]: JobState.CANCELLED if r[0] in superseded else STATE_OF[r[2]] for r in rows}

    async def heartbeat(
        self, leases: Sequence[Lease], *, lease: float
    ) -> tuple[set[int], set[int]]:
        if not leases:
            return set(), set()
        batch = msgspec.json.encode([(x.job_id, x.token) for x in leases]).decode()
        async with self._sqlite._tx() as tx:
            rows = await tx.raw(
                "UPDATE fiefdom_jobs SET lease_expires_at = ? WHERE +state = 'running' AND "
                "(id, lease_token) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?)) "
                "RETURNING id, cancel_requested",
                (time.time() + lease, batch),
            )
        return {r[0] for r in rows}, {r[0] for r in rows if r[1]}

    async def rescue(self) -> list[tuple[int, str, str, JobState]]:
        async with self._sqlite._tx() as tx:
            now = time.time()  # once the write lock is held (see claim)
            rows = await tx.raw(
                # INDEXED BY: SQLite has no statistics to prefer the partial index
                # of running jobs by lease expiry over a listing index.
                "UPDATE fiefdom_jobs INDEXED BY fiefdom_jobs_lease SET "
                f"state = {RESCUED_STATE_SQL}, "
                "finished_at = CASE WHEN cancel_requested OR attempt >= max_attempts "
                "THEN ?1 END, run_at = ?1, lease_expires_at = NULL, worker = NULL, "
                "errors = json_insert(errors, '$[#]', json_object('attempt', attempt, "
                "'at', ?1, 'type', 'fiefdom.LeaseExpired', 'message', "
                f"{_LEASE_EXPIRED}, 'traceback', '')), "
                f"{unique_key_after(state_bit_sql(RESCUED_STATE_SQL))} "
                "WHERE state = 'running' AND lease_expires_at < ?1 "
                "RETURNING id, kind, queue, state, unique_digest IS NOT NULL",
                (now,),
            )
            # A job superseded by a waiting duplicate ends cancelled: report the
            # state the table holds, not the one the first statement wrote.
            superseded = await restore_keys(tx, _keyed(rows, 4), now)
            rescued = [
                (r[0], r[1], r[2], JobState.CANCELLED if r[0] in superseded else JobState(r[3]))
                for r in rows
            ]
            tx.wake.update(r[2] for r in rescued if r[3] is JobState.AVAILABLE)
        return rescued

    async def promote(self) -> list[str]:
        async with self._sqlite._tx() as tx:
            now = time.time()
            rows = await tx.raw(
                "UPDATE fiefdom_jobs SET state = 'available', "
                f"{unique_key_after(STATE_BITS[JobState.AVAILABLE])} "
                "WHERE id IN (SELECT id FROM fiefdom_jobs INDEXED BY fiefdom_jobs_due "
                "WHERE state IN "
                "('scheduled', 'retryable') AND run_at <= ? ORDER BY run_at LIMIT 1000) "
                "RETURNING id, queue, unique_digest IS NOT NULL",
                (now,),
            )
            await restore_keys(tx, _keyed(rows, 2), now)
            queues = sorted({r[1] for r in rows})
            tx.wake.update(queues)
        return queues

    async def prune(
        self, *, completed: float, cancelled: float, discarded: float, limit: int = 10_000
    ) -> int:
        now = time.time()
        async with self._sqlite._tx() as tx:
            rows = await tx.raw(
                "DELETE FROM fiefdom_jobs WHERE id IN (SELECT id FROM fiefdom_jobs WHERE "
                "(state = 'completed' AND finished_at < ?) OR "
                "(state = 'cancelled' AND finished_at < ?) OR "
                "(state = 'discarded' AND finished_at < ?) LIMIT ?) RETURNING id",
                (now - completed, now - cancelled, now - discarded, limit),
            )
        return len(rows)
