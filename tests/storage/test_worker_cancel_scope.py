"""A worker runs its jobs' handlers in one cancel scope, which it replaces once a job
was cancelled through it. Each way a running job is cancelled (a cancel request, a
lost lease, a stop) still cancels that job and no other, a shield in a handler
still holds off the cancellation, and the worker runs its next job unharmed. Every
engine here has one worker, so consecutive jobs share it."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
from storage_helpers import engine, reaches, state_of

from fiefdom.jobs import JobContext
from fiefdom.storage import Job, JobOptions, JobState, Store


class Step(Job):
    """``hang``: wait until cancelled; otherwise return at once."""

    options = JobOptions(kind="scope.step")
    n: int
    hang: bool = False


class Timed(Job):
    options = JobOptions(kind="scope.timed", timeout=0.05, max_attempts=1)


def one_worker(store: Store, **overrides: Any) -> Any:
    return engine(store, queues={"default": 1}, **overrides)


async def test_a_worker_runs_its_next_job_after_a_cancel_request(store: Store) -> None:
    """A job cancelled by request ends cancelled, and the jobs the same worker runs
    after it complete: the cancellation stays with the job it was meant for."""
    started = anyio.Event()
    finished: list[int] = []
    eng = one_worker(store)

    @eng.handler(Step)
    async def step(job: Step, ctx: JobContext[Any]) -> None:
        if job.hang:
            started.set()
            await anyio.sleep_forever()
        await anyio.lowlevel.checkpoint()  # a handler that awaits something
        finished.append(job.n)

    before = await store.enqueue(Step(n=0))
    hung = await store.enqueue(Step(n=1, hang=True))
    async with eng:
        await reaches(store, before.id, JobState.COMPLETED)
        await started.wait()
        assert await eng.cancel_job(hung.id or 0) == JobState.RUNNING
        await reaches(store, hung.id, JobState.CANCELLED)
        after = await store.enqueue_many([Step(n=2), Step(n=3)])
        for result in after:
            await reaches(store, result.id, JobState.COMPLETED)
    assert finished == [0, 2, 3]


async def test_a_handler_that_swallows_its_cancellation_does_not_doom_the_next_job(
    store: Store,
) -> None:
    """A handler that catches its cancellation and returns: its result stands (as
    before), and the next job on the worker is not cancelled in its place."""
    started = anyio.Event()
    eng = one_worker(store)

    @eng.handler(Step)
    async def step(job: Step, ctx: JobContext[Any]) -> None:
        if job.hang:
            started.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                return  # swallowed: the handler returns normally
        await anyio.lowlevel.checkpoint()

    hung = await store.enqueue(Step(n=1, hang=True))
    async with eng:
        await started.wait()
        assert await eng.cancel_job(hung.id or 0) == JobState.RUNNING
        await reaches(store, hung.id, JobState.COMPLETED)
        after = await store.enqueue(Step(n=2))
        await reaches(store, after.id, JobState.COMPLETED)


async def test_a_lost_lease_cancels_the_handler_and_records_nothing(store: Store) -> None:
    """Another claim takes the job's lease (its token moves on): the heartbeat finds
    the lease lost, the handler is cancelled, no outcome is written over the new
    owner's, and the worker goes on with the next job."""
    started = anyio.Event()
    cancelled = anyio.Event()
    eng = one_worker(store)

    @eng.handler(Step)
    async def step(job: Step, ctx: JobContext[Any]) -> None:
        if job.hang:
            started.set()
            try:
                await anyio.sleep_forever()
            finally:
                cancelled.set()
        await anyio.lowlevel.checkpoint()

    hung = await store.enqueue(Step(n=1, hang=True))
    async with eng:
        await started.wait()
        async with store.transaction() as tx:
            await tx.execute(
                "UPDATE fiefdom_jobs SET lease_token = lease_token + 1, worker = 'other' "
                "WHERE id = $1",
                hung.id,
            )
        await cancelled.wait()
        after = await store.enqueue(Step(n=2))
        await reaches(store, after.id, JobState.COMPLETED)
    info = await store.get_job(hung.id or 0)
    assert info is not None
    assert (info.state, info.worker, info.errors) == (JobState.RUNNING, "other", [])


async def test_a_stop_cancels_the_running_handler_and_gives_its_job_back(store: Store) -> None:
    """After the worker has completed jobs in its scope, a stop that cancels hands the
    running job back unused (available, its attempt refunded)."""
    started = anyio.Event()
    eng = one_worker(store, drain_timeout=60)

    @eng.handler(Step)
    async def step(job: Step, ctx: JobContext[Any]) -> None:
        if job.hang:
            started.set()
            await anyio.sleep_forever()
        await anyio.lowlevel.checkpoint()

    done = await store.enqueue_many([Step(n=0), Step(n=1)])
    hung = await store.enqueue(Step(n=2, hang=True))
    await eng.start()
    try:
        await started.wait()
    finally:
        await eng.stop("cancel")
    for result in done:
        assert await state_of(store, result.id) == JobState.COMPLETED
    info = await store.get_job(hung.id or 0)
    assert info is not None
    assert (info.state, info.attempt) == (JobState.AVAILABLE, 0)


async def test_a_shield_in_a_handler_holds_off_a_cancel_request(store: Store) -> None:
    """The cancellation waits for the handler's shielded part to end, then lands at
    its next await; the job ends cancelled and the next job completes."""
    started = anyio.Event()
    release = anyio.Event()
    shielded: list[str] = []
    eng = one_worker(store)

    @eng.handler(Step)
    async def step(job: Step, ctx: JobContext[Any]) -> None:
        if not job.hang:
            await anyio.lowlevel.checkpoint()
            return
        started.set()
        with anyio.CancelScope(shield=True):
            try:
                await release.wait()
            except BaseException:
                shielded.append("interrupted")
                raise
            shielded.append("finished")
        await anyio.sleep_forever()

    hung = await store.enqueue(Step(n=1, hang=True))
    async with eng:
        await started.wait()
        assert await eng.cancel_job(hung.id or 0) == JobState.RUNNING
        # The scope is cancelled by now (cancel_job cancels a local handler before
        # it returns); the handler is still inside its shield.
        release.set()
        await reaches(store, hung.id, JobState.CANCELLED)
        after = await store.enqueue(Step(n=2))
        await reaches(store, after.id, JobState.COMPLETED)
    assert shielded == ["finished"]


async def test_a_timed_out_job_leaves_the_worker_usable(store: Store) -> None:
    """A job's timeout is a scope of its own inside the worker's: the job fails (its
    one attempt: discarded) and the next job completes."""
    eng = one_worker(store)

    @eng.handler(Timed)
    async def timed(job: Timed, ctx: JobContext[Any]) -> None:
        await anyio.sleep_forever()

    @eng.handler(Step)
    async def step(job: Step, ctx: JobContext[Any]) -> None:
        await anyio.lowlevel.checkpoint()

    slow = await store.enqueue(Timed())
    async with eng:
        await reaches(store, slow.id, JobState.DISCARDED)
        after = await store.enqueue(Step(n=1))
        await reaches(store, after.id, JobState.COMPLETED)
    info = await store.get_job(slow.id or 0)
    assert info is not None
    assert info.errors[-1].type.endswith("TimeoutError")
