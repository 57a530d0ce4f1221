"""Safety nets of the job engine on both backends: a kind's own backoff sets the
retry's run_at, a domain job that fails (or whose key's actor fails) is recorded,
retried and run again in the right incarnation, and a graceful stop gives jobs it
claimed but never started back to the queue at once, without using an attempt."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from storage_helpers import engine, reaches, wait_until

import fiefdom
from fiefdom.jobs import DomainJobContext, JobContext
from fiefdom.storage import DomainJob, Job, JobEvent, JobInfo, JobOptions, JobState, Store

# Long enough that no lease expires during a test: whatever gives a job back must be
# the engine itself, never a rescue after the lease ran out.
NO_EXPIRY = dict(lease=600.0, heartbeat=1.0)


async def job_info(store: Store, job_id: int | None) -> JobInfo:
    assert job_id is not None
    info = await store.get_job(job_id)
    assert info is not None
    return info


# -- a kind's own backoff ------------------------------------------------------------


async def test_a_failed_attempt_is_retried_after_its_kinds_own_backoff(store: Store) -> None:
    """The engine calls the kind's backoff with the failed attempt (1) and the job waits
    retryable until now + that delay, by the database's clock."""
    asked: list[int] = []

    def backoff(attempt: int) -> float:
        asked.append(attempt)
        return 1000.0 + attempt

    class Flaky(Job):
        options = JobOptions(kind="safety.own-backoff", backoff=backoff)

    eng = engine(store)

    @eng.handler(Flaky)
    async def flaky(job: Flaky, ctx: JobContext[Any]) -> None:
        raise RuntimeError("the first attempt fails")

    queued = await store.enqueue(Flaky())
    async with eng:
        await reaches(store, queued.id, JobState.RETRYABLE)
    info = await job_info(store, queued.id)
    assert asked == [1]
    assert (info.state, info.attempt) == (JobState.RETRYABLE, 1)
    assert [(e.attempt, e.type) for e in info.errors] == [(1, "builtins.RuntimeError")]
    assert info.attempted_at is not None
    # Both times are the database's: claimed at attempted_at, recorded a moment later
    # with run_at = now + 1001 s. The slack only absorbs a slow machine; any other
    # backoff (the default is about 1 s) lands far outside it.
    waits = (info.run_at - info.attempted_at).total_seconds()
    assert 1001.0 - 0.5 <= waits <= 1001.0 + 30.0, waits


# -- domain jobs that fail -----------------------------------------------------------


class LedgerError(Exception):
    """A handler's (or an actor's) own failure."""


class World:
    """What the test sees of a domain's actors: each incarnation's number, in order."""

    def __init__(self, *, fail_starts: frozenset[int] = frozenset()) -> None:
        self.starts = 0
        self.fail_starts = fail_starts  # incarnations whose on_start raises


class Ledger(fiefdom.Actor[Any]):
    """A key's actor; knows which incarnation it is (counted in on_start)."""

    def __init__(self, key: str, world: World) -> None:
        self.key = key
        self.world = world
        self.incarnation = 0

    async def on_start(self) -> None:
        self.world.starts += 1
        self.incarnation = self.world.starts
        if self.incarnation in self.world.fail_starts:
            raise LedgerError(f"incarnation {self.incarnation} cannot open its ledger")

    async def receive(self, msg: Any) -> None:
        return None


def ledger_domain(system: fiefdom.ActorSystem, world: World) -> fiefdom.Domain[str, Any]:
    return system.domain("ledgers", lambda key: Ledger(key, world), idle_timeout=None)


class Post(DomainJob):
    options = JobOptions(
        kind="safety.post",
        domain="ledgers",
        key="ledger",
        max_attempts=3,
        backoff=lambda attempt: 0.05,
    )
    ledger: str


def error_type(exc: type[BaseException]) -> str:
    return f"{exc.__module__}.{exc.__qualname__}"


async def test_a_domain_jobs_failing_handler_is_an_outcome_not_a_crash(store: Store) -> None:
    """A domain job's raising handler records the attempt's error and retries the job, and
    the key's actor is NOT restarted (executor: a failing job is an outcome, not a crash)."""
    world = World()
    runs: list[tuple[int, int]] = []  # (attempt, incarnation that ran it)
    events: list[JobEvent] = []

    async def post(job: Post, ctx: DomainJobContext[Ledger]) -> None:
        runs.append((ctx.attempt, ctx.actor.incarnation))
        if ctx.attempt == 1:
            raise LedgerError("ledger out of balance")

    async with fiefdom.ActorSystem(name="bank") as system:
        ledgers = ledger_domain(system, world)
        eng = engine(store, domains={"ledgers": ledgers})
        eng.register(Post, post)
        eng.subscribe(events.append)
        queued = await store.enqueue(Post(ledger="k"))
        async with eng:
            await reaches(store, queued.id, JobState.COMPLETED)
        crashes = ledgers.statistics().crashes
    info = await job_info(store, queued.id)
    assert info.attempt == 2
    assert [(e.attempt, e.type, e.message) for e in info.errors] == [
        (1, error_type(LedgerError), "ledger out of balance")
    ]
    assert "ledger out of balance" in info.errors[0].traceback
    assert [(e.state, e.attempt) for e in events if e.job_id == queued.id] == [
        (JobState.RUNNING, 1),
        (JobState.RETRYABLE, 1),
        (JobState.RUNNING, 2),
        (JobState.COMPLETED, 2),
    ]
    # The same incarnation ran both attempts: the failure did not crash it.
    assert runs == [(1, 1), (2, 1)]
    assert world.starts == 1
    assert crashes == 0


async def test_a_domain_job_whose_keys_actor_fails_to_start_is_retried_in_a_new_one(
    store: Store,
) -> None:
    """When the key's actor crashes in on_start, the job's attempt fails with
    ActivationFailed (recorded), and the retry runs in a new incarnation and completes."""
    world = World(fail_starts=frozenset({1}))
    runs: list[tuple[int, int]] = []

    async def post(job: Post, ctx: DomainJobContext[Ledger]) -> None:
        runs.append((ctx.attempt, ctx.actor.incarnation))

    async with fiefdom.ActorSystem(name="bank") as system:
        ledgers = ledger_domain(system, world)
        eng = engine(store, domains={"ledgers": ledgers})
        eng.register(Post, post)
        queued = await store.enqueue(Post(ledger="k"))
        async with eng:
            await reaches(store, queued.id, JobState.COMPLETED)
    info = await job_info(store, queued.id)
    assert info.attempt == 2
    [error] = info.errors
    assert (error.attempt, error.type) == (1, error_type(fiefdom.ActivationFailed))
    assert "incarnation 1 cannot open its ledger" in error.message
    # The handler never ran in the incarnation that failed to start.
    assert runs == [(2, 2)]
    assert world.starts == 2


async def test_a_domain_job_queued_behind_a_crash_runs_in_the_restarted_actor(
    store: Store,
) -> None:
    """A key's actor that crashes while a claimed job waits in its mailbox is restarted,
    and the new incarnation runs the job: first attempt, no error recorded."""
    world = World()
    runs: list[tuple[int, int]] = []
    busy = anyio.Event()
    crash = anyio.Event()

    async def post(job: Post, ctx: DomainJobContext[Ledger]) -> None:
        runs.append((ctx.attempt, ctx.actor.incarnation))

    async def crash_when_told(actor: Ledger) -> None:
        busy.set()
        await crash.wait()
        raise LedgerError("the key's actor crashed")

    async def occupy(ledgers: fiefdom.Domain[str, Any]) -> None:
        with pytest.raises(LedgerError):
            await ledgers.call("k", crash_when_told, timeout=None)

    async with fiefdom.ActorSystem(name="bank") as system, anyio.create_task_group() as tg:
        ledgers = ledger_domain(system, world)
        tg.start_soon(occupy, ledgers)
        await busy.wait()
        eng = engine(store, domains={"ledgers": ledgers}, **NO_EXPIRY)
        eng.register(Post, post)
        queued = await store.enqueue(Post(ledger="k"))
        async with eng:

            def job_waits_in_the_mailbox() -> bool:
                stats = ledgers.key_statistics("k")
                return stats is not None and stats.mailbox_depth == 1

            await wait_until(job_waits_in_the_mailbox, what="the job to queue in the key's actor")
            crash.set()
            await reaches(store, queued.id, JobState.COMPLETED)
        stats = ledgers.key_statistics("k")
        crashes = ledgers.statistics().crashes
    assert stats is not None
    assert stats.restarts == 1
    assert crashes == 1
    info = await job_info(store, queued.id)
    assert (info.attempt, info.errors) == (1, [])
    assert runs == [(1, 2)]


# -- graceful stop -------------------------------------------------------------------


class Step(Job):
    options = JobOptions(kind="safety.step")
    n: int


async def test_a_graceful_stop_gives_claimed_unstarted_jobs_back_at_once(store: Store) -> None:
    """Jobs claimed in the batch during which a graceful stop arrives never start: they are
    available again with their attempt refunded while the drain still waits for a running
    job, long before any lease could expire."""
    # A claim takes at most the queue's free worker slots, so the claimed-but-unstarted
    # jobs are the ones handed to idle workers when the stop arrives. The stop is
    # requested from the event subscriber, which runs in the fetcher as it hands the
    # batch over: deterministically after the claim and before any of them starts.
    release = anyio.Event()
    began: list[int] = []
    events: list[JobEvent] = []
    eng = engine(store, queues={"default": 4}, batch_size=4, drain_timeout=60.0, **NO_EXPIRY)

    @eng.handler(Step)
    async def step(job: Step, ctx: JobContext[Any]) -> None:
        began.append(job.n)
        if job.n == 0:
            await release.wait()

    blocker = await store.enqueue(Step(n=0))

    def stop_on_the_batch(event: JobEvent) -> None:
        events.append(event)
        if event.state is JobState.RUNNING and event.job_id != blocker.id:
            eng.request_stop("drain")

    eng.subscribe(stop_on_the_batch)
    async with eng:
        await wait_until(lambda: began == [0], what="the blocking job to start")
        batch = await store.enqueue_many([Step(n=n) for n in (1, 2, 3)])
        ids = [b.id for b in batch]
        await wait_until(lambda: eng.state is fiefdom.State.STOPPING, what="the stop")
        claimed = {e.job_id for e in events if e.state is JobState.RUNNING}
        assert claimed == {blocker.id, *ids}, "the whole batch should have been claimed"

        async def given_back() -> bool:
            assert began == [0], "a job claimed as the stop arrived must not start"
            infos = [await job_info(store, i) for i in ids]
            return all(i.state is JobState.AVAILABLE for i in infos)

        # At once: the drain is still waiting for the blocking job.
        await wait_until(given_back, what="the unstarted jobs to be given back")
        assert eng.state is fiefdom.State.STOPPING
        assert began == [0]
        release.set()
    assert began == [0], "a job claimed as the stop arrived must not start"
    done = await job_info(store, blocker.id)
    assert (done.state, done.attempt) == (JobState.COMPLETED, 1)
    for job_id in ids:
        info = await job_info(store, job_id)
        assert (info.state, info.attempt, info.worker, info.errors) == (
            JobState.AVAILABLE,
            0,
            None,
            [],
        )


class Entry(Job):
    options = JobOptions(kind="safety.entry", domain="ledgers", key="ledger")
    ledger: str
    n: int


async def test_a_graceful_stop_gives_back_domain_jobs_still_queued_in_their_keys_actor(
    store: Store,
) -> None:
    """A domain job claimed and waiting in its busy key's actor when a graceful stop
    arrives never starts: once stop returns it is available, attempt refunded, while the
    work ahead of it in the actor was let finish."""
    world = World()
    busy, release = anyio.Event(), anyio.Event()
    began: list[int] = []

    async def entry(job: Entry, ctx: JobContext[Ledger]) -> None:
        began.append(job.n)

    async def occupy(actor: Ledger) -> None:
        busy.set()
        await release.wait()

    async with fiefdom.ActorSystem(name="bank") as system, anyio.create_task_group() as tg:
        ledgers = ledger_domain(system, world)
        eng = engine(
            store,
            queues={"default": 4},
            domains={"ledgers": ledgers},
            drain_timeout=60.0,
            **NO_EXPIRY,
        )
        eng.register(Entry, entry)
        await eng.start()
        try:
            # The key's actor is busy with other work (a call), so the job claimed for
            # it waits in its mailbox.
            tg.start_soon(lambda: ledgers.call("k", occupy, timeout=None))
            await busy.wait()
            queued = await store.enqueue(Entry(ledger="k", n=1))

            def queued_in_the_actor() -> bool:
                stats = ledgers.key_statistics("k")
                return stats is not None and stats.mailbox_depth == 1

            await wait_until(queued_in_the_actor, what="the job to wait in the key's actor")
            eng.request_stop("drain")
            # The key becomes free during the drain: what waited in it must not start now.
            release.set()
        finally:
            release.set()
            await eng.stop()
        began_by_stop = list(began)
    assert began_by_stop == [], "a job still queued in its actor at the stop must not start"
    info = await job_info(store, queued.id)
    assert (info.state, info.attempt, info.worker) == (JobState.AVAILABLE, 0, None)
