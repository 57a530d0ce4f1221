"""PostgreSQL copies a large batch of jobs that hold no unique key: it takes the ids
from the table's sequence first, then writes the rows with a binary COPY. These
tests show that a copied row is the row an INSERT of the same job stores, that ids
follow the input order, that a batch holding a unique key is still deduplicated,
that text the database cannot hold is refused with nothing committed, that a batch
is all or nothing, and that it joins a caller's transaction."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from enqueue_jobs import CompletedOnly, Keyed, Plain
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fiefdom.storage import (
    Job,
    JobOptions,
    Store,
    StoreError,
    _postgres_enqueue,
    open_store,
)
from fiefdom.storage._rows import NewJob, prepare

pytestmark = pytest.mark.dialect("postgres")


class Delivery(Job):
    options = JobOptions(
        kind="copy.delivery", queue="hooks", domain="hooks", key="hook", ordered=True
    )
    hook: str
    n: int


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch that took the COPY path."""
    sizes: list[int] = []
    original = _postgres_enqueue._copy

    async def spy(conn: Any, rows: Sequence[NewJob]) -> list[tuple[int, bytes | None]]:
        sizes.append(len(rows))
        return await original(conn, rows)

    monkeypatch.setattr(_postgres_enqueue, "_copy", spy)
    return sizes


@pytest.fixture
def copy_from_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of two rows or more take the COPY path (small batches keep tests fast)."""
    monkeypatch.setattr(_postgres_enqueue, "COPY_ROWS", 2)


async def column(store: Store, sql: str, *args: object) -> list[Any]:
    async with store.read() as tx:
        return [r[0] for r in await tx.fetch(sql, *args)]


async def count(store: Store) -> int:
    (n,) = await column(store, "SELECT count(*) FROM fiefdom_jobs")
    return int(n)


async def test_a_large_batch_is_copied_with_its_ids_in_order(
    store: Store, copies: list[int]
) -> None:
    """At the default size a plain batch is copied; each result's id is the row
    holding that job's arguments, and ids grow in input order."""
    n = _postgres_enqueue.COPY_ROWS + 1
    results = await store.enqueue_many([Plain(n=i) for i in range(n)])
    assert copies == [n]
    ids = [r.id for r in results]
    assert all(not r.duplicate for r in results)
    assert ids == sorted(ids)
    assert len(set(ids)) == n
    stored = await column(
        store, "SELECT (args ->> 'n')::int FROM fiefdom_jobs WHERE id = ANY($1) ORDER BY id", ids
    )
    assert stored == list(range(n))


def test_a_small_batch_is_not_copied(store_url: str, copies: list[int]) -> None:
    """Below COPY_ROWS the batch is one INSERT (COPY's round trips cost more)."""

    async def check() -> None:
        s = open_store(store_url)
        await s.open(migrate=True)
        try:
            await s.enqueue_many([Plain(n=i) for i in range(_postgres_enqueue.COPY_ROWS - 1)])
        finally:
            await s.close()

    asyncio.run(check())
    assert copies == []


_COLUMNS = (
    "kind, queue, state, priority, args::text, domain_key, attempt, max_attempts, "
    "lease_token, worker, lease_expires_at, cancel_requested, errors::text, unique_key, "
    "unique_states, attempted_at, finished_at, unique_digest, domain, partition, ordered, "
    "snoozes, CASE WHEN run_at <> created_at THEN run_at END, run_at = created_at, "
    "created_at = now()"
)


def _rows(now: float) -> list[NewJob]:
    """Jobs of every shape a row can take: plain, delayed (by half a microsecond,
    far ahead), due at a past or a future datetime, a queue and priority of
    their own, an ordered job of a domain key, a digest without a key."""
    at = datetime(2031, 5, 6, 7, 8, 9, 123457, tzinfo=UTC)
    return [
        prepare(Plain(n=0), now=now),
        prepare(Plain(n=1), now=now, delay=0.0000005),
        prepare(Plain(n=2), now=now, run_at=datetime.fromtimestamp(now - 3.25, UTC)),
        prepare(Plain(n=3), now=now, delay=86_400 * 365 * 90 + 0.1234565),
        prepare(Plain(n=4), now=now, run_at=at),
        prepare(Plain(n=5), now=now, queue="other", priority=-7, max_attempts=1),
        prepare(Delivery(hook="h1", n=6), now=now),
        prepare(Delivery(hook="h2", n=7), now=now, delay=1.5),
        prepare(CompletedOnly(account="c"), now=now),
        prepare(Plain(n=9), now=now, queue="ünï \u2603 ' \" \\"),
    ]


@pytest.mark.parametrize("times", [True, False], ids=["with times", "all due now"])
async def test_copied_rows_are_the_rows_an_insert_stores(
    store: Store, monkeypatch: pytest.MonkeyPatch, copies: list[int], times: bool
) -> None:
    """Every column of a copied row, the scheduled times to the microsecond, equals
    that of the same job inserted by the INSERT statement; a job due now gets the
    database's now() as run_at and created_at, as the column defaults give it. A
    batch without a time of its own leaves both columns to their defaults, one with
    any time writes them. Both batches run inside a transaction so that now() is
    one value."""
    now = time.time()
    rows = _rows(now) if times else [r for r in _rows(now) if r.run_at is None]
    got: list[list[tuple[Any, ...]]] = []
    for copy_rows in (2, 10**9):
        monkeypatch.setattr(_postgres_enqueue, "COPY_ROWS", copy_rows)
        async with store.transaction() as tx:
            await tx.execute("DELETE FROM fiefdom_jobs")
            await store._insert_rows(rows, tx=tx)
            got.append(await tx.fetch(f"SELECT {_COLUMNS} FROM fiefdom_jobs ORDER BY id"))
    assert copies == [len(rows)]
    copied, inserted = got
    assert copied == inserted
    assert [r[-1] for r in copied] == [True] * len(copied)
    # The explicit times: five of them, or none.
    assert sum(1 for r in copied if r[-3] is not None) == (5 if times else 0)
    assert len(rows) == (10 if times else 5)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.one_of(
            st.floats(-4e9, 6e9, allow_nan=False, allow_infinity=False),
            # Halfway between two microseconds: the rounding must be rint's.
            st.integers(-4 * 10**15, 6 * 10**15).map(lambda us: (us + 0.5) / 1e6),
        ),
        min_size=1,
        max_size=100,
    )
)
@example([0.0000005, 0.0000015, -0.0000005, 946_684_800.0000005, 1_700_000_000.4999995])
def test_a_copied_time_is_the_one_to_timestamp_gives(store_url: str, values: list[float]) -> None:
    """timestamp() turns unix seconds into the timestamptz that to_timestamp() gives
    for the same float8, to the microsecond."""

    async def check() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(store_url)
        try:
            rows = await conn.fetch(
                "SELECT u, t, to_timestamp(u) FROM unnest($1::float8[], $2::timestamptz[]) "
                "AS v(u, t) WHERE to_timestamp(u) IS DISTINCT FROM t",
                values,
                [_postgres_enqueue.timestamp(v) for v in values],
            )
        finally:
            await conn.close()
        return [tuple(r) for r in rows]

    assert asyncio.run(check()) == []


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(st.integers(-(2**31), 2**31 - 1), min_size=2, max_size=60),
    st.lists(st.integers(-(2**31), 2**31 - 1), max_size=20),
)
def test_copied_ids_follow_the_input_order(
    store_url: str, copy_from_two: None, copies: list[int], first: list[int], then: list[int]
) -> None:
    """Any two batches, the second possibly inserted while another connection takes
    ids from the same sequence: each job's id is the row holding its arguments, and
    ids grow in input order and from batch to batch."""

    async def check() -> None:
        s = open_store(store_url)
        await s.open(migrate=True)
        try:
            a = await s.enqueue_many([Plain(n=v) for v in first])
            b, _ = await asyncio.gather(
                s.enqueue_many([Plain(n=v) for v in then]),
                s.enqueue_many([Plain(n=v) for v in then[:1] * 3]),
            )
            ids = [r.id for r in a + b]
            assert all(isinstance(i, int) for i in ids)
            assert ids == sorted(ids)
            assert len(set(ids)) == len(ids)
            async with s.read() as tx:
                stored = dict(
                    await tx.fetch(
                        "SELECT id, (args ->> 'n')::bigint FROM fiefdom_jobs WHERE id = ANY($1)",
                        ids,
                    )
                )
            assert [stored[i] for i in ids] == first + then
        finally:
            await s.close()

    asyncio.run(check())
    assert copies
    assert all(n >= 2 for n in copies)


async def test_a_large_batch_with_unique_keys_still_skips_duplicates(
    store: Store, copies: list[int]
) -> None:
    """A batch at the COPY size holding a unique key takes the statement that skips
    duplicates: a duplicate of an existing job and one inside the batch each get
    the holder's id, and every other job is inserted."""
    holder = await store.enqueue(Keyed(account="a"))
    n = _postgres_enqueue.COPY_ROWS
    jobs: list[Job] = [Plain(n=i) for i in range(n)]
    jobs[10] = Keyed(account="a")
    jobs[20] = Keyed(account="b")
    jobs[30] = Keyed(account="b")
    results = await store.enqueue_many(jobs)
    assert copies == []
    assert [i for i, r in enumerate(results) if r.duplicate] == [10, 30]
    assert results[10].id == holder.id
    assert results[30].id == results[20].id
    assert await count(store) == 1 + n - 2
    ids = [r.id for i, r in enumerate(results) if i not in (10, 30)]
    assert ids == sorted(ids)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("queue", "nul \x00 inside"),
        ("queue", "lone \ud800 surrogate"),
        ("kind", "lone \udfff surrogate"),
        ("key", "nul \x00 key"),
        ("args", b'{"n": "\\u0000"}'),
    ],
)
async def test_text_the_database_cannot_hold_commits_nothing(
    store: Store, copy_from_two: None, copies: list[int], field: str, value: object
) -> None:
    """A row with text PostgreSQL cannot store (NUL, a lone surrogate), last in a
    copied batch: a StoreError, nothing of the batch is stored, and the store's next
    enqueue works."""
    now = time.time()
    rows = [prepare(Plain(n=i), now=now) for i in range(5)]
    setattr(rows[-1], field, value)
    with pytest.raises(StoreError, match="PostgreSQL"):
        await store._insert_rows(rows)
    assert copies == [5]
    assert await count(store) == 0
    await store.enqueue_many([Plain(n=1), Plain(n=2)])
    assert await count(store) == 2


async def test_a_bad_row_after_rows_already_sent_commits_nothing(
    store: Store, copies: list[int]
) -> None:
    """The rows of a copy are built and sent in pieces while the server inserts the
    first ones: a row that cannot be encoded, last of a batch several pieces long,
    ends the copy with nothing stored, and the store's connection still works."""
    now = time.time()
    n = 20_000  # about 2 MB of rows: the driver sends them 512 KiB at a time
    rows = [prepare(Plain(n=i), now=now) for i in range(n)]
    rows[-1].queue = "lone \ud800 surrogate"
    with pytest.raises(StoreError, match="PostgreSQL"):
        await store._insert_rows(rows)
    assert copies == [n]
    assert await count(store) == 0
    await store.enqueue_many([Plain(n=i) for i in range(_postgres_enqueue.COPY_ROWS)])
    assert await count(store) == _postgres_enqueue.COPY_ROWS


async def test_a_failing_copy_inserts_nothing(store: Store, copies: list[int]) -> None:
    """All or nothing: the last row of a copied batch breaks a check added for the
    test, and none of the batch's rows is stored."""
    n = _postgres_enqueue.COPY_ROWS + 5
    async with store.transaction() as tx:
        await tx.execute(
            "ALTER TABLE fiefdom_jobs ADD CONSTRAINT copy_test_refuse_last CHECK "
            f"((args ->> 'n') IS NULL OR (args ->> 'n')::int <> {n - 1})"
        )
    try:
        with pytest.raises(StoreError):
            await store.enqueue_many([Plain(n=i) for i in range(n)])
    finally:
        async with store.transaction() as tx:
            await tx.execute("ALTER TABLE fiefdom_jobs DROP CONSTRAINT copy_test_refuse_last")
    assert copies == [n]
    assert await count(store) == 0


@pytest.mark.parametrize("commit", [True, False])
async def test_a_copied_batch_joins_the_callers_transaction(
    store: Store, copy_from_two: None, copies: list[int], commit: bool
) -> None:
    """Inside a caller's transaction the copied rows are visible to it at once, carry
    its now(), and exist afterwards only if it commits."""

    class Abort(Exception):
        pass

    try:
        async with store.transaction() as tx:
            results = await store.enqueue_many([Plain(n=i) for i in range(4)], tx=tx)
            rows = await tx.fetch(
                "SELECT count(*), bool_and(created_at = now()) FROM fiefdom_jobs "
                "WHERE id = ANY($1)",
                [r.id for r in results],
            )
            assert rows == [(4, True)]
            if not commit:
                raise Abort
    except Abort:
        pass
    assert copies == [4]
    assert await count(store) == (4 if commit else 0)


async def test_a_copied_job_is_due_and_wakes_listeners(
    store_url: str, store: Store, copy_from_two: None, copies: list[int]
) -> None:
    """A copied job is available at once (run_at is the database's now()) and its
    queue's notification is sent at commit, as for an inserted job."""
    listener = await asyncpg.connect(store_url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener("fiefdom_jobs", lambda *a: heard.put_nowait(a[3]))
        await store.enqueue_many([Plain(n=1), Plain(n=2)], queue="copyq")
        assert await asyncio.wait_for(heard.get(), timeout=30) == "copyq"
    finally:
        await listener.close()
    assert copies == [2]
    due = await column(
        store,
        "SELECT count(*) FROM fiefdom_jobs WHERE state = 'available' AND run_at <= now() "
        "AND run_at > now() - $1::interval",
        timedelta(minutes=5),
    )
    assert due == [2]
