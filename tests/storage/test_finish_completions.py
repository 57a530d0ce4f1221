"""A batch of plain completions (no error, delay, refund or snooze) is recorded by a
statement of its own on PostgreSQL. These tests show it records what the general
statement would (and the same on SQLite): the completed state and its times, the
fencing of stale leases, and the uniqueness rule for a job that takes its key back
when it completes."""

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
    options = JobOptions(kind="done.plain")
    n: int


class KeyedWhenDone(Job):
    """Counted while waiting and once completed, not while running: completing takes
    the key back (in the transaction the general statement runs in)."""

    options = JobOptions(
        kind="done.keyed",
        unique=Unique(states=frozenset({JobState.AVAILABLE, JobState.COMPLETED})),
    )
    account: str


def done(job: ClaimedJob, *, token: int | None = None) -> Outcome:
    lease = Lease(job.id, job.lease_token if token is None else token)
    return Outcome(lease=lease, state=JobState.COMPLETED)


async def claim(store: Store, n: int) -> list[ClaimedJob]:
    claimed = await engine_queries(store).claim("default", n, worker="w", lease=30)
    assert len(claimed) == n
    return claimed


async def test_a_batch_of_completions_is_recorded_whole(store: Store) -> None:
    """Every job ends completed with its attempt kept, its lease and worker cleared,
    its finish time set and no error added."""
    await store.enqueue_many([Plain(n=n) for n in range(5)])
    claimed = await claim(store, 5)
    recorded = await engine_queries(store).finish([done(j) for j in reversed(claimed)])
    assert recorded == {j.id: JobState.COMPLETED for j in claimed}
    for job in claimed:
        info = await store.get_job(job.id)
        assert info is not None
        assert (info.state, info.attempt, info.worker, info.errors) == (
            JobState.COMPLETED,
            1,
            None,
            [],
        )
        assert info.finished_at is not None


async def test_a_stale_lease_among_completions_is_refused_alone(store: Store) -> None:
    """One job's token is old (another claim owns it): it is left as the owner has
    it, and the other completions in the batch are recorded."""
    await store.enqueue_many([Plain(n=n) for n in range(3)])
    stale, *fresh = await claim(store, 3)
    outcomes = [done(stale, token=stale.lease_token - 1), *(done(j) for j in fresh)]
    recorded = await engine_queries(store).finish(outcomes)
    assert recorded == {j.id: JobState.COMPLETED for j in fresh}
    info = await store.get_job(stale.id)
    assert info is not None
    assert (info.state, info.worker) == (JobState.RUNNING, "w")


async def test_completing_takes_a_free_key_back(store: Store) -> None:
    """A job whose uniqueness counts completed but not running takes its key back as
    it completes beside plain ones: a duplicate enqueued afterwards is refused."""
    first = await store.enqueue(KeyedWhenDone(account="a"))
    await store.enqueue_many([Plain(n=n) for n in range(2)])
    claimed = await claim(store, 3)
    recorded = await engine_queries(store).finish([done(j) for j in claimed])
    assert recorded == {j.id: JobState.COMPLETED for j in claimed}
    again = await store.enqueue(KeyedWhenDone(account="a"))
    assert (again.duplicate, again.id) == (True, first.id)


async def test_completing_leaves_a_key_a_duplicate_holds(store: Store) -> None:
    """The key was taken by a duplicate while the job ran: the job completes without
    it, and the duplicate keeps it."""
    await store.enqueue(KeyedWhenDone(account="b"))
    [running] = await claim(store, 1)
    holder = await store.enqueue(KeyedWhenDone(account="b"))
    assert not holder.duplicate
    recorded = await engine_queries(store).finish([done(running)])
    assert recorded == {running.id: JobState.COMPLETED}
    again = await store.enqueue(KeyedWhenDone(account="b"))
    assert (again.duplicate, again.id) == (True, holder.id)


async def test_a_failure_beside_completions_takes_the_general_statement(store: Store) -> None:
    """A batch with one failed attempt is not a batch of plain completions: the
    failure's error and retry state are recorded with the completions."""
    await store.enqueue_many([Plain(n=n) for n in range(3)])
    claimed = await claim(store, 3)
    error = AttemptError(attempt=1, at=time.time(), type="E", message="boom")
    failed = Outcome(
        lease=Lease(claimed[0].id, claimed[0].lease_token),
        state=JobState.RETRYABLE,
        delay=60.0,
        error=error,
    )
    recorded = await engine_queries(store).finish([failed, *(done(j) for j in claimed[1:])])
    assert recorded == {
        claimed[0].id: JobState.RETRYABLE,
        **{j.id: JobState.COMPLETED for j in claimed[1:]},
    }
    info = await store.get_job(claimed[0].id)
    assert info is not None
    assert [e.message for e in info.errors] == ["boom"]
