"""PostgreSQL's enqueue picks its statement by the rows it inserts: rows that hold no
unique key take an INSERT without ON CONFLICT (nothing can conflict), any row with
a key takes the statement that skips duplicates. These tests show that the choice
never loses a duplicate, a key's digest, the order of ids, or all-or-nothing. (A
large batch without keys is copied instead: the tests of the split statements turn
that off; the copy has tests of its own, test_postgres_enqueue_copy.py.)"""

from __future__ import annotations

import pytest
from enqueue_jobs import CompletedOnly, Keyed, Plain

from fiefdom.storage import Job, Store, StoreError, _postgres_enqueue

pytestmark = pytest.mark.dialect("postgres")


@pytest.fixture
def no_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch takes the INSERT statements, however large."""
    monkeypatch.setattr(_postgres_enqueue, "COPY_ROWS", 10**9)


async def column(store: Store, sql: str, *args: object) -> list[object]:
    async with store.read() as tx:
        return [r[0] for r in await tx.fetch(sql, *args)]


async def test_a_batch_without_keys_gets_its_ids_in_order(store: Store, no_copy: None) -> None:
    """Each result's id is the row holding that job's arguments, across the
    statements a large batch is split into (one transaction)."""
    jobs = [Plain(n=n) for n in range(10_001)]
    results = await store.enqueue_many(jobs)
    ids = [r.id for r in results]
    assert all(not r.duplicate for r in results)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    stored = await column(
        store, "SELECT (args ->> 'n')::int FROM fiefdom_jobs WHERE id = ANY($1) ORDER BY id", ids
    )
    assert stored == list(range(10_001))


async def test_one_keyed_job_makes_the_batch_skip_its_duplicate(store: Store) -> None:
    """A batch of plain jobs with one duplicate among them: the duplicate is reported
    with the holder's id and the rest are inserted. (With the plain statement the
    unique index would refuse the whole batch.)"""
    holder = await store.enqueue(Keyed(account="a"))
    results = await store.enqueue_many([Plain(n=1), Keyed(account="a"), Plain(n=2)])
    assert [r.duplicate for r in results] == [False, True, False]
    assert results[1].id == holder.id
    assert await column(store, "SELECT count(*) FROM fiefdom_jobs") == [3]


async def test_a_single_keyed_job_is_still_deduplicated(store: Store) -> None:
    """One job at a time: a duplicate gets the holder's id, a plain job a new one."""
    first = await store.enqueue(Keyed(account="b"))
    again = await store.enqueue(Keyed(account="b"))
    plain = await store.enqueue(Plain(n=0))
    assert (again.duplicate, again.id) == (True, first.id)
    assert not plain.duplicate
    assert plain.id not in (None, first.id)


async def test_a_job_holding_only_its_digest_keeps_it(store: Store) -> None:
    """A unique job whose first state its uniqueness does not count holds no key, so
    it takes the plain statement, alone or in a batch, and its digest is stored
    (the key it takes back when completed)."""
    one = await store.enqueue(CompletedOnly(account="c"))
    batch = await store.enqueue_many([CompletedOnly(account="d"), Plain(n=0)])
    ids = [one.id, batch[0].id]
    digests = await column(
        store,
        "SELECT unique_digest IS NOT NULL AND unique_key IS NULL FROM fiefdom_jobs "
        "WHERE id = ANY($1) ORDER BY id",
        ids,
    )
    assert digests == [True, True]


async def test_a_failing_batch_inserts_nothing(store: Store, no_copy: None) -> None:
    """All or nothing across the statements of a split batch, on the plain path: the
    last row, in the second statement, breaks a check added for the test, and the
    first statement's 10,000 rows are rolled back with it."""
    before = await column(store, "SELECT count(*) FROM fiefdom_jobs")
    jobs: list[Job] = [Plain(n=n) for n in range(10_001)]
    async with store.transaction() as tx:
        await tx.execute(
            "ALTER TABLE fiefdom_jobs ADD CONSTRAINT stmt_test_refuse_last CHECK "
            "((args ->> 'n') IS NULL OR (args ->> 'n')::int <> 10000)"
        )
    try:
        with pytest.raises(StoreError):
            await store.enqueue_many(jobs)
    finally:
        async with store.transaction() as tx:
            await tx.execute("ALTER TABLE fiefdom_jobs DROP CONSTRAINT stmt_test_refuse_last")
    assert await column(store, "SELECT count(*) FROM fiefdom_jobs") == before
