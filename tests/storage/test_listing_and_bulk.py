"""The store's operator side, on both dialects: listing newest first with keyset
paging and the key and since filters, the total a listing has (counted up to a cap),
retrying many final jobs at once, and pruning old final jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

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
)


class Work(Job):
    options = JobOptions(kind="work")
    n: int


class Keyed(Job):
    options = JobOptions(kind="keyed", domain="accounts", key="account")
    account: str


class Once(Job):
    """Unique while waiting: a retried one takes its key back."""

    options = JobOptions(
        kind="once", unique=Unique(states=frozenset({JobState.AVAILABLE, JobState.SCHEDULED}))
    )
    n: int


async def _discard(store: Store, queue: str = "default") -> list[int]:
    """Claim every available job of ``queue`` and discard it; returns their ids."""
    queries = engine_queries(store)
    claimed = await queries.claim(queue, 1000, worker="test", lease=60.0)
    error = AttemptError(attempt=1, at=0.0, type="builtins.RuntimeError", message="boom")
    await queries.finish(
        [
            Outcome(lease=Lease(j.id, j.lease_token), state=JobState.DISCARDED, error=error)
            for j in claimed
        ]
    )
    return sorted(j.id for j in claimed)


async def test_newest_first_pages_by_keyset_and_filters(store: Store) -> None:
    """newest_first lists ids going down; after_id continues below the last id of a
    page, so the pages together are every job once; the key and since filters and
    count_listed agree with what is listed, and a count stops at its cap."""
    ids = [e.id for e in await store.enqueue_many([Work(n=n) for n in range(7)])]
    keyed = [e.id for e in await store.enqueue_many([Keyed(account="a"), Keyed(account="b")])]
    every = sorted([*ids, *keyed], reverse=True)
    seen: list[int] = []
    after = 0
    while True:
        page = await store.list_jobs(newest_first=True, after_id=after, limit=3)
        if not page:
            break
        seen += [j.id for j in page]
        after = page[-1].id
    assert seen == every
    assert await store.count_listed() == len(every)
    assert await store.count_listed(cap=4) == 4
    by_key = await store.list_jobs(key="a", newest_first=True)
    assert [j.id for j in by_key] == [keyed[0]]
    assert await store.count_listed(key="a") == 1
    assert await store.count_listed(kind="work", state=JobState.AVAILABLE) == 7
    queue_page = await store.list_jobs(queue="default", newest_first=True, limit=2)
    assert [j.id for j in queue_page] == every[:2]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert await store.list_jobs(since=future) == []
    assert await store.count_listed(since=future) == 0
    past = datetime.now(UTC) - timedelta(hours=1)
    assert len(await store.list_jobs(since=past, kind="work")) == 7
    oldest_first = await store.list_jobs(limit=100)
    assert [j.id for j in oldest_first] == sorted(every)


async def test_retry_jobs_retries_one_state_of_a_kind_and_skips_held_keys(store: Store) -> None:
    """retry_jobs makes the discarded jobs of a kind available again, leaves other
    kinds and states alone, and skips a unique job whose key a duplicate holds (of
    two discarded duplicates, the oldest takes the key back)."""
    work = [e.id for e in await store.enqueue_many([Work(n=n) for n in range(3)])]
    first = await store.enqueue(Once(n=1))
    discarded = await _discard(store)
    second = await store.enqueue(Once(n=1))  # the key is free again: a new job
    assert not second.duplicate
    assert first.id in discarded
    assert set(work) <= set(discarded)
    retried, skipped = await store.retry_jobs(state=JobState.DISCARDED, kind="work")
    assert (retried, skipped) == (3, 0)
    for job_id in work:
        job = await store.get_job(job_id)
        assert job is not None
        assert job.state is JobState.AVAILABLE
    retried, skipped = await store.retry_jobs(state=JobState.DISCARDED, kind="once")
    assert (retried, skipped) == (0, 1)
    job = await store.get_job(first.id or 0)
    assert job is not None
    assert job.state is JobState.DISCARDED
    # Once the holder is gone, of two discarded duplicates only the oldest is retried.
    assert second.id is not None
    await store.cancel_job(second.id)
    await store.enqueue(Once(n=2))
    await _discard(store)
    retried, skipped = await store.retry_jobs(state=JobState.CANCELLED, kind="once")
    assert (retried, skipped) == (1, 0)  # the cancelled holder itself
    assert await store.retry_jobs(state=JobState.DISCARDED, kind="work", limit=1) == (1, 0)


async def test_one_state_of_every_queue_is_listed_counted_and_retried_in_id_order(
    store: Store,
) -> None:
    """A state without a queue or a kind takes the jobs of every queue, merged in id
    order both ways (each queue's range of its listing index, the queues found in
    that index), its count adds the queues up to its cap, and its bulk retry takes
    the oldest of all queues; a queue holding only jobs of other states adds
    nothing."""
    queues = ["b-queue", "a-queue", "c-queue"]
    for round_ in range(4):
        for q in queues:
            await store.enqueue_many([Work(n=round_)] * 2, queue=q)
    await store.enqueue(Work(n=99), queue="only-available")
    discarded = sorted([i for q in queues for i in await _discard(store, q)])
    assert len(discarded) == 24
    for newest_first in (False, True):
        seen: list[int] = []
        after = 0
        while True:
            page = await store.list_jobs(
                state=JobState.DISCARDED, after_id=after, limit=5, newest_first=newest_first
            )
            seen += [j.id for j in page]
            if len(page) < 5:
                break
            after = page[-1].id
        assert seen == (sorted(discarded, reverse=True) if newest_first else discarded)
    assert await store.count_listed(state=JobState.DISCARDED) == 24
    for cap in (7, 8, 10, 23, 24, 25):  # within the first queue's 8, across queues
        assert await store.count_listed(state=JobState.DISCARDED, cap=cap) == min(cap, 24)
    assert await store.count_listed(state=JobState.COMPLETED) == 0
    assert await store.retry_jobs(state=JobState.DISCARDED, limit=10) == (10, 0)
    left = [j.id for j in await store.list_jobs(state=JobState.DISCARDED, limit=100)]
    assert left == discarded[10:]
    available = {j.id for j in await store.list_jobs(state=JobState.AVAILABLE, limit=100)}
    assert set(discarded[:10]) <= available
    assert len(available) == 11  # and the one that was never claimed


async def test_a_negative_page_or_cap_is_refused_by_name(store: Store) -> None:
    """A listing's limit and a count's cap below 0 are refused by name, for every
    form of the statement (SQLite would read a negative LIMIT as none at all)."""
    await store.enqueue(Work(n=0))
    for filters in ({}, {"state": JobState.AVAILABLE}, {"queue": "default"}, {"kind": "work"}):
        with pytest.raises(ValueError, match="limit must be at least 0"):
            await store.list_jobs(limit=-1, **filters)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="cap must be at least 0"):
            await store.count_listed(cap=-1, **filters)  # type: ignore[arg-type]
        assert await store.list_jobs(limit=0, **filters) == []  # type: ignore[arg-type]
        assert await store.count_listed(cap=0, **filters) == 0  # type: ignore[arg-type]


async def test_prune_jobs_deletes_old_final_jobs_only(store: Store) -> None:
    """prune_jobs deletes final jobs that finished longer ago than asked, of the
    states, queue and kind asked, and never a waiting one; bad input is refused by
    name before anything is deleted."""
    waiting = await store.enqueue(Work(n=0))
    cancelled = await store.enqueue(Work(n=1))
    assert cancelled.id is not None
    assert waiting.id is not None
    await store.cancel_job(cancelled.id)
    await store.enqueue(Keyed(account="x"), queue="other")
    [discarded] = await _discard(store, "other")
    assert await store.prune_jobs(older_than=3600) == 0
    for bad, name in (
        ({"older_than": -1.0}, "older_than"),
        ({"older_than": float("nan")}, "older_than"),
        ({"older_than": 0.0, "limit": 0}, "limit"),
        ({"older_than": 0.0, "states": [JobState.AVAILABLE]}, "state"),
    ):
        with pytest.raises(ValueError, match=name):
            await store.prune_jobs(**bad)  # type: ignore[arg-type]
    assert await store.count_listed() == 3
    assert await store.prune_jobs(older_than=0, states=[JobState.CANCELLED], kind="keyed") == 0
    assert await store.prune_jobs(older_than=0, queue="other") == 1
    assert await store.get_job(discarded) is None
    assert await store.prune_jobs(older_than=0) == 1
    assert await store.get_job(cancelled.id) is None
    assert await store.get_job(waiting.id) is not None
