"""Every listing and claim query is backed by an index (DESIGN, Storage): PostgreSQL's
plans of the statements the store and the engine really run, read on a table of
100,000 jobs; and SQLite's plans of the listings, newest first (what ``fiefdom jobs
ls`` shows), with each filter.

The statements are not copied here: each operation (a claim, a listing with each
filter combination, a rescue, ...) runs for real against a small database while the
connections log what they execute, so the test follows the SQL wherever it changes.
Each logged statement is then run under ``EXPLAIN (ANALYZE, FORMAT JSON)`` with the
same arguments on the big table, inside a transaction that is rolled back. A
selective statement must reach ``fiefdom_jobs`` through indexes only and read a
bounded slice of it (rows returned plus rows thrown away by filters).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from fiefdom import UniqueConflict
from fiefdom.jobs import Retention
from fiefdom.storage import (
    AttemptError,
    Job,
    JobOptions,
    JobState,
    Lease,
    Outcome,
    Store,
    Unique,
    engine_queries,
    open_store,
)

pytestmark = pytest.mark.slow

T = TypeVar("T")

ROWS = 100_000
# A selective statement may read at most this many rows of the table (2% of it): a
# page of a listing, a claim batch, the due or expired jobs, a few ids.
READ_LIMIT = ROWS // 50

# Filter values that are rare in the big table (see BIG_TABLE): what a selective
# listing asks for.
RARE_QUEUE = "rare"  # 1% of the rows
RARE_KIND = "rare-kind"  # 0.2%
RARE_STATE = JobState.DISCARDED  # 0.5%
# A state most jobs are in: listed across every queue (migration 0014 lists a state
# queue by queue), it must still be read a page at a time, for the rare queue too.
COMMON_STATE = JobState.COMPLETED  # 85%
AFTER_ID = ROWS // 2  # the second half of the table (keyset pagination)
CLAIM_QUEUE = "q1"  # one of ten busy queues, with thousands of available jobs

# The big table: a long-running system's history. Most jobs completed (within the
# retention, 1% older than it); 5% available, 5% scheduled or retryable (a few due),
# 2% running (a few with expired leases), the rest cancelled or discarded; one job in
# ten has a unique key. Columns from _migrations/postgres/*.sql.
BIG_TABLE = f"""
INSERT INTO fiefdom_jobs (kind, queue, state, priority, args, domain_key, attempt,
    max_attempts, lease_token, worker, lease_expires_at, errors, unique_key, unique_states,
    unique_digest, created_at, run_at, attempted_at, finished_at)
SELECT
    CASE WHEN i % 500 = 7 THEN '{RARE_KIND}' ELSE 'kind-' || (i % 20) END,
    CASE WHEN i % 100 = 3 THEN '{RARE_QUEUE}' ELSE 'q' || (i % 10) END,
    st, 0, jsonb_build_object('n', i),
    CASE WHEN i % 3 = 0 THEN 'key-' || (i % 1000) END,
    CASE WHEN st IN ('available', 'scheduled') THEN 0 ELSE 1 END,
    5,
    CASE WHEN st IN ('available', 'scheduled') THEN 0 ELSE 1 END,
    CASE WHEN st = 'running' THEN 'plan-worker' END,
    CASE WHEN st = 'running' THEN
        CASE WHEN i % 50 = 0 THEN now() - interval '1 minute' ELSE now() + interval '1 hour' END
    END,
    '[]'::jsonb,
    CASE WHEN i % 10 = 5 AND st NOT IN ('cancelled', 'discarded')
        THEN sha256(('plan-' || i)::bytea) END,
    CASE WHEN i % 10 = 5 THEN 31 ELSE 0 END,
    CASE WHEN i % 10 = 5 THEN sha256(('plan-' || i)::bytea) END,
    now() - interval '2 days',
    CASE WHEN st IN ('scheduled', 'retryable') THEN
        CASE WHEN i % 20 = 0 THEN now() - interval '1 second' ELSE now() + interval '1 hour' END
    ELSE now() - (i % 1440) * interval '1 minute' END,
    CASE WHEN st NOT IN ('available', 'scheduled') THEN now() - interval '1 hour' END,
    CASE WHEN st IN ('completed', 'cancelled', 'discarded') THEN
        CASE WHEN i % 100 = 1 THEN now() - interval '30 days'
        ELSE now() - (i % 720) * interval '1 minute' END
    END
FROM (
    SELECT i, CASE
        WHEN i % 1000 < 850 THEN 'completed'
        WHEN i % 1000 < 900 THEN 'available'
        WHEN i % 1000 < 930 THEN 'scheduled'
        WHEN i % 1000 < 950 THEN 'retryable'
        WHEN i % 1000 < 970 THEN 'running'
        WHEN i % 1000 < 995 THEN 'cancelled'
        ELSE 'discarded' END AS st
    FROM generate_series(1, {ROWS}) AS g(i)
) AS s
"""

# A statement that reads or writes the jobs table (not a NOTIFY naming its channel).
TOUCHES_JOBS = re.compile(r"\b(FROM|UPDATE|INTO|JOIN)\s+fiefdom_jobs\b", re.IGNORECASE)


# -- the operations whose statements are checked ---------------------------------------


class Seed(Job):
    options = JobOptions(kind="kind-1", queue=CLAIM_QUEUE)
    n: int


class Keyed(Job):
    """Unique while waiting or done, not while running: a claim releases its key and a
    retry takes it back (the statements that restore keys)."""

    options = JobOptions(
        kind="kind-2",
        queue="q2",
        unique=Unique(
            states=frozenset(
                {JobState.AVAILABLE, JobState.SCHEDULED, JobState.RETRYABLE, JobState.COMPLETED}
            )
        ),
    )
    n: int


class Held(Job):
    """Unique until it completes: a duplicate can take the key of a completed one."""

    options = JobOptions(
        kind="kind-3",
        queue="q3",
        unique=Unique(
            states=frozenset(
                {JobState.AVAILABLE, JobState.SCHEDULED, JobState.RUNNING, JobState.RETRYABLE}
            )
        ),
    )
    n: int


FILTERS = ("queue", "state", "kind", "after_id")
FILTER_VALUES: dict[str, object] = {
    "queue": RARE_QUEUE,
    "state": RARE_STATE,
    "kind": RARE_KIND,
    "after_id": AFTER_ID,
}


def listing_name(filters: tuple[str, ...], *, newest_first: bool = False) -> str:
    return f"list_jobs({','.join(('newest_first',) * newest_first + filters)})"


LISTINGS = [
    tuple(f for i, f in enumerate(FILTERS) if mask & (1 << i)) for mask in range(1 << len(FILTERS))
]
# Running jobs are in no listing index (migration 0011): a listing of them reads them
# all through the lease index, and sorts them. Their number is bounded by the
# workers' slots (here RUNNING_ROWS, 2% of the table, an exaggeration), and what
# such a listing reads besides them is bounded as every listing's is.
RUNNING_ROWS = ROWS * 2 // 100
RUNNING_LISTINGS = [f for f in LISTINGS if "state" not in f]
# What count_listed counts by (the listing filters that have an index); each count
# stops at COUNTED rows.
# (count_listed() of every job reads the first COUNTED rows of the table, any of them.)
COUNTS = [f for f in LISTINGS if f and "after_id" not in f]
COUNTED = READ_LIMIT // 2


def running_listing_name(filters: tuple[str, ...], *, newest_first: bool = False) -> str:
    return listing_name(("running", *filters), newest_first=newest_first)


def common_state_name(*, newest_first: bool = False) -> str:
    return listing_name(("common state",), newest_first=newest_first)


def count_name(filters: tuple[str, ...], *, running: bool = False) -> str:
    return f"count_listed({','.join(('running',) * running + filters)})"


@dataclasses.dataclass
class Captured:
    """The statements each operation ran: (sql, args), in order, distinct."""

    statements: dict[str, list[tuple[str, tuple[Any, ...]]]] = dataclasses.field(
        default_factory=dict
    )
    log: list[tuple[str, tuple[Any, ...]]] = dataclasses.field(default_factory=list)

    async def record(self, name: str, operation: Callable[[], Awaitable[T]]) -> T:
        # asyncpg schedules its query loggers (loop.call_soon) as each query ends, and
        # the loop runs scheduled callbacks in order: once this task, scheduled after
        # them, goes on, those of every query that has ended have run. Before the mark,
        # so that the queries run before this operation are not taken for its own
        # (an enqueue just before it); after the operation, for all of its own.
        await asyncio.sleep(0)
        mark = len(self.log)
        result = await operation()
        await asyncio.sleep(0)
        seen = self.statements.setdefault(name, [])
        for sql, args in self.log[mark:]:
            if TOUCHES_JOBS.search(sql) and (sql, args) not in seen:
                seen.append((sql, args))
        return result


async def run_operations(store: Store, captured: Captured) -> None:
    """Every operation of the store and of the engine's port that reads or writes the
    jobs table, run once on ``store`` (a small database) and recorded."""
    queries = engine_queries(store)
    record = captured.record

    await store.enqueue_many([Seed(n=n) for n in range(4)])
    claimed = await record(
        "claim", lambda: queries.claim(CLAIM_QUEUE, 10, worker="plan", lease=600.0)
    )
    assert len(claimed) == 4
    leases = [Lease(job.id, job.lease_token) for job in claimed]
    await record("heartbeat", lambda: queries.heartbeat(leases, lease=600.0))
    error = AttemptError(attempt=1, at=0.0, type="builtins.RuntimeError", message="failed")
    await record(
        "finish",
        lambda: queries.finish(
            [
                Outcome(lease=leases[0], state=JobState.COMPLETED),
                Outcome(lease=leases[1], state=JobState.RETRYABLE, delay=60.0, error=error),
            ]
        ),
    )
    await record("get_job", lambda: store.get_job(leases[0].job_id))
    await record("retry_job", lambda: store.retry_job(leases[0].job_id))
    await record("cancel_job(running)", lambda: store.cancel_job(leases[2].job_id))
    waiting = await store.enqueue(Seed(n=10))
    await record("cancel_job(waiting)", lambda: store.cancel_job(waiting.id or 0))

    # A job that comes back into a state its uniqueness counts takes its key back.
    await store.enqueue(Keyed(n=1))
    [keyed] = await queries.claim("q2", 10, worker="plan", lease=600.0)
    await record(
        "finish(restoring keys)",
        lambda: queries.finish(
            [
                Outcome(
                    lease=Lease(keyed.id, keyed.lease_token),
                    state=JobState.RETRYABLE,
                    delay=60.0,
                    error=error,
                )
            ]
        ),
    )
    duplicate = await record("enqueue(a duplicate)", lambda: store.enqueue(Keyed(n=1)))
    assert duplicate.duplicate

    # Retrying a job whose key a duplicate took: the holder is looked up.
    await store.enqueue(Held(n=1))
    [held] = await queries.claim("q3", 10, worker="plan", lease=600.0)
    await queries.finish(
        [Outcome(lease=Lease(held.id, held.lease_token), state=JobState.COMPLETED)]
    )
    await store.enqueue(Held(n=1))

    async def retry_held() -> None:
        with pytest.raises(UniqueConflict):
            await store.retry_job(held.id)

    await record("retry_job(key held by a duplicate)", retry_held)

    # A lease that expires at once, and a job due at once: rescued and promoted.
    await store.enqueue(Keyed(n=2), queue="q4")
    await queries.claim("q4", 10, worker="plan", lease=0.001)
    await store.enqueue(Keyed(n=3), delay=0.001)
    for name, operation in (("rescue", queries.rescue), ("promote", queries.promote)):
        for _ in range(1000):
            probe = Captured()
            probe.log = captured.log
            if await probe.record(name, operation):
                captured.statements[name] = probe.statements[name]
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"{name} found nothing to do")

    retention = Retention()
    await record(
        "prune",
        lambda: queries.prune(
            completed=retention.completed,
            cancelled=retention.cancelled,
            discarded=retention.discarded,
        ),
    )
    for filters in LISTINGS:
        values: dict[str, Any] = {f: FILTER_VALUES[f] for f in filters}
        await record(listing_name(filters), functools.partial(store.list_jobs, **values))
        # Newest first, as the command line lists: after_id is then the id the ids
        # go down from.
        await record(
            listing_name(filters, newest_first=True),
            functools.partial(store.list_jobs, newest_first=True, **values),
        )
    for newest_first in (False, True):
        await record(
            common_state_name(newest_first=newest_first),
            functools.partial(store.list_jobs, state=COMMON_STATE, newest_first=newest_first),
        )
    await record(
        "count_listed(common state)",
        functools.partial(store.count_listed, state=COMMON_STATE, cap=COUNTED),
    )
    await record("retry_jobs(state)", functools.partial(store.retry_jobs, state=RARE_STATE))
    for filters in RUNNING_LISTINGS:
        values = {f: FILTER_VALUES[f] for f in filters}
        for newest_first in (False, True):
            await record(
                running_listing_name(filters, newest_first=newest_first),
                functools.partial(
                    store.list_jobs, state=JobState.RUNNING, newest_first=newest_first, **values
                ),
            )
    for filters in COUNTS:
        values = {f: FILTER_VALUES[f] for f in filters}
        await record(
            count_name(filters), functools.partial(store.count_listed, cap=COUNTED, **values)
        )
        if "state" not in filters:
            await record(
                count_name(filters, running=True),
                functools.partial(
                    store.count_listed, state=JobState.RUNNING, cap=COUNTED, **values
                ),
            )
    await record("count_jobs", store.count_jobs)


# -- fixtures --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plans:
    url: str  # the big table's schema
    statements: dict[str, list[tuple[str, tuple[Any, ...]]]]


def _schema_url(server: str, schema: str) -> str:
    return f"{server}?search_path={schema}"


async def _prepare(server: str, big: str, small: str) -> Plans:
    import asyncpg

    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f"CREATE SCHEMA {big}; CREATE SCHEMA {small}")
    finally:
        await admin.close()

    store = open_store(_schema_url(server, big))
    await store.open(migrate=True)
    try:
        async with store.transaction() as tx:
            await tx.execute(BIG_TABLE)
        async with store.transaction() as tx:
            await tx.execute("ANALYZE fiefdom_jobs")
            count = await tx.fetchval("SELECT count(*) FROM fiefdom_jobs")
        assert count == ROWS
    finally:
        await store.close()

    captured = Captured()
    real_create_pool = asyncpg.create_pool

    async def log_queries(conn: Any) -> None:
        conn.add_query_logger(lambda q: captured.log.append((q.query, tuple(q.args or ()))))

    def logging_pool(*args: Any, **kwargs: Any) -> Any:
        assert "init" not in kwargs, "the store now sets up its connections: chain its init"
        return real_create_pool(*args, init=log_queries, **kwargs)

    real_connect = asyncpg.connect

    async def logging_connect(*args: Any, **kwargs: Any) -> Any:
        conn = await real_connect(*args, **kwargs)
        await log_queries(conn)
        return conn

    # Instrumentation, not a stand-in: the store's real pool, whose connections also
    # log what they execute, and its connection outside the pool (the enqueue's).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(asyncpg, "create_pool", logging_pool)
        patch.setattr(asyncpg, "connect", logging_connect)
        store = open_store(_schema_url(server, small))
        await store.open(migrate=True)
        # Inside: the store opens its own connection at its first enqueue.
        try:
            await run_operations(store, captured)
        finally:
            await store.close()
    return Plans(url=_schema_url(server, big), statements=captured.statements)


@pytest.fixture(scope="module")
def plans(postgres_server: str) -> Iterator[Plans]:
    """A schema holding the big table, and the statements of every operation."""
    tag = uuid.uuid4().hex[:10]
    big, small = f"plans_{tag}", f"plans_capture_{tag}"
    try:
        yield asyncio.run(_prepare(postgres_server, big, small))
    finally:

        async def drop() -> None:
            import asyncpg

            conn = await asyncpg.connect(postgres_server)
            try:
                await conn.execute(
                    f"DROP SCHEMA IF EXISTS {big} CASCADE; DROP SCHEMA IF EXISTS {small} CASCADE"
                )
            finally:
                await conn.close()

        asyncio.run(drop())


@pytest.fixture
async def big_store(plans: Plans) -> AsyncIterator[Store]:
    store = open_store(plans.url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


# -- reading plans ---------------------------------------------------------------------


class _Rollback(Exception):
    """Leaves the transaction of an EXPLAIN ANALYZE, undoing what the statement did."""


async def explain(store: Store, sql: str, args: tuple[Any, ...]) -> dict[str, Any]:
    """The executed plan of ``sql`` with ``args``; whatever it changed is rolled back."""
    plan: dict[str, Any] = {}
    try:
        async with store.transaction() as tx:
            rows = await tx.fetch("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
            plan = json.loads(rows[0][0])[0]["Plan"]
            raise _Rollback
    except _Rollback:
        pass
    return plan


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


def job_scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The nodes that read rows of fiefdom_jobs (not the one writing them)."""
    return [
        n
        for n in nodes(plan)
        if n.get("Relation Name") == "fiefdom_jobs" and n["Node Type"] != "ModifyTable"
    ]


def rows_read(scan: dict[str, Any]) -> int:
    """Rows a scan took from the table: kept, and thrown away by its filters."""
    per_loop = (
        scan["Actual Rows"]
        + scan.get("Rows Removed by Filter", 0)
        + scan.get("Rows Removed by Index Recheck", 0)
    )
    return int(per_loop * scan["Actual Loops"])


def describe(plan: dict[str, Any], depth: int = 0) -> str:
    where = plan.get("Index Name") or plan.get("Relation Name") or ""
    cond = plan.get("Index Cond") or plan.get("Filter") or ""
    line = (
        f"{'  ' * depth}{plan['Node Type']} {where} {cond} "
        f"rows={plan.get('Actual Rows')} removed={plan.get('Rows Removed by Filter', 0)} "
        f"loops={plan.get('Actual Loops')}"
    )
    return "\n".join([line, *(describe(c, depth + 1) for c in plan.get("Plans", ()))])


# -- the cases -------------------------------------------------------------------------


OPERATIONS = [
    "claim",
    "heartbeat",
    "finish",
    "finish(restoring keys)",
    "get_job",
    "retry_job",
    "retry_job(key held by a duplicate)",
    "cancel_job(running)",
    "cancel_job(waiting)",
    "enqueue(a duplicate)",
    "rescue",
    "promote",
    *(listing_name(f) for f in LISTINGS),
    *(listing_name(f, newest_first=True) for f in LISTINGS),
    *(running_listing_name(f) for f in RUNNING_LISTINGS),
    *(running_listing_name(f, newest_first=True) for f in RUNNING_LISTINGS),
    *(count_name(f) for f in COUNTS),
    *(count_name(f, running=True) for f in COUNTS if "state" not in f),
    common_state_name(),
    common_state_name(newest_first=True),
    "count_listed(common state)",
    "retry_jobs(state)",
]
# Statements that read the running jobs (of a listing or a count): through the lease
# index, every one of them; the rest of what they read is bounded as for any other.
LEASE_INDEX = "fiefdom_jobs_lease"
READS_RUNNING = {n for n in OPERATIONS if n.startswith(("list_jobs(", "count_listed("))}
# Statements that take the first jobs in an order (a claim batch, the due jobs): the
# order must come straight from an index, so that a backlog of any size is never read
# and sorted to take the first few.
ORDERED = {"claim", "promote"}
# Checked on their own below: prune (its selection is what must be indexed) and
# count_jobs (it reads every row by design).
SPECIAL = ["prune", "count_jobs"]


def _param(name: str) -> Any:
    return pytest.param(name, id=name)


@pytest.mark.postgres
def test_every_operation_is_covered(plans: Plans) -> None:
    """Each operation checked here ran statements on the jobs table, none is unchecked,
    and each holds only its own statements."""
    assert sorted(plans.statements) == sorted(OPERATIONS + SPECIAL)
    empty = [name for name, statements in plans.statements.items() if not statements]
    assert empty == []
    # Each operation holds its own statements, not those of an enqueue run just before
    # it: only the enqueue inserts jobs.
    inserting = [
        name
        for name, statements in plans.statements.items()
        if any("INSERT INTO FIEFDOM_JOBS" in sql.upper() for sql, _ in statements)
    ]
    assert inserting == ["enqueue(a duplicate)"]


@pytest.mark.postgres
@pytest.mark.parametrize("name", [_param(n) for n in OPERATIONS])
async def test_a_selective_statement_reads_the_jobs_table_through_an_index(
    big_store: Store, plans: Plans, name: str
) -> None:
    """The statements of this operation never seq-scan fiefdom_jobs, read at most 2% of its
    100,000 rows (a listing or a count besides the running jobs it reads through the
    lease index, see RUNNING_ROWS), and (a claim, a promotion) take their order from an
    index, unsorted."""
    problems = []
    for sql, args in plans.statements[name]:
        plan = await explain(big_store, sql, args)
        scans = job_scans(plan)
        seq = [s for s in scans if s["Node Type"] == "Seq Scan"]
        running = [s for s in scans if name in READS_RUNNING and s.get("Index Name") == LEASE_INDEX]
        read = sum(rows_read(s) for s in scans if s not in running)
        read_running = sum(rows_read(s) for s in running)
        takes_first = name in ORDERED and "ORDER BY" in sql and "LIMIT" in sql
        sorts = [n for n in nodes(plan) if "Sort" in n["Node Type"]] if takes_first else []
        if seq or sorts or read > READ_LIMIT or read_running > RUNNING_ROWS:
            problems.append(
                f"{sql}\n  args={args!r}\n  seq scans={len(seq)}, sorts={len(sorts)}, "
                f"rows read={read} (limit {READ_LIMIT}), running jobs read={read_running} "
                f"(limit {RUNNING_ROWS})\n{describe(plan)}"
            )
    assert not problems, "\n\n".join(problems)


def _conditions(node: dict[str, Any]) -> str:
    return " ".join(str(node.get(k, "")) for k in ("Index Cond", "Recheck Cond", "Filter"))


@pytest.mark.postgres
async def test_prune_finds_old_jobs_through_the_finished_index(
    big_store: Store, plans: Plans
) -> None:
    """Prune's selection of old final jobs (state and finished_at) reads only
    fiefdom_jobs_finished and the rows it points to."""
    [(sql, args)] = plans.statements["prune"]
    plan = await explain(big_store, sql, args)
    # The rows selected (LIMIT n) are then deleted by id; how the planner joins them
    # back (primary-key lookups, or at this size a hash join over one pass of the
    # table) is its cost choice and not checked. What must never scan is the search for
    # old jobs, which a growing table would make ever slower.
    selection = [n for n in job_scans(plan) if "finished_at" in _conditions(n)]
    assert selection, describe(plan)
    assert all(n["Node Type"] != "Seq Scan" for n in selection), describe(plan)
    assert {n.get("Index Name") for n in nodes(plan) if "finished_at" in _conditions(n)} >= {
        "fiefdom_jobs_finished"
    }, describe(plan)
    assert sum(rows_read(n) for n in selection) <= READ_LIMIT, describe(plan)


@pytest.mark.postgres
async def test_counting_reads_the_table_once(big_store: Store, plans: Plans) -> None:
    """count_jobs legitimately reads every row (it counts them all): once, in one scan."""
    [(sql, args)] = plans.statements["count_jobs"]
    plan = await explain(big_store, sql, args)
    scans = job_scans(plan)
    assert len(scans) == 1, describe(plan)
    assert scans[0]["Actual Loops"] == 1
    assert rows_read(scans[0]) == ROWS


# -- SQLite ----------------------------------------------------------------------------

# A smaller table of the same shape as BIG_TABLE (SQLite's planner reads the statistics
# of ANALYZE as PostgreSQL's does; what matters is which index a plan walks).
SQLITE_ROWS = 20_000
SQLITE_TABLE = f"""
INSERT INTO fiefdom_jobs (kind, queue, state, args, max_attempts, created_at, run_at)
WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {SQLITE_ROWS})
SELECT
    CASE WHEN i % 500 = 7 THEN '{RARE_KIND}' ELSE 'kind-' || (i % 20) END,
    CASE WHEN i % 100 = 3 THEN '{RARE_QUEUE}' ELSE 'q' || (i % 10) END,
    CASE
        WHEN i % 1000 < 850 THEN 'completed'
        WHEN i % 1000 < 900 THEN 'available'
        WHEN i % 1000 < 970 THEN 'scheduled'
        WHEN i % 1000 < 995 THEN 'cancelled'
        ELSE 'discarded' END,
    '{{}}', 5, 0, 0
FROM g
"""
# A plan's line reading fiefdom_jobs through an index: the primary key (a range of
# ids) or one of the listing indexes, searched (a seek: a range, or a first entry,
# as a loose scan's first queue, which SQLite reads as min(queue)), never scanned.
SQLITE_INDEXED = re.compile(
    r"SEARCH fiefdom_jobs USING (INTEGER PRIMARY KEY|(COVERING )?INDEX \w+)( \(|$)"
)


async def _sqlite_plan(store: Store, sql: str) -> list[tuple[int, int, str]]:
    """``EXPLAIN QUERY PLAN`` of ``sql``: (id, parent, detail) per line."""
    async with store.transaction() as tx:
        rows = await tx.fetch("EXPLAIN QUERY PLAN " + sql)
    return [(int(r[0]), int(r[1]), str(r[-1])) for r in rows]


# The running jobs, read whole through the lease index (see RUNNING_ROWS).
SQLITE_RUNNING_READ = "SCAN fiefdom_jobs USING INDEX fiefdom_jobs_lease"


@pytest.mark.dialect("sqlite")
@pytest.mark.parametrize(
    ("filters", "running"),
    [pytest.param(f, False, id=",".join(f) or "all") for f in LISTINGS]
    + [pytest.param(f, True, id=",".join(("running", *f))) for f in RUNNING_LISTINGS],
)
async def test_sqlite_lists_newest_first_through_an_index(
    store: Store, filters: tuple[str, ...], running: bool
) -> None:
    """On SQLite, each newest-first listing (by queue, state, kind, below an id, and
    their combinations) reads fiefdom_jobs through an index walked downwards: it
    searches an index (the unfiltered listing walks the ids down from the top) and
    sorts no more than the pages of its arms, never the table. Running jobs (a state,
    or an arm of a queue's listing) are read whole through the lease index and
    sorted: never the table either."""
    async with store.transaction() as tx:
        await tx.execute(SQLITE_TABLE)
        await tx.execute("ANALYZE")
    reader = store._reader.conn  # type: ignore[attr-defined]
    assert reader is not None
    executed: list[str] = []
    # The statements as executed, their arguments written in (SQLite's expanded SQL).
    await reader.set_trace_callback(executed.append)
    values: dict[str, Any] = {f: FILTER_VALUES[f] for f in filters}
    try:
        if running:
            values["state"] = JobState.RUNNING
        listed = await store.list_jobs(newest_first=True, **values)
    finally:
        await reader.set_trace_callback(None)
    ids = [job.id for job in listed]
    assert ids == sorted(ids, reverse=True)
    [sql] = [s for s in executed if TOUCHES_JOBS.search(s)]
    plan = await _sqlite_plan(store, sql)
    text = "\n".join(detail for _, _, detail in plan)
    reads = [detail for _, _, detail in plan if "fiefdom_jobs" in detail]
    assert reads, text
    if running:
        assert reads == [SQLITE_RUNNING_READ], text
    elif filters:
        assert all(
            SQLITE_INDEXED.match(detail)
            or (
                ("queue" in filters or "kind" in filters)
                and "state" not in filters
                and detail == SQLITE_RUNNING_READ
            )
            for detail in reads
        ), text
    else:
        # All jobs, newest first: the table's own order (its ids), read down from the
        # top and stopped at the page's end.
        assert reads == ["SCAN fiefdom_jobs"], text
    if not running and "after_id" in filters and {"queue", "state", "kind"} & set(filters):
        # Below an id, every read of a listing index by its queue or kind seeks to the
        # id (after a range of the state, SQLite would walk the state's entries of
        # each queue up to it: a page deep in a common state read most of them).
        seeks = [d for d in reads if re.search(r"INDEX fiefdom_jobs_list\w* \((queue|kind)=", d)]
        assert seeks, text
        assert all("id<?" in d for d in seeks), text
    # A sort only ever orders the rows of one arm's page (a subquery's, ``s<n>``) or
    # the running jobs, never rows read straight from the table.
    for node, parent, detail in plan:
        if detail.startswith("USE TEMP B-TREE"):
            siblings = [d for n, p, d in plan if p == parent and n != node]
            assert siblings, text
            assert siblings == [SQLITE_RUNNING_READ] or all(
                re.fullmatch(r"(CO-ROUTINE|SCAN) s\d+", d) for d in siblings
            ), text
