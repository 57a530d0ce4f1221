"""The store on both backends: lifecycle, migrations, schema, transactions (outbox)."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest
from storage_helpers import reaches, wait_until

import fiefdom
from fiefdom.storage import (
    SCHEMA_VERSION,
    Job,
    JobOptions,
    JobState,
    Store,
    engine_queries,
    open_store,
)


class Note(Job):
    options = JobOptions(kind="note")
    text: str


async def test_open_refuses_an_unmigrated_database(store_url: str) -> None:
    """Opening an empty database fails with SchemaMismatch saying what to run (003/1)."""
    store = open_store(store_url)
    with pytest.raises(fiefdom.SchemaMismatch, match=r"fiefdom migrate") as info:
        await store.open()
    assert "schema version 0" in str(info.value)
    assert store.state == "stopped"


async def test_an_older_schema_is_refused_until_migrated(store_url: str) -> None:
    """A database at schema version 1 is refused with SchemaMismatch naming 'fiefdom
    migrate'; migrating it keeps its jobs and their unique keys (003/1)."""
    from fiefdom.storage import _migrations
    from fiefdom.storage._sqlite import _split

    backend = "sqlite" if store_url.startswith("sqlite") else "postgres"
    first = _migrations.load(backend)[0]
    old = open_store(store_url)
    await old.open(check_schema=False)
    try:
        async with old.transaction() as tx:
            if backend == "sqlite":
                await tx.execute(
                    "CREATE TABLE fiefdom_schema (version INTEGER PRIMARY KEY, "
                    "name TEXT NOT NULL, applied_at REAL NOT NULL)"
                )
                for statement in _split(first.sql):
                    await tx.execute(statement)
                await tx.execute("INSERT INTO fiefdom_schema VALUES (1, $1, 0)", first.name)
                await tx.execute(
                    "INSERT INTO fiefdom_jobs (kind, queue, state, args, max_attempts, "
                    "unique_key, unique_states, created_at, run_at) "
                    "VALUES ('keyed', 'default', 'available', '{\"n\":1}', 5, $1, 127, 0, 0)",
                    b"key-1",
                )
            else:
                await tx.execute(
                    "CREATE TABLE fiefdom_schema (version integer PRIMARY KEY, "
                    "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                await tx.execute(first.sql)
                await tx.execute(
                    "INSERT INTO fiefdom_schema (version, name) VALUES (1, $1)", first.name
                )
                await tx.execute(
                    "INSERT INTO fiefdom_jobs (kind, queue, state, args, max_attempts, "
                    "unique_key, unique_states) "
                    "VALUES ('keyed', 'default', 'available', '{\"n\":1}', 5, $1, 127)",
                    b"key-1",
                )
    finally:
        await old.close()
    refused = open_store(store_url)
    with pytest.raises(fiefdom.SchemaMismatch, match=r"run 'fiefdom migrate") as info:
        await refused.open()
    assert f"schema version 1 and this fiefdom needs {SCHEMA_VERSION}" in str(info.value)
    migrated = open_store(store_url)
    await migrated.open(migrate=True)
    try:
        assert await migrated.schema_version() == SCHEMA_VERSION
        [job] = await migrated.list_jobs()
        async with migrated.transaction() as tx:
            digest = await tx.fetchval(
                "SELECT unique_digest FROM fiefdom_jobs WHERE id = $1", job.id
            )
        assert bytes(digest) == b"key-1"
        assert await migrated.paused_queues() == set()
    finally:
        await migrated.close()


async def test_open_refuses_a_newer_schema(store: Store, store_url: str) -> None:
    """A schema newer than the code is refused, and the error says to upgrade (003/1)."""
    async with store.transaction() as tx:
        if store.backend == "sqlite":
            await tx.execute(
                "INSERT INTO fiefdom_schema (version, name, applied_at) VALUES ($1, $2, 0)",
                SCHEMA_VERSION + 1,
                "future",
            )
        else:
            await tx.execute(
                "INSERT INTO fiefdom_schema (version, name) VALUES ($1, $2)",
                SCHEMA_VERSION + 1,
                "future",
            )
    other = open_store(store_url)
    with pytest.raises(fiefdom.SchemaMismatch, match="newer") as info:
        await other.open()
    assert "upgrade fiefdom" in str(info.value)


async def test_concurrent_migrations_apply_once(store_url: str) -> None:
    """Several processes migrating at once leave one copy of each version (003/1)."""
    stores = [open_store(store_url) for _ in range(3)]
    for s in stores:
        await s.open(check_schema=False)
    try:
        results: list[int] = []

        async def migrate(s: Store) -> None:
            results.append(await s.migrate())

        async with anyio.create_task_group() as tg:
            for s in stores:
                tg.start_soon(migrate, s)
        assert results == [SCHEMA_VERSION] * 3
        async with stores[0].transaction() as tx:
            rows = await tx.fetch("SELECT version FROM fiefdom_schema ORDER BY version")
        assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
        await stores[0].check_schema()
    finally:
        for s in stores:
            await s.close()


_JOB_INDEXES = {
    "fiefdom_jobs_claim",
    "fiefdom_jobs_due",
    "fiefdom_jobs_lease",
    "fiefdom_jobs_unique",
    "fiefdom_jobs_finished",
    "fiefdom_jobs_list",
    # No (state, id): a state's listing reads (queue, state, id) queue by queue
    # (migrations 0014 on PostgreSQL, 0015 on SQLite).
    "fiefdom_jobs_list_kind",
    "fiefdom_jobs_running_keys",
    "fiefdom_jobs_ordered_keys",
}

# Per backend and table; primary keys included (SQLite's INTEGER PRIMARY KEY is the
# rowid and has no index of its own, a TEXT one gets an automatic index).
EXPECTED_INDEXES: dict[str, dict[str, set[str]]] = {
    "postgres": {
        "fiefdom_jobs": _JOB_INDEXES | {"fiefdom_jobs_pkey"},
        "fiefdom_queues": {"fiefdom_queues_pkey"},
    },
    "sqlite": {
        "fiefdom_jobs": _JOB_INDEXES,
        "fiefdom_queues": {"sqlite_autoindex_fiefdom_queues_1"},
    },
}

EXPECTED_COLUMNS: dict[str, dict[str, dict[str, str]]] = {
    "postgres": {
        "fiefdom_jobs": {
            "id": "bigint",
            "kind": "text",
            "queue": "text",
            "state": "text",
            "priority": "smallint",
            "args": "jsonb",
            "domain_key": "text",
            "attempt": "integer",
            "max_attempts": "integer",
            "lease_token": "bigint",
            "worker": "text",
            "lease_expires_at": "timestamp with time zone",
            "cancel_requested": "boolean",
            "errors": "jsonb",
            "unique_key": "bytea",
            "unique_states": "smallint",
            "created_at": "timestamp with time zone",
            "run_at": "timestamp with time zone",
            "attempted_at": "timestamp with time zone",
            "finished_at": "timestamp with time zone",
            "unique_digest": "bytea",
            "domain": "text",
            "partition": "smallint",
            "ordered": "boolean",
            "snoozes": "integer",
        },
        "fiefdom_queues": {
            "name": "text",
            "paused": "boolean",
            "updated_at": "timestamp with time zone",
        },
    },
    "sqlite": {
        "fiefdom_jobs": {
            "id": "INTEGER",
            "kind": "TEXT",
            "queue": "TEXT",
            "state": "TEXT",
            "priority": "INTEGER",
            "args": "TEXT",
            "domain_key": "TEXT",
            "attempt": "INTEGER",
            "max_attempts": "INTEGER",
            "lease_token": "INTEGER",
            "worker": "TEXT",
            "lease_expires_at": "REAL",
            "cancel_requested": "INTEGER",
            "errors": "TEXT",
            "unique_key": "BLOB",
            "unique_states": "INTEGER",
            "created_at": "REAL",
            "run_at": "REAL",
            "attempted_at": "REAL",
            "finished_at": "REAL",
            "unique_digest": "BLOB",
            "domain": "TEXT",
            "partition": "INTEGER",
            "ordered": "INTEGER",
            "snoozes": "INTEGER",
        },
        "fiefdom_queues": {
            "name": "TEXT",
            "paused": "INTEGER",
            "updated_at": "REAL",
        },
    },
}


async def _columns_and_indexes(
    tx: Any, backend: str, table: str
) -> tuple[dict[str, str], set[str]]:
    if backend == "postgres":
        columns = dict(
            await tx.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = $1",
                table,
            )
        )
        rows = await tx.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = $1",
            table,
        )
    else:
        columns = {r[1]: r[2] for r in await tx.fetch(f"PRAGMA table_info({table})")}
        rows = await tx.fetch(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = $1", table
        )
    return columns, {r[0] for r in rows}


async def test_schema_has_the_tables_indexes_and_column_types(store: Store) -> None:
    """The migrated schema has exactly the expected tables, columns, types, indexes and
    notification triggers (003/1, 004/8)."""
    async with store.transaction() as tx:
        found = {
            table: await _columns_and_indexes(tx, store.backend, table)
            for table in ("fiefdom_jobs", "fiefdom_queues")
        }
        if store.backend == "postgres":
            unique = await tx.fetchval(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                "AND indexname = 'fiefdom_jobs_unique'"
            )
            triggers = {
                (r[0], r[1])
                for r in await tx.fetch(
                    "SELECT tgname, tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal "
                    "AND tgrelid IN ('fiefdom_jobs'::regclass, 'fiefdom_queues'::regclass)"
                )
            }
            # New jobs are notified by the enqueue statements (migration 0013).
            assert triggers == {("fiefdom_queues_notify", "fiefdom_queues")}
        else:
            unique = await tx.fetchval(
                "SELECT sql FROM sqlite_master WHERE name = 'fiefdom_jobs_unique'"
            )
        tables = await _tables(tx, store.backend)
    assert {"fiefdom_jobs", "fiefdom_queues", "fiefdom_schema"} <= tables
    for table, (columns, indexes) in found.items():
        assert columns == EXPECTED_COLUMNS[store.backend][table], table
        assert indexes == EXPECTED_INDEXES[store.backend][table], table
    assert "UNIQUE" in unique.upper()
    assert "unique_key IS NOT NULL" in unique


async def _tables(tx: Any, backend: str) -> set[str]:
    if backend == "postgres":
        rows = await tx.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    else:
        rows = await tx.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {r[0] for r in rows}


async def test_claim_query_uses_its_index(store: Store, store_url: str) -> None:
    """The claim statement's plan reads the partial claim index, not the table (004/8)."""
    await store.enqueue_many([Note(text=str(i)) for i in range(6000)])
    async with store.transaction() as tx:
        # A backlog next to finished jobs: the claim must not sort the backlog.
        await tx.execute("UPDATE fiefdom_jobs SET state = 'completed' WHERE id > 3000")
    if store.backend == "postgres":
        import asyncpg

        from fiefdom.storage._postgres_queries import CLAIM_SQL as PG_CLAIM

        conn = await asyncpg.connect(store_url)
        try:
            await conn.execute("VACUUM ANALYZE fiefdom_jobs")  # as autovacuum would
            plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + PG_CLAIM, "default", 10, "w", 5.0)
        finally:
            await conn.close()
    else:
        from fiefdom.storage._sqlite_queries import CLAIM_SQL as LITE_CLAIM

        async with store.transaction() as tx:
            await tx.execute("ANALYZE")
            rows = await tx.fetch("EXPLAIN QUERY PLAN " + LITE_CLAIM, "w", 0.0, 1.0, "default", 10)
        plan = " | ".join(str(r[-1]) for r in rows)
    assert "fiefdom_jobs_claim" in plan, plan


@pytest.mark.dialect("sqlite")
async def test_sqlite_runs_in_wal_with_an_explicit_synchronous(store_url: str) -> None:
    """SQLite is in WAL mode, durable (synchronous=FULL) by default and configurable (001/10)."""
    for url, expected in ((store_url, 2), (store_url + "?synchronous=normal", 1)):
        s = open_store(url)
        await s.open(migrate=True)
        try:
            async with s.transaction() as tx:
                mode = await tx.fetchval("PRAGMA journal_mode")
                sync = await tx.fetchval("PRAGMA synchronous")
        finally:
            await s.close()
        assert (mode, sync) == ("wal", expected)


async def test_outbox_enqueue_rolls_back_with_its_transaction(store: Store) -> None:
    """A transaction that enqueues then rolls back leaves no job and no row (002/4 M-5)."""
    async with store.transaction() as tx:
        await tx.execute("CREATE TABLE accounts (id integer PRIMARY KEY, total integer)")

    class Boom(Exception):
        pass

    async def deposit_then_fail() -> None:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO accounts (id, total) VALUES ($1, $2)", 1, 10)
            await store.enqueue(Note(text="deposited"), tx=tx)
            raise Boom

    with pytest.raises(Boom):
        await deposit_then_fail()
    assert await store.list_jobs() == []
    async with store.transaction() as tx:
        assert await tx.fetchval("SELECT count(*) FROM accounts") == 0


async def test_outbox_enqueue_commits_with_its_transaction(store: Store) -> None:
    """A transaction that enqueues and commits leaves exactly one job (002/4 M-5)."""
    async with store.transaction() as tx:
        await tx.execute("CREATE TABLE accounts (id integer PRIMARY KEY, total integer)")
    async with store.transaction() as tx:
        await tx.execute("INSERT INTO accounts (id, total) VALUES ($1, $2)", 1, 10)
        result = await store.enqueue(Note(text="deposited"), tx=tx)
    jobs = await store.list_jobs()
    assert [(j.id, j.kind, j.state) for j in jobs] == [(result.id, "note", JobState.AVAILABLE)]
    assert msgspec.json.decode(jobs[0].args) == {"text": "deposited"}


async def test_enqueue_with_a_transaction_of_another_store_is_refused(
    store: Store, store_url: str
) -> None:
    """A transaction of one store cannot carry another store's enqueue (it would not be atomic)."""
    other = open_store(store_url)
    await other.open()
    try:
        async with other.transaction() as tx:
            with pytest.raises(fiefdom.StoreError, match="another store"):
                await store.enqueue(Note(text="x"), tx=tx)
    finally:
        await other.close()


async def test_misuse_of_the_lifecycle_says_what_to_do(store_url: str) -> None:
    """A store used before open or after close fails with a message naming the fix."""
    s = open_store(store_url)
    with pytest.raises(fiefdom.StoreError, match="async with open_store"):
        await s.enqueue(Note(text="x"))
    await s.open(migrate=True)
    assert s.healthy
    await s.close()
    assert not s.healthy
    with pytest.raises(fiefdom.StoreNotOpen, match="is stopped"):
        await s.enqueue(Note(text="x"))
    with pytest.raises(fiefdom.LifecycleError, match="runs once: create a new one"):
        await s.open()


def test_bad_urls_are_refused_with_the_accepted_forms() -> None:
    """An unknown scheme or a malformed SQLite URL names the forms that work."""
    with pytest.raises(fiefdom.StoreError, match="sqlite:///path"):
        open_store("mysql://x/y")
    with pytest.raises(fiefdom.StoreError, match="synchronous"):
        open_store("sqlite:///x.db?synchronous=sometimes")


@pytest.mark.dialect("postgres")
async def test_postgres_reconnects_after_its_connections_are_killed(
    store: Store, store_url: str
) -> None:
    """Killed connections make the store unhealthy, and it recovers on its own (001/9, 001/12)."""
    import asyncpg

    assert await store.ping()
    admin = await asyncpg.connect(store_url)
    try:
        # pg_terminate_backend only signals the backend; with a timeout it also waits
        # until the backend has exited. Without it, a loaded machine may still run the
        # "killed" backend for a while and kill it under a later query of this test.
        gone = await admin.fetchval(
            "SELECT bool_and(pg_terminate_backend(pid, 50000)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    assert gone
    try:
        await store.enqueue(Note(text="after"))
    except fiefdom.StoreUnavailable:
        assert not store.healthy
    # The pool replaces the dead connection: the next operations succeed.
    await wait_until(store.ping, what="the store to recover")
    await store.enqueue(Note(text="recovered"))
    assert store.healthy
    assert "recovered" in {msgspec.json.decode(j.args)["text"] for j in await store.list_jobs()}


async def test_readers_do_not_wait_behind_an_open_user_transaction(store: Store) -> None:
    """While another task's transaction that has written is open, counts, listing, lookup
    and ping return and see only committed jobs (001/14, 004/6)."""
    before = await store.enqueue(Note(text="committed"))
    written = anyio.Event()
    release = anyio.Event()

    async def user() -> None:
        async with store.transaction() as tx:
            await store.enqueue(Note(text="pending"), tx=tx)
            written.set()
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(user)
        await written.wait()
        try:
            assert [(c.state, c.count) for c in await store.count_jobs()] == [
                (JobState.AVAILABLE, 1)
            ]
            assert [j.id for j in await store.list_jobs()] == [before.id]
            assert await store.get_job(before.id or 0) is not None
            assert await store.ping()
        finally:
            release.set()
    assert len(await store.list_jobs()) == 2


async def test_the_engine_is_not_queued_behind_an_open_user_transaction(store: Store) -> None:
    """A user transaction that is open in another task and waits for a job does not hold up
    the engine: the job is claimed, heartbeats and completes, then the transaction commits
    (003/3, 002/4 M-5)."""
    from storage_helpers import engine

    from fiefdom.jobs import JobContext
    from fiefdom.storage import Lease

    eng = engine(store)

    @eng.handler(Note)
    async def note(job: Note, ctx: JobContext[Any]) -> None:
        return None

    awaited = await store.enqueue(Note(text="awaited"))
    by_hand = await store.enqueue(Note(text="by hand"), queue="manual")
    [claimed] = await engine_queries(store).claim("manual", 1, worker="w", lease=30)
    opened = anyio.Event()
    release = anyio.Event()

    async def user() -> None:
        async with store.transaction() as tx:
            opened.set()
            await release.wait()
            await store.enqueue(Note(text="after the job"), tx=tx)

    async with eng, anyio.create_task_group() as tg:
        tg.start_soon(user)
        await opened.wait()
        try:
            alive, _ = await engine_queries(store).heartbeat(
                [Lease(claimed.id, claimed.lease_token)], lease=30
            )
            assert alive == {by_hand.id}

            await reaches(store, awaited.id, JobState.COMPLETED)
        finally:
            release.set()
    assert len(await store.list_jobs()) == 3


@pytest.mark.dialect("sqlite")
async def test_sqlite_lock_contention_is_a_clear_error_not_an_outage(
    store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write lock held past busy_timeout is a StoreError saying so, not an outage."""
    import sqlite3

    from structlog.testing import capture_logs

    from fiefdom.storage import _sqlite_tx

    # Short enough that the test does not wait the default 30 s for the lock.
    monkeypatch.setattr(_sqlite_tx, "BUSY_TIMEOUT_MS", 50)
    contended = open_store(store_url)
    await contended.open()
    holder = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(fiefdom.StoreError, match="held the write lock") as info:
            await contended.enqueue(Note(text="engine connection"))
        assert not isinstance(info.value, fiefdom.StoreUnavailable)
        with capture_logs() as logs, pytest.raises(fiefdom.StoreError, match="write lock"):
            async with contended.transaction() as tx:
                await tx.execute("SELECT 1")
        assert [e["event"] for e in logs if e["log_level"] == "error"] == []
        assert contended.healthy
        holder.execute("ROLLBACK")
        await contended.enqueue(Note(text="after the lock is released"))
    finally:
        holder.close()
        await contended.close()
