"""Outcome batches as the engine writes them (one ``finish`` call for many jobs): a batch
without a unique job, one with a unique job coming back into a state its uniqueness
counts, and one with a stale lease are each recorded whole or refused job by job,
and the uniqueness rule holds whichever jobs share the batch."""

from __future__ import annotations

import time

from fiefdom.storage import (
    AttemptError,
    ClaimedJob,
    Job,
    JobOptions,
    JobState,
    Lease,
    Outcome,
    Store,
    Unique,
    engine_queries,
)


class Plain(Job):
    options = JobOptions(kind="batch.plain")
    n: int


class Synced(Job):
    """Unique while waiting, not while running: failing back to retryable retakes the key."""

    options = JobOptions(
        kind="batch.synced",
        unique=Unique(
            states=frozenset({JobState.AVAILABLE, JobState.SCHEDULED, JobState.RETRYABLE})
        ),
    )
    account: str


def done(job: ClaimedJob) -> Outcome:
    return Outcome(lease=Lease(job.id, job.lease_token), state=JobState.COMPLETED)


def failed(job: ClaimedJob) -> Outcome:
    error = AttemptError(attempt=job.attempt, at=time.time(), type="E", message="boom")
    return Outcome(
        lease=Lease(job.id, job.lease_token), state=JobState.RETRYABLE, delay=60.0, error=error
    )


async def claim_all(store: Store, n: int) -> list[ClaimedJob]:
    claimed = await engine_queries(store).claim("default", n, worker="w", lease=30)
    assert len(claimed) == n
    return claimed


async def state_of(store: Store, job_id: int) -> JobState:
    info = await store.get_job(job_id)
    assert info is not None
    return info.state


async def test_a_batch_without_unique_jobs_is_recorded_whole(store: Store) -> None:
    await store.enqueue_many([Plain(n=n) for n in range(5)])
    claimed = await claim_all(store, 5)
    outcomes = [done(j) for j in claimed[:3]] + [failed(j) for j in claimed[3:]]
    recorded = await engine_queries(store).finish(outcomes)
    assert recorded == {
        **{j.id: JobState.COMPLETED for j in claimed[:3]},
        **{j.id: JobState.RETRYABLE for j in claimed[3:]},
    }


async def test_a_unique_job_failing_back_in_a_batch_retakes_its_key(store: Store) -> None:
    """The plain jobs beside it are recorded too, and a duplicate enqueued afterwards is
    refused: the key came back with the batch."""
    first = await store.enqueue(Synced(account="x"))
    await store.enqueue_many([Plain(n=n) for n in range(3)])
    claimed = await claim_all(store, 4)
    recorded = await engine_queries(store).finish([failed(j) for j in claimed])
    assert recorded == {j.id: JobState.RETRYABLE for j in claimed}
    again = await store.enqueue(Synced(account="x"))
    assert (again.duplicate, again.id) == (True, first.id)


async def test_a_unique_job_in_a_batch_is_superseded_by_a_waiting_duplicate(
    store: Store,
) -> None:
    first = await store.enqueue(Synced(account="x"))
    await store.enqueue(Plain(n=1))
    claimed = await claim_all(store, 2)
    second = await store.enqueue(Synced(account="x"))
    assert not second.duplicate
    recorded = await engine_queries(store).finish([failed(j) for j in claimed])
    assert first.id is not None
    assert second.id is not None
    assert recorded[first.id] == JobState.CANCELLED
    assert [recorded[j.id] for j in claimed if j.id != first.id] == [JobState.RETRYABLE]
    assert await state_of(store, second.id) == JobState.AVAILABLE


async def test_a_stale_lease_in_a_batch_is_refused_alone(store: Store) -> None:
    """A job whose lease moved on (its token is old) is left as the new holder has it;
    the rest of the batch, unique jobs included, is recorded."""
    await store.enqueue(Synced(account="y"))
    await store.enqueue_many([Plain(n=n) for n in range(2)])
    claimed = await claim_all(store, 3)
    stale, *fresh = claimed
    outcomes = [
        Outcome(lease=Lease(stale.id, stale.lease_token - 1), state=JobState.COMPLETED),
        *(failed(j) for j in fresh),
    ]
    recorded = await engine_queries(store).finish(outcomes)
    assert recorded == {j.id: JobState.RETRYABLE for j in fresh}
    assert await state_of(store, stale.id) == JobState.RUNNING
