"""The job engine on both backends: claims and fencing, outcomes, retries,
uniqueness, scheduling, cancellation, graceful stop, periodic jobs, retention,
inspection and events."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storage_helpers import engine, reaches, state_of, wait_until

import fiefdom
from fiefdom.jobs import Cancel, Discard, JobContext, Retention, Snooze
from fiefdom.storage import (
    ExponentialBackoff,
    Job,
    JobEvent,
    JobOptions,
    JobState,
    Lease,
    Store,
    Unique,
    engine_queries,
    open_store,
)


def no_backoff(attempt: int) -> float:
    return 0.0


class Ping(Job):
    options = JobOptions(kind="ping", backoff=no_backoff)
    n: int


class Other(Job):
    options = JobOptions(kind="other", queue="other", backoff=no_backoff)
    n: int


# -- options ---------------------------------------------------------------------------


def test_job_kinds_declare_their_options_in_one_place() -> None:
    """A kind's defaults are sane: 5 attempts, capped exponential backoff with jitter (H-1, H-2)."""
    opts = JobOptions(kind="k")
    assert (opts.queue, opts.max_attempts, opts.priority, opts.timeout) == ("default", 5, 0, None)
    backoff = ExponentialBackoff()
    assert 0.8 <= backoff(1) <= 1.2
    assert 6.4 <= backoff(4) <= 9.6
    assert backoff(100) <= 600 * 1.2
    with pytest.raises(TypeError, match="must declare its options"):

        class Bare(Job):
            n: int

    with pytest.raises(TypeError, match="names no field"):

        class BadKey(Job):
            options = JobOptions(kind="bad", domain="d", key="missing")
            n: int

    with pytest.raises(ValueError, match="max_attempts"):
        JobOptions(kind="k", max_attempts=0)


# -- claims and leases -----------------------------------------------------------------


async def test_concurrent_claims_never_take_the_same_job(store: Store) -> None:
    """Ten claimers racing over 500 jobs take each exactly once (004/2)."""
    await store.enqueue_many([Ping(n=i) for i in range(500)])
    taken: list[int] = []

    async def claimer(i: int) -> None:
        while batch := await engine_queries(store).claim("default", 7, worker=f"w{i}", lease=30):
            taken.extend(j.id for j in batch)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(claimer, i)
    assert len(taken) == 500
    assert len(set(taken)) == 500


async def test_a_zombie_attempt_cannot_overwrite_the_newer_one(store: Store) -> None:
    """A worker whose lease expired and was re-claimed is refused (StaleLease); the newer
    attempt's outcome stands (003/3, 004/2)."""
    job = await store.enqueue(Ping(n=1))
    [first] = await engine_queries(store).claim("default", 1, worker="zombie", lease=0.05)

    async def rescued() -> bool:
        return bool(await engine_queries(store).rescue())

    await wait_until(rescued, what="the expired lease to be rescued")
    [second] = await engine_queries(store).claim("default", 1, worker="new", lease=30)
    assert second.id == first.id == job.id
    assert second.lease_token > first.lease_token
    alive, _ = await engine_queries(store).heartbeat([Lease(first.id, first.lease_token)], lease=30)
    assert alive == set()
    with pytest.raises(fiefdom.StaleLease, match="no longer current"):
        await engine_queries(store).complete(Lease(first.id, first.lease_token))
    info = await store.get_job(job.id or 0)
    assert info is not None
    assert (info.state, info.worker) == (JobState.RUNNING, "new")
    await engine_queries(store).complete(Lease(second.id, second.lease_token))
    info = await store.get_job(job.id or 0)
    assert info is not None
    assert (info.state, info.attempt) == (JobState.COMPLETED, 2)
    assert [e.type for e in info.errors] == ["fiefdom.LeaseExpired"]


async def test_an_engine_rescues_a_job_whose_worker_died(store: Store) -> None:
    """A job claimed by a worker that vanished is rescued and run again within seconds (003/3)."""
    job = await store.enqueue(Ping(n=1))
    await engine_queries(store).claim("default", 1, worker="dead", lease=0.2)
    ran: list[int] = []
    eng = engine(store)

    @eng.handler(Ping)
    async def ping(job: Ping, ctx: JobContext[Any]) -> None:
        ran.append(ctx.attempt)

    async with eng:
        await reaches(store, job.id, JobState.COMPLETED)
    assert ran == [2]


async def test_batch_enqueue_returns_one_result_per_job_in_order(store: Store) -> None:
    """A batch is one insert; results line up with the jobs, duplicates included (001/4)."""

    class Tagged(Job):
        options = JobOptions(kind="tagged", unique=Unique(by_args=("tag",)))
        tag: str
        n: int

    jobs: list[Job] = []
    for i in range(600):
        jobs.append(Ping(n=i))
        if i % 100 == 0:
            jobs.append(Tagged(tag=f"t{i % 200}", n=i))
    results = await store.enqueue_many(jobs)
    assert len(results) == len(jobs)
    stored = {j.id: j for j in await store.list_jobs(limit=1000)}
    for job, result in zip(jobs, results, strict=True):
        assert result.id in stored
        args = msgspec.json.decode(stored[result.id].args)
        if result.duplicate:  # the id is the one of the job that took its place
            assert args["tag"] == msgspec.to_builtins(job)["tag"]
        else:
            assert args == msgspec.to_builtins(job)
    duplicates = [r for r in results if r.duplicate]
    assert len(duplicates) == 4  # t0 and t100 repeat twice each
    assert len(stored) == len(jobs) - 4


async def test_a_batch_of_several_statements_lines_up_and_matches_duplicates(
    store: Store,
) -> None:
    """A batch larger than one statement takes (10,000 rows on PostgreSQL, 500 on
    SQLite) still answers per job in order, ids growing with it, and a unique job
    repeated in a later statement is matched to the first one's id."""

    class Tagged(Job):
        options = JobOptions(kind="tagged", unique=Unique(by_args=("tag",)))
        tag: str
        n: int

    jobs: list[Job] = [Ping(n=i) for i in range(25_000)]
    for at in (3, 12_003, 24_003):  # one key, in three different statements
        jobs.insert(at, Tagged(tag="same", n=at))
    results = await store.enqueue_many(jobs)
    assert len(results) == len(jobs)
    tagged = [r for j, r in zip(jobs, results, strict=True) if isinstance(j, Tagged)]
    assert [r.duplicate for r in tagged] == [False, True, True]
    assert {r.id for r in tagged} == {tagged[0].id}
    fresh = [r.id for r in results if not r.duplicate]
    assert all(isinstance(i, int) for i in fresh)
    assert fresh == sorted(fresh)  # type: ignore[type-var]
    assert len(set(fresh)) == 25_001
    assert await store.count_listed() == 25_001


async def test_a_batch_records_the_domain_of_its_keyed_jobs_only(store: Store) -> None:
    """A batch of plain jobs and keyed, ordered ones (here only past the first 500, a
    chunk of its own on SQLite) stores each keyed job's domain, partition and ordered
    flag, and leaves a plain job's at NULL, NULL and false."""
    from fiefdom.storage import partition_of

    class Keyed(Job):
        options = JobOptions(kind="keyed", domain="accounts", key="account", ordered=True)
        account: str

    jobs: list[Job] = [Ping(n=i) for i in range(550)] + [Keyed(account=f"a{i}") for i in range(3)]
    plain_only = await store.enqueue_many([Ping(n=i) for i in range(3)])
    results = await store.enqueue_many(jobs)
    async with store.read() as tx:
        rows = await tx.fetch("SELECT id, domain, domain_key, partition, ordered FROM fiefdom_jobs")
    stored = {r[0]: tuple(r[1:]) for r in rows}
    for result in plain_only + results[:550]:
        assert result.id is not None
        domain, key, partition, ordered = stored[result.id]
        assert (domain, key, partition, bool(ordered)) == (None, None, None, False)
    for i, result in enumerate(results[550:]):
        assert result.id is not None
        domain, key, partition, ordered = stored[result.id]
        account = f"a{i}"
        assert (domain, key, partition, bool(ordered)) == (
            "accounts",
            account,
            partition_of(account),
            True,
        )


# -- outcomes --------------------------------------------------------------------------


async def test_failures_retry_then_discard_keeping_every_error(store: Store) -> None:
    """An exception retries until max attempts, then the job is discarded with each attempt's
    error (type, message, traceback) kept (002/4 M-1, M-3)."""

    class Flaky(Job):
        options = JobOptions(kind="flaky", max_attempts=3, backoff=no_backoff)
        n: int

    eng = engine(store)

    @eng.handler(Flaky)
    async def flaky(job: Flaky, ctx: JobContext[Any]) -> None:
        raise ValueError(f"bad attempt {ctx.attempt}")

    job = await store.enqueue(Flaky(n=1))
    async with eng:
        await reaches(store, job.id, JobState.DISCARDED)
    info = await store.get_job(job.id or 0)
    assert info is not None
    assert info.attempt == 3
    assert [(e.attempt, e.type, e.message) for e in info.errors] == [
        (i, "builtins.ValueError", f"bad attempt {i}") for i in (1, 2, 3)
    ]
    assert all("raise ValueError" in e.traceback for e in info.errors)


async def test_handler_outcomes_cancel_discard_snooze(store: Store) -> None:
    """Cancel ends cancelled, Discard ends discarded, Snooze runs again without using an
    attempt (002/4 M-3)."""

    class Act(Job):
        options = JobOptions(kind="act")
        what: str

    eng = engine(store)
    snoozed: list[int] = []

    @eng.handler(Act)
    async def act(job: Act, ctx: JobContext[Any]) -> object:
        if job.what == "cancel":
            return Cancel("not needed any more")
        if job.what == "discard":
            raise Discard("the input is corrupt")
        if not snoozed:
            snoozed.append(ctx.attempt)
            return Snooze(0)
        snoozed.append(ctx.attempt)
        return None

    cancel, discard, snooze = await store.enqueue_many(
        [Act(what="cancel"), Act(what="discard"), Act(what="snooze")]
    )
    async with eng:
        await reaches(store, cancel.id, JobState.CANCELLED)
        await reaches(store, discard.id, JobState.DISCARDED)
        await reaches(store, snooze.id, JobState.COMPLETED)
    infos = {i.id: i for i in await store.list_jobs()}
    assert infos[cancel.id or 0].errors[0].message == "not needed any more"
    assert infos[discard.id or 0].errors[0].message == "the input is corrupt"
    assert (infos[cancel.id or 0].attempt, infos[discard.id or 0].attempt) == (1, 1)
    assert snoozed == [1, 1]  # the snooze gave its attempt back
    assert infos[snooze.id or 0].attempt == 1


async def test_a_timeout_fails_the_attempt(store: Store) -> None:
    """An attempt past its kind's timeout is cancelled and counts as a failure (002/4 L-3)."""

    class Slow(Job):
        options = JobOptions(kind="slow", timeout=0.05, max_attempts=2, backoff=no_backoff)
        n: int

    eng = engine(store)

    @eng.handler(Slow)
    async def slow(job: Slow, ctx: JobContext[Any]) -> None:
        await anyio.sleep_forever()

    job = await store.enqueue(Slow(n=1))
    async with eng:
        await reaches(store, job.id, JobState.DISCARDED)
    info = await store.get_job(job.id or 0)
    assert info is not None
    assert [e.type for e in info.errors] == ["builtins.TimeoutError"] * 2


async def test_a_job_of_an_unknown_kind_is_discarded_loudly(store: Store) -> None:
    """A stored job whose kind has no handler is discarded with the reason, never silently
    completed (002/3 stub worker)."""
    eng = engine(store)
    eng.register(Ping, _nothing)
    job = await store.enqueue(Other(n=1), queue="default")
    async with eng:
        await reaches(store, job.id, JobState.DISCARDED)
    info = await store.get_job(job.id or 0)
    assert info is not None
    assert info.errors[0].type == "fiefdom.UnknownJobKind"
    assert "no handler for job kind 'other'" in info.errors[0].message


async def test_arguments_that_do_not_decode_name_the_field(store: Store) -> None:
    """A payload that no longer matches its kind is discarded with the field named."""

    class Old(Job):
        options = JobOptions(kind="resize")
        width: str

    class New(Job):
        options = JobOptions(kind="resize")
        width: int

    eng = engine(store)
    eng.register(New, _nothing)
    job = await store.enqueue(Old(width="wide"))
    async with eng:
        await reaches(store, job.id, JobState.DISCARDED)
    info = await store.get_job(job.id or 0)
    assert info is not None
    assert "$.width" in info.errors[0].message


async def _nothing(job: Job, ctx: JobContext[Any]) -> None:
    return None


# -- uniqueness ------------------------------------------------------------------------


class Reindex(Job):
    options = JobOptions(kind="reindex", unique=Unique())
    index: str


async def test_twenty_concurrent_enqueuers_of_a_unique_job_make_one_row(
    store: Store, store_url: str
) -> None:
    """Twenty concurrent enqueues of one unique job leave exactly one row (002/4 H-3, 001/3)."""
    stores = [open_store(store_url) for _ in range(4)]
    for s in stores:
        await s.open()
    try:
        results: list[Any] = []

        async def enqueue(s: Store) -> None:
            results.append(await s.enqueue(Reindex(index="songs")))

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(enqueue, stores[i % 4])
    finally:
        for s in stores:
            await s.close()
    created = [r for r in results if not r.duplicate]
    assert len(created) == 1
    assert {r.id for r in results} == {created[0].id}
    assert len(await store.list_jobs()) == 1


async def test_unique_states_let_a_new_job_queue_while_one_runs(store: Store) -> None:
    """With RUNNING left out of the unique states, a new job may queue while one runs (H-3)."""

    class Sync(Job):
        options = JobOptions(
            kind="sync",
            unique=Unique(states=frozenset({JobState.AVAILABLE, JobState.SCHEDULED})),
        )
        folder: str

    first = await store.enqueue(Sync(folder="a"))
    assert (await store.enqueue(Sync(folder="a"))).duplicate
    assert not (await store.enqueue(Sync(folder="b"))).duplicate
    await engine_queries(store).claim("default", 10, worker="w", lease=30)
    again = await store.enqueue(Sync(folder="a"))
    assert not again.duplicate
    assert again.id != first.id


async def test_unique_by_period_allows_one_per_period(store: Store) -> None:
    """A unique period makes the same job a duplicate within its time slot (H-3)."""

    class Digest(Job):
        options = JobOptions(kind="digest", unique=Unique(by_args=False, period=3600))
        user: str

    assert not (await store.enqueue(Digest(user="a"))).duplicate
    assert (await store.enqueue(Digest(user="b"))).duplicate


class Pair(Job):
    options = JobOptions(kind="pair", unique=Unique(by_args=("a",)))
    a: int
    b: int


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), max_size=25))
def test_unique_by_an_argument_subset_keeps_one_per_value(
    store_url: str, pairs: list[tuple[int, int]]
) -> None:
    """Uniqueness on a subset of arguments keeps exactly one job per distinct value, however
    the jobs are split into batches (H-3)."""

    async def check() -> None:
        s = open_store(store_url)
        await s.open(migrate=True)
        try:
            async with s.transaction() as tx:
                await tx.execute("DELETE FROM fiefdom_jobs")
            jobs = [Pair(a=a, b=b) for a, b in pairs]
            half = len(jobs) // 2
            results = await s.enqueue_many(jobs[:half]) + await s.enqueue_many(jobs[half:])
            rows = await s.list_jobs(limit=1000)
        finally:
            await s.close()
        stored = sorted(msgspec.json.decode(r.args)["a"] for r in rows)
        assert stored == sorted({a for a, _ in pairs})
        assert sum(not r.duplicate for r in results) == len(rows)

    asyncio.run(check())


# -- scheduling, priorities, queues ----------------------------------------------------


async def test_priorities_and_scheduled_jobs(store: Store) -> None:
    """Lower priority numbers are claimed first; a scheduled job waits for its time."""
    low = await store.enqueue(Ping(n=1), priority=5)
    high = await store.enqueue(Ping(n=2), priority=0)
    later = await store.enqueue(Ping(n=3), delay=0.3)
    assert await state_of(store, later.id) == JobState.SCHEDULED
    first = await engine_queries(store).claim("default", 1, worker="w", lease=30)
    second = await engine_queries(store).claim("default", 10, worker="w", lease=30)
    assert [j.id for j in first + second] == [high.id, low.id]

    async def promoted() -> bool:
        await engine_queries(store).promote()
        return await state_of(store, later.id) == JobState.AVAILABLE

    await wait_until(promoted, what="the scheduled job to become available")
    info = await store.get_job(later.id or 0)
    assert info is not None
    assert info.run_at.timestamp() <= time.time()


async def test_a_paused_queue_is_not_claimed_until_resumed(store: Store) -> None:
    """Pausing a queue stops its claims while other queues go on; resume picks it up."""
    eng = engine(store, queues={"default": 2, "other": 2})
    eng.register(Ping, _nothing)
    eng.register(Other, _nothing)
    await eng.pause("default")
    async with eng:
        paused = await store.enqueue(Ping(n=1))
        # Enqueued after the paused one: once it is done, the engine has had its chance.
        other = await store.enqueue(Other(n=1))
        await reaches(store, other.id, JobState.COMPLETED)
        await engine_queries(store).promote()
        assert await state_of(store, paused.id) == JobState.AVAILABLE
        assert eng.statistics().queues[0].paused
        await eng.resume("default")
        await reaches(store, paused.id, JobState.COMPLETED)
    with pytest.raises(fiefdom.JobError, match="does not serve queue 'nope'"):
        await eng.pause("nope")
    assert await store.paused_queues() == set()


class OnlyA(Job):
    options = JobOptions(kind="only-a", queue="only-a")


class OnlyB(Job):
    options = JobOptions(kind="only-b", queue="only-b")


async def test_a_pause_holds_for_every_engine_and_survives_a_restart(
    store: Store, store_url: str
) -> None:
    """Pausing a queue on one engine stops its claims on every engine using the database,
    still holds after both restart, and a resume on another engine reverses it everywhere
    (003 wins: pause/resume)."""
    other = open_store(store_url)
    await other.open()
    ran: list[tuple[str, int]] = []

    def pair() -> list[fiefdom.JobEngine]:
        engines = []
        for name, s, marker in (("a", store, OnlyA), ("b", other, OnlyB)):
            eng = engine(s, name=name, queues={"default": 5, marker.options.queue: 1})

            async def ping(job: Ping, ctx: JobContext[Any], name: str = name) -> None:
                ran.append((name, job.n))

            eng.register(Ping, ping)
            eng.register(marker, _nothing)
            engines.append(eng)
        return engines

    def paused(eng: fiefdom.JobEngine) -> bool:
        return {q.queue: q.paused for q in eng.statistics().queues}["default"]

    async def markers_done() -> None:
        # One job in each engine's own queue, enqueued after the pings: once both
        # have run, both engines have been claiming while the pings waited.
        for marker in await store.enqueue_many([OnlyA(), OnlyB()]):
            await reaches(store, marker.id, JobState.COMPLETED)

    try:
        a, b = pair()
        async with a, b:
            await a.pause("default")
            await wait_until(lambda: paused(a) and paused(b), what="both engines to pause")
            pings = await store.enqueue_many([Ping(n=i) for i in range(10)])
            await markers_done()
            assert ran == []
        assert await store.paused_queues() == {"default"}
        a, b = pair()
        async with a, b:
            await wait_until(lambda: paused(a) and paused(b), what="restarted engines to pause")
            await markers_done()
            assert ran == []
            assert {await state_of(store, p.id) for p in pings} == {JobState.AVAILABLE}
            await b.resume("default")
            await wait_until(lambda: not paused(a), what="the other engine to resume")
            for p in pings:
                await reaches(store, p.id, JobState.COMPLETED)
    finally:
        await other.close()
    assert sorted(n for _, n in ran) == list(range(10))
    assert await store.paused_queues() == set()


# -- cancellation and stopping ---------------------------------------------------------


async def test_cancelling_a_running_job_cancels_its_handler(store: Store) -> None:
    """cancel_job(id) on a running job cancels its handler; the job ends cancelled (002/4 L-3)."""
    started = anyio.Event()
    cleaned_up = anyio.Event()
    eng = engine(store)

    @eng.handler(Ping)
    async def ping(job: Ping, ctx: JobContext[Any]) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cleaned_up.set()

    job = await store.enqueue(Ping(n=1))
    waiting = await store.enqueue(Other(n=1))
    async with eng:
        await started.wait()
        assert await eng.cancel_job(job.id or 0) == JobState.RUNNING
        await cleaned_up.wait()
        await reaches(store, job.id, JobState.CANCELLED)
        assert await eng.cancel_job(waiting.id or 0) == JobState.CANCELLED
        assert await eng.cancel_job(10**9) is None
    info = await store.get_job(job.id or 0)
    assert info is not None
    assert info.errors[-1].message == "cancelled by request"


async def test_graceful_stop_finishes_what_it_can_and_gives_back_the_rest(store: Store) -> None:
    """On stop, claiming ends, running jobs get until the deadline, then are cancelled and
    given back without using an attempt (000/1e, 001/13)."""

    class Work(Job):
        options = JobOptions(kind="work")
        stuck: bool

    release = anyio.Event()
    running: set[bool] = set()
    eng = engine(store, drain_timeout=0.3)

    @eng.handler(Work)
    async def work(job: Work, ctx: JobContext[Any]) -> None:
        running.add(job.stuck)
        if job.stuck:
            await anyio.sleep_forever()
        await release.wait()

    quick, stuck = await store.enqueue_many([Work(stuck=False), Work(stuck=True)])
    async with eng:
        await wait_until(lambda: running == {True, False}, what="both jobs to start")
        eng.request_stop()
        release.set()
    expected = ((quick.id, JobState.COMPLETED, 1), (stuck.id, JobState.AVAILABLE, 0))
    for job_id, state, attempt in expected:
        info = await store.get_job(job_id or 0)
        assert info is not None
        assert (info.state, info.attempt, info.worker) == (state, attempt, None)


async def test_an_engine_hosted_by_cancel_gives_jobs_back_at_once(store: Store) -> None:
    """cancel() (a supervisor's deadline passed) cancels handlers and gives their jobs back."""
    started = anyio.Event()
    eng = engine(store, drain_timeout=60)

    @eng.handler(Ping)
    async def ping(job: Ping, ctx: JobContext[Any]) -> None:
        started.set()
        await anyio.sleep_forever()

    job = await store.enqueue(Ping(n=1))
    async with anyio.create_task_group() as tg:
        await tg.start(_serve, eng)
        await started.wait()
        eng.cancel()
    info = await store.get_job(job.id or 0)
    assert info is not None
    assert (info.state, info.attempt) == (JobState.AVAILABLE, 0)


async def _serve(eng: Any, *, task_status: Any) -> None:
    await eng.serve(task_status.started)


# -- periodic jobs and retention -------------------------------------------------------


class Tick(Job):
    options = JobOptions(kind="tick")


async def test_periodic_jobs_are_enqueued_once_per_period_across_engines(
    store: Store, store_url: str
) -> None:
    """Two engines with the same periodic job insert it once per period (a unique slot)
    (002/3 periodic)."""
    other = open_store(store_url)
    await other.open()
    ticks: list[int] = []

    async def tick(job: Tick, ctx: JobContext[Any]) -> None:
        ticks.append(ctx.id)

    engines = [engine(s) for s in (store, other)]
    for eng in engines:
        eng.register(Tick, tick)
        eng.periodic(Tick, every=3600, run_on_start=True)
    try:
        async with engines[0], engines[1]:
            await wait_until(lambda: len(ticks) >= 1, what="the periodic job to run")
    finally:
        await other.close()
    jobs = await store.list_jobs(kind="tick")
    assert len(jobs) == 1
    assert ticks == [jobs[0].id]


async def test_retention_prunes_old_final_jobs(store: Store) -> None:
    """The engine's pruning job deletes final jobs older than their retention (002/4 L-1)."""
    await store.enqueue_many([Ping(n=i) for i in range(5)])
    first = engine(store)
    first.register(Ping, _nothing)
    async with first:
        await wait_until(
            lambda: first.statistics().outcomes.get("completed") == 5, what="5 completions"
        )
    kept = await store.enqueue(Ping(n=99), delay=3600)
    eng = engine(store, retention=Retention(completed=0, cancelled=0, discarded=0, every=3600))
    eng.register(Ping, _nothing)
    async with eng:

        async def pruned() -> bool:
            return [j.kind for j in await store.list_jobs()] == ["ping", "fiefdom.prune"]

        await wait_until(pruned, what="the completed jobs to be pruned")
    remaining = await store.list_jobs()
    assert remaining[0].id == kept.id


# -- inspection ------------------------------------------------------------------------


async def test_counts_listing_and_retrying_a_discarded_job(store: Store) -> None:
    """Counts by queue and state, filtered listing, and re-running a discarded job (M-3)."""
    fail = True

    class Once(Job):
        options = JobOptions(kind="once", max_attempts=1)
        n: int

    eng = engine(store)

    @eng.handler(Once)
    async def once(job: Once, ctx: JobContext[Any]) -> None:
        if fail:
            raise RuntimeError("down")

    job = await store.enqueue(Once(n=1))
    await store.enqueue_many([Other(n=1), Other(n=2)])
    async with eng:
        await reaches(store, job.id, JobState.DISCARDED)
        counts = {(c.queue, c.state): c.count for c in await store.count_jobs()}
        assert counts == {("default", JobState.DISCARDED): 1, ("other", JobState.AVAILABLE): 2}
        listed = await store.list_jobs(state=JobState.DISCARDED)
        assert [j.id for j in listed] == [job.id]
        assert [j.kind for j in await store.list_jobs(queue="other", limit=1)] == ["other"]
        page = await store.list_jobs(queue="other", after_id=listed[0].id + 1)
        assert len(page) == 1
        fail = False
        assert await store.retry_job(job.id or 0)
        assert not await store.retry_job(job.id or 0)  # no longer discarded
        await reaches(store, job.id, JobState.COMPLETED)
    info = await store.get_job(job.id or 0)
    assert info is not None
    assert (info.attempt, info.max_attempts, len(info.errors)) == (2, 2, 1)


async def test_every_state_change_is_emitted_as_an_event(store: Store) -> None:
    """Subscribers see each state an engine moves a job into (002/3 events)."""

    class Step(Job):
        options = JobOptions(kind="step", max_attempts=2, backoff=lambda attempt: 0.05)
        what: str

    events: list[JobEvent] = []
    hold = anyio.Event()
    eng = engine(store, drain_timeout=0.1)

    @eng.handler(Step)
    async def step(job: Step, ctx: JobContext[Any]) -> object:
        match job.what:
            case "fail":
                raise RuntimeError("fails")
            case "cancel":
                return Cancel("no")
            case "snooze" if ctx.attempt == 1 and not any(
                e.state == JobState.SCHEDULED for e in events
            ):
                return Snooze(0.05)
            case "hold":
                hold.set()
                await anyio.sleep_forever()
        return None

    unsubscribe = eng.subscribe(events.append)
    jobs = await store.enqueue_many(
        [Step(what=w) for w in ("ok", "fail", "cancel", "snooze", "hold")]
    )
    async with eng:
        await hold.wait()
        for job, final in zip(
            jobs[:4],
            (JobState.COMPLETED, JobState.DISCARDED, JobState.CANCELLED, JobState.COMPLETED),
            strict=True,
        ):
            await reaches(store, job.id, final)
    unsubscribe()
    seen = {e.state for e in events}
    assert seen == set(JobState)
    given_back = [e for e in events if e.state == JobState.AVAILABLE]
    assert [e.job_id for e in given_back] == [jobs[4].id]
    assert given_back[0].detail == "given back at shutdown"


async def test_a_running_event_says_how_long_the_job_waited(store: Store) -> None:
    """The running event carries the time from when a job was due to its claim (the store's
    clock): a job due a minute ago has waited at least a minute (001/14, 004/6)."""
    events: list[JobEvent] = []
    eng = engine(store)
    eng.register(Ping, _nothing)
    eng.subscribe(events.append)
    late = await store.enqueue(Ping(n=1), run_at=datetime.now(UTC) - timedelta(seconds=60))
    now = await store.enqueue(Ping(n=2))
    async with eng:
        await reaches(store, late.id, JobState.COMPLETED)
        await reaches(store, now.id, JobState.COMPLETED)
    running = {e.job_id: e.queued_for for e in events if e.state == JobState.RUNNING}
    late_wait, now_wait = running[late.id], running[now.id]
    assert late_wait is not None
    assert late_wait >= 60
    assert now_wait is not None
    assert now_wait >= 0
    assert all(e.queued_for is None for e in events if e.state != JobState.RUNNING)


class Report(Job):
    options = JobOptions(kind="report", max_attempts=1, unique=Unique())
    month: str


async def _discarded_report(store: Store) -> int:
    """A unique job that failed its only attempt: discarded, its key released."""
    job = await store.enqueue(Report(month="may"))
    assert job.id is not None
    [claimed] = await engine_queries(store).claim("default", 1, worker="w", lease=30)
    await engine_queries(store).finish(
        [
            fiefdom.storage.Outcome(
                lease=Lease(claimed.id, claimed.lease_token), state=JobState.DISCARDED
            )
        ]
    )
    assert await state_of(store, job.id) == JobState.DISCARDED
    return job.id


async def test_retrying_a_job_takes_its_unique_key_back(store: Store) -> None:
    """A retried discarded job holds its unique key again: a duplicate enqueued afterwards
    is refused as long as the retried job waits (H-3, M-3)."""
    job_id = await _discarded_report(store)
    assert await store.retry_job(job_id)
    again = await store.enqueue(Report(month="may"))
    assert again.duplicate
    assert again.id == job_id
    assert [j.id for j in await store.list_jobs(kind="report")] == [job_id]


async def test_retrying_a_job_whose_key_another_job_holds_is_refused(store: Store) -> None:
    """When a duplicate enqueued after the job finished holds its unique key, the retry is
    refused with UniqueConflict naming that job, and the job stays as it was (H-3, M-3)."""
    job_id = await _discarded_report(store)
    holder = await store.enqueue(Report(month="may"))
    assert not holder.duplicate
    assert holder.id is not None
    with pytest.raises(fiefdom.UniqueConflict, match=rf"held by job {holder.id}\b") as info:
        await store.retry_job(job_id)
    assert (info.value.job_id, info.value.holder_id) == (job_id, holder.id)
    assert await state_of(store, job_id) == JobState.DISCARDED
    assert await state_of(store, holder.id) == JobState.AVAILABLE
    # Once the holder lets go of the key (cancelled does not count), the retry goes through.
    assert await store.cancel_job(holder.id) == JobState.CANCELLED
    assert await store.retry_job(job_id)
    assert (await store.enqueue(Report(month="may"))).id == job_id


# -- a unique key across leaving and re-entering the counted states ---------------------


class Sync(Job):
    options = JobOptions(
        kind="sync.retrying",
        backoff=lambda attempt: 60.0,
        unique=Unique(
            states=frozenset({JobState.AVAILABLE, JobState.SCHEDULED, JobState.RETRYABLE})
        ),
    )
    account: str


async def _fail(store: Store, claimed: Any) -> JobState:
    """Record a failed attempt the way the engine does (retryable in a minute); returns
    the state the store says the job ended in."""
    error = fiefdom.storage.AttemptError(
        attempt=claimed.attempt, at=time.time(), type="E", message="boom"
    )
    done = await engine_queries(store).finish(
        [
            fiefdom.storage.Outcome(
                lease=Lease(claimed.id, claimed.lease_token),
                state=JobState.RETRYABLE,
                delay=60.0,
                error=error,
            )
        ]
    )
    assert list(done) == [claimed.id]
    return done[claimed.id]


async def test_a_job_that_fails_back_into_a_counted_state_takes_its_unique_key_back(
    store: Store,
) -> None:
    """A running job (RUNNING not counted) that fails to retryable holds its key again: a
    duplicate enqueued afterwards is refused (H-3)."""
    first = await store.enqueue(Sync(account="x"))
    [claimed] = await engine_queries(store).claim("default", 1, worker="w", lease=30)
    assert await _fail(store, claimed) == JobState.RETRYABLE
    assert await state_of(store, first.id) == JobState.RETRYABLE
    again = await store.enqueue(Sync(account="x"))
    assert (again.duplicate, again.id) == (True, first.id)
    assert [j.id for j in await store.list_jobs(kind="sync.retrying")] == [first.id]


async def test_a_job_coming_back_while_a_duplicate_waits_is_superseded_by_it(
    store: Store,
) -> None:
    """A duplicate queued while the job ran (RUNNING not counted) keeps the key when the job
    fails back into a counted state: the job ends cancelled, superseded, naming it (H-3)."""
    first = await store.enqueue(Sync(account="x"))
    [claimed] = await engine_queries(store).claim("default", 1, worker="w", lease=30)
    second = await store.enqueue(Sync(account="x"))
    assert not second.duplicate
    assert await _fail(store, claimed) == JobState.CANCELLED  # what finish reports, too
    info = await store.get_job(first.id or 0)
    assert info is not None
    assert info.state == JobState.CANCELLED
    assert [e.type for e in info.errors] == ["E", "fiefdom.Superseded"]
    assert f"job {second.id} with the same unique key" in info.errors[-1].message
    assert await state_of(store, second.id) == JobState.AVAILABLE
    assert (await store.enqueue(Sync(account="x"))).id == second.id


async def test_promoted_jobs_take_their_key_back_one_per_key(store: Store) -> None:
    """Scheduled jobs whose state is not counted become available (counted): one takes the
    key, the other is superseded by it, and duplicates are refused again (H-3)."""

    class Tidy(Job):
        options = JobOptions(kind="tidy", unique=Unique(states=frozenset({JobState.AVAILABLE})))
        folder: str

    a = await store.enqueue(Tidy(folder="f"), delay=0.05)
    b = await store.enqueue(Tidy(folder="f"), delay=0.05)
    assert (a.duplicate, b.duplicate) == (False, False)
    assert a.id != b.id

    async def promoted() -> bool:
        await engine_queries(store).promote()
        states = {await state_of(store, a.id), await state_of(store, b.id)}
        return JobState.SCHEDULED not in states

    await wait_until(promoted, what="the scheduled jobs to be promoted")
    assert {await state_of(store, a.id), await state_of(store, b.id)} == {
        JobState.AVAILABLE,
        JobState.CANCELLED,
    }
    holder = a.id if await state_of(store, a.id) == JobState.AVAILABLE else b.id
    assert (await store.enqueue(Tidy(folder="f"))).id == holder


async def test_a_rescued_job_takes_its_unique_key_back(store: Store) -> None:
    """A job whose worker died returns to available holding its key again (H-3, 003/3)."""
    first = await store.enqueue(Sync(account="x"))
    await engine_queries(store).claim("default", 1, worker="dead", lease=0.05)

    async def rescued() -> bool:
        return bool(await engine_queries(store).rescue())

    await wait_until(rescued, what="the expired lease to be rescued")
    again = await store.enqueue(Sync(account="x"))
    assert (again.duplicate, again.id) == (True, first.id)


async def test_a_rescue_reports_a_superseded_job_as_cancelled(store: Store) -> None:
    """A rescued job superseded by a duplicate enqueued while it ran is reported cancelled."""
    first = await store.enqueue(Sync(account="x"))
    await engine_queries(store).claim("default", 1, worker="dead", lease=0.05)
    waiting = await store.enqueue(Sync(account="x"))
    assert not waiting.duplicate

    rescued: list[tuple[int, str, str, JobState]] = []

    async def expired() -> bool:
        rescued.extend(await engine_queries(store).rescue())
        return bool(rescued)

    await wait_until(expired, what="the expired lease to be rescued")
    assert [(r[0], r[3]) for r in rescued] == [(first.id, JobState.CANCELLED)]
    assert await state_of(store, first.id) == JobState.CANCELLED
    assert await state_of(store, waiting.id) == JobState.AVAILABLE


def test_unique_states_counting_running_must_count_available() -> None:
    """Counting RUNNING without AVAILABLE is refused with the reason (H-3)."""
    with pytest.raises(ValueError, match="counts RUNNING but not AVAILABLE"):
        Unique(states=frozenset({JobState.RUNNING, JobState.RETRYABLE}))


async def _beat(store: Store, leases: list[Lease]) -> None:
    await engine_queries(store).heartbeat(leases, lease=30)


async def test_heartbeats_and_outcomes_of_the_same_jobs_never_deadlock(
    store: Store, store_url: str
) -> None:
    """An engine's heartbeat and outcome writes lock the same rows in one order, whatever
    order their batches list them in: concurrent, they never deadlock (001/7, 004/1)."""
    other = open_store(store_url)
    await other.open()
    try:
        await store.enqueue_many([Ping(n=i) for i in range(200)])
        for _ in range(15):
            claimed = await engine_queries(store).claim("default", 200, worker="w", lease=30)
            assert len(claimed) == 200
            leases = [Lease(c.id, c.lease_token) for c in claimed]
            outcomes = [
                fiefdom.storage.Outcome(lease=lease, state=JobState.AVAILABLE, refund=True)
                for lease in leases
            ]
            async with anyio.create_task_group() as tg:
                tg.start_soon(_beat, store, leases[::-1])
                tg.start_soon(_beat, other, leases[100:] + leases[:100])
                tg.start_soon(engine_queries(other).finish, outcomes)
    finally:
        await other.close()
    assert {(c.state, c.count) for c in await store.count_jobs()} == {(JobState.AVAILABLE, 200)}


async def test_a_rescue_charges_the_lost_attempt_and_says_the_worker_died(store: Store) -> None:
    """With max_attempts=1, a job whose worker died ends discarded, the error saying its last
    attempt's worker died; retry_job runs it again (003/3, M-3)."""
    job = await store.enqueue(Ping(n=1), max_attempts=1)
    await engine_queries(store).claim("default", 1, worker="killed", lease=0.05)

    async def rescued() -> bool:
        return bool(await engine_queries(store).rescue())

    await wait_until(rescued, what="the expired lease to be rescued")
    info = await store.get_job(job.id or 0)
    assert info is not None
    assert (info.state, info.attempt) == (JobState.DISCARDED, 1)
    [error] = info.errors
    assert error.type == "fiefdom.LeaseExpired"
    assert "the lease expired on the last attempt (1 of 1)" in error.message
    assert "its worker died" in error.message
    assert await store.retry_job(job.id or 0)
    assert await state_of(store, job.id) == JobState.AVAILABLE


async def test_the_engine_reports_a_superseded_job_as_cancelled(store: Store) -> None:
    """A job failing back into a counted state while a duplicate waits is superseded:
    the engine's event says cancelled (what the table holds), not retryable (H-3)."""
    events: list[JobEvent] = []
    release = anyio.Event()
    started = anyio.Event()

    async def handler(job: Sync, ctx: JobContext[Any]) -> None:
        if ctx.id == first.id:
            started.set()
            await release.wait()
            raise RuntimeError("first attempt fails")

    eng = engine(store)
    eng.register(Sync, handler)
    eng.subscribe(events.append)
    first = await store.enqueue(Sync(account="y"))
    async with eng:
        await started.wait()
        # The duplicate waits (scheduled a minute out), holding the unique key.
        second = await store.enqueue(Sync(account="y"), delay=60.0)
        assert not second.duplicate
        release.set()

        async def first_ended() -> bool:
            return any(e.job_id == first.id and e.state is not JobState.RUNNING for e in events)

        await wait_until(first_ended, what="the first job to end")
    final = {e.job_id: e.state for e in events if e.state is not JobState.RUNNING}
    assert final == {first.id: JobState.CANCELLED}
    assert await state_of(store, second.id) == JobState.SCHEDULED
    superseded = next(e for e in events if e.job_id == first.id and e.state is JobState.CANCELLED)
    assert superseded.detail is not None
    assert "superseded" in superseded.detail
    assert await state_of(store, first.id) == JobState.CANCELLED


@pytest.mark.dialect("postgres")  # SQLite records a batch in one transaction always
async def test_a_failed_outcome_batch_records_none_of_it(store: Store, store_url: str) -> None:
    """An outcome batch whose key restore fails leaves every job in it running, to retry whole."""
    import asyncpg

    await store.enqueue(Sync(account="x"))
    await store.enqueue(Ping(n=1))
    claimed = await engine_queries(store).claim("default", 2, worker="w", lease=30)
    outcomes = [
        fiefdom.storage.Outcome(
            lease=Lease(c.id, c.lease_token),
            state=JobState.AVAILABLE if c.kind == "sync.retrying" else JobState.COMPLETED,
            refund=c.kind == "sync.retrying",
        )
        for c in claimed
    ]
    # A real failure of the key-restoring step: a trigger refusing a key coming back.
    admin = await asyncpg.connect(store_url)
    try:
        await admin.execute(
            "CREATE FUNCTION refuse_key() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF OLD.unique_key IS NULL AND NEW.unique_key IS NOT NULL THEN "
            "RAISE EXCEPTION 'key restore refused'; END IF; RETURN NEW; END $$; "
            "CREATE TRIGGER refuse_key BEFORE UPDATE ON fiefdom_jobs "
            "FOR EACH ROW EXECUTE FUNCTION refuse_key()"
        )
        with pytest.raises(fiefdom.StoreError, match="key restore refused"):
            await engine_queries(store).finish(outcomes)
        assert {c.state for c in await store.count_jobs()} == {JobState.RUNNING}
        await admin.execute("DROP TRIGGER refuse_key ON fiefdom_jobs")
    finally:
        await admin.close()
    done = await engine_queries(store).finish(outcomes)
    assert sorted(done.values()) == [JobState.AVAILABLE, JobState.COMPLETED]
