"""Engines under stress on both backends: several engines draining one table, a
worker process killed with SIGKILL, and per-key exclusion of domain jobs."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from kill_worker import HELD_FROM, Chunk
from storage_helpers import engine, reaches, wait_until

import fiefdom
from fiefdom.jobs import DomainJobContext, JobContext
from fiefdom.storage import (
    DomainJob,
    Job,
    JobEvent,
    JobOptions,
    JobState,
    Store,
    engine_queries,
    open_store,
)

HERE = Path(__file__).resolve().parent


# For the tests that count runs: a lease longer than a test may run. With the helper's
# two-second lease, a heartbeat that waits for SQLite's write lock behind three busy
# engines on a loaded machine can miss its lease; the job is then rescued and runs
# twice, as it should after an expired lease. Rescue has tests of its own.
UNEXPIRED_LEASE = 600.0


class Unit(Job):
    options = JobOptions(kind="unit")
    n: int


async def test_four_engines_drain_ten_thousand_jobs_each_once(store: Store, store_url: str) -> None:
    """Four engines on their own connections drain 10,000 jobs: each runs and completes
    exactly once, none is left running (004/2, 003/3)."""
    for start in range(0, 10_000, 2_000):
        await store.enqueue_many([Unit(n=i) for i in range(start, start + 2_000)])
    runs: collections.Counter[int] = collections.Counter()

    async def unit(job: Unit, ctx: JobContext[Any]) -> None:
        runs[job.n] += 1

    stores = [open_store(store_url) for _ in range(4)]
    engines = [
        engine(s, queues={"default": 25}, name=f"e{i}", lease=UNEXPIRED_LEASE)
        for i, s in enumerate(stores)
    ]
    for eng in engines:
        eng.register(Unit, unit)
    try:
        for s in stores:
            await s.open()
        async with engines[0], engines[1], engines[2], engines[3]:
            await wait_until(lambda: sum(runs.values()) >= 10_000, what="10,000 runs")
    finally:
        for s in stores:
            await s.close()
    assert len(runs) == 10_000
    assert set(runs.values()) == {1}
    counts = {(c.queue, c.state): c.count for c in await store.count_jobs()}
    assert counts == {("default", JobState.COMPLETED): 10_000}
    for eng in engines:
        stats = eng.statistics()
        assert sum(stats.outcomes.values()) == stats.outcomes.get("completed", 0) == stats.claimed
    assert sum(e.statistics().claimed for e in engines) == 10_000


@pytest.mark.slow
async def test_a_worker_killed_with_sigkill_loses_no_job(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    """SIGKILL mid-jobs (max_attempts=5): each ends completed once, none lost (001/2, 003/3)."""
    # A rescue charges the killed attempt (a job that kills its worker must not loop
    # forever): "completed" holds because Chunk has attempts to spare. With
    # max_attempts=1 the rescued jobs end discarded instead (test_jobs pins that).
    assert Chunk.options.max_attempts > 1
    total = 300
    await store.enqueue_many([Chunk(n=i) for i in range(total)])
    log_path = tmp_path / "starts.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    child = await anyio.open_process(
        [sys.executable, str(HERE / "kill_worker.py"), store_url, str(log_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    async with child:
        try:

            def started() -> int:
                return len(log_path.read_text().splitlines()) if log_path.exists() else 0

            # From its HELD_FROM-th start on, the child's handlers run until the kill:
            # however late the kill comes, it finds jobs in their handlers (the child
            # cannot have finished every job by then).
            await wait_until(
                lambda: started() >= HELD_FROM, what=f"the worker to start {HELD_FROM} jobs"
            )
        finally:
            child.send_signal(signal.SIGKILL)
            await child.wait()
    assert child.returncode == -signal.SIGKILL
    in_child = {int(line.split()[0]) for line in log_path.read_text().splitlines()}
    running = {j.id for j in await store.list_jobs(state=JobState.RUNNING, limit=total)}
    # Claimed by the child: most were inside their handler (logged), a few may have
    # been waiting for a worker; all of them must come back.
    assert running & in_child, "the kill should have caught jobs in their handlers"

    ran_here: collections.Counter[int] = collections.Counter()

    async def chunk(job: Chunk, ctx: JobContext[Any]) -> None:
        ran_here[ctx.id] += 1

    eng = engine(store)
    eng.register(Chunk, chunk)

    async def all_completed() -> bool:
        counts = {c.state: c.count for c in await store.count_jobs()}
        return counts == {JobState.COMPLETED: total}

    async with eng:
        await wait_until(all_completed, what="every job to be completed")
    jobs = await store.list_jobs(limit=total)
    assert len(jobs) == total
    assert set(ran_here.values()) == {1}
    for job in jobs:
        if job.id in running:
            # Rescued: ran again here, its lost attempt recorded.
            assert ran_here[job.id] == 1
            assert job.attempt == 2
            assert [e.type for e in job.errors] == ["fiefdom.LeaseExpired"]
        else:
            assert job.attempt == 1
            assert (job.id in in_child) != (job.id in ran_here)


class Account(fiefdom.Actor[Any]):
    def __init__(self, key: str) -> None:
        self.key = key
        self.applied = 0

    async def receive(self, msg: Any) -> None:
        return None


class Apply(DomainJob):
    options = JobOptions(kind="apply", domain="accounts", key="account")
    account: str
    n: int


async def test_jobs_for_one_domain_key_never_overlap(store: Store, store_url: str) -> None:
    """Jobs naming the same domain key run inside that key's actor, one at a time, across
    many keys and two engines with many workers (000/1a, 000/1c)."""
    active: collections.Counter[str] = collections.Counter()
    overlaps: list[str] = []
    most = 0
    actors: dict[str, set[int]] = collections.defaultdict(set)

    async def apply(job: Apply, ctx: DomainJobContext[Account]) -> None:
        nonlocal most
        actors[job.account].add(id(ctx.actor))
        active[job.account] += 1
        if active[job.account] > 1:
            overlaps.append(job.account)
        most = max(most, sum(1 for v in active.values() if v))
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        ctx.actor.applied += 1
        active[job.account] -= 1

    other = open_store(store_url)
    await other.open()
    try:
        async with fiefdom.ActorSystem(name="bank") as system:
            accounts = system.domain("accounts", Account, idle_timeout=None)
            engines = [
                engine(
                    s,
                    queues={"default": 16},
                    domains={"accounts": accounts},
                    lease=UNEXPIRED_LEASE,
                )
                for s in (store, other)
            ]
            for eng in engines:
                eng.register(Apply, apply)
            await store.enqueue_many([Apply(account=f"acct-{i % 8}", n=i) for i in range(400)])
            async with engines[0], engines[1]:

                async def done() -> bool:
                    counts = {c.state: c.count for c in await store.count_jobs()}
                    return counts == {JobState.COMPLETED: 400}

                await wait_until(done, what="400 jobs to complete")
            applied = {
                key: await accounts.call(key, _applied, timeout=30) for key in sorted(actors)
            }
    finally:
        await other.close()
    assert overlaps == []
    assert most > 1, "different keys should have run concurrently"
    assert applied == {f"acct-{i}": 50 for i in range(8)}


async def _applied(actor: Account) -> int:
    return actor.applied


class OldApply(Job):
    """A domain kind declared as a plain Job, as before DomainJob existed."""

    options = JobOptions(kind="old-apply", domain="accounts", key="account")
    account: str


async def test_a_domain_jobs_context_holds_its_keys_actor(store: Store) -> None:
    """A DomainJob's handler gets a DomainJobContext whose actor is its key's actor (as
    does a plain Job whose options name a domain); a plain job's context is a
    JobContext without an actor. A DomainJob kind must name its domain."""
    seen: dict[str, tuple[type[Any], object]] = {}

    async def apply(job: Apply, ctx: DomainJobContext[Account]) -> None:
        seen["apply"] = (type(ctx), ctx.actor.key)

    async def old(job: OldApply, ctx: JobContext[Account]) -> None:
        seen["old"] = (type(ctx), ctx.actor is not None and ctx.actor.key)

    async def unit(job: Unit, ctx: JobContext[Any]) -> None:
        seen["unit"] = (type(ctx), ctx.actor)

    async with fiefdom.ActorSystem(name="bank") as system:
        accounts = system.domain("accounts", Account, idle_timeout=None)
        eng = engine(store, domains={"accounts": accounts})
        eng.register(Apply, apply)
        eng.register(OldApply, old)
        eng.register(Unit, unit)
        await store.enqueue_many([Apply(account="a", n=1), OldApply(account="b"), Unit(n=1)])
        async with eng:
            await wait_until(lambda: len(seen) == 3, what="the three jobs to run")
    assert seen == {
        "apply": (DomainJobContext, "a"),
        "old": (DomainJobContext, "b"),
        "unit": (JobContext, None),
    }
    with pytest.raises(TypeError, match="must name the domain"):

        class Homeless(DomainJob):
            options = JobOptions(kind="homeless")
            n: int


async def test_cancelling_a_domain_job_cancels_it_inside_its_actor(store: Store) -> None:
    """Cancelling a running domain job cancels its handler in the key's actor, which then
    takes the next job for that key (the key stays owned until the handler exited)."""
    started = anyio.Event()
    order: list[str] = []

    async def apply(job: Apply, ctx: JobContext[Account]) -> None:
        order.append(f"start {job.n}")
        if job.n == 0:
            started.set()
            try:
                await anyio.sleep_forever()
            finally:
                order.append("cancelled 0")

    async with fiefdom.ActorSystem(name="bank") as system:
        accounts = system.domain("accounts", Account, idle_timeout=None)
        eng = engine(store, domains={"accounts": accounts})
        eng.register(Apply, apply)
        first = await store.enqueue(Apply(account="a", n=0))
        second = await store.enqueue(Apply(account="a", n=1))
        async with eng:
            await started.wait()
            await eng.cancel_job(first.id or 0)
            for job, state in ((first, JobState.CANCELLED), (second, JobState.COMPLETED)):

                async def reached(job_id: int | None = job.id, state: JobState = state) -> bool:
                    info = await store.get_job(job_id or 0)
                    return info is not None and info.state == state

                await wait_until(reached, what=f"job {job.id} to be {state}")
    assert order == ["start 0", "cancelled 0", "start 1"]


@pytest.mark.dialect("postgres")  # connection loss is a PostgreSQL matter
async def test_an_engine_rides_out_killed_database_connections(
    store: Store, store_url: str
) -> None:
    """Killing every PostgreSQL connection mid-drain loses nothing: the engine retries with
    backoff, reconnects, and every job ends completed (001/9, 001/12)."""
    import asyncpg

    await store.enqueue_many([Unit(n=i) for i in range(2000)])
    runs: collections.Counter[int] = collections.Counter()

    async def unit(job: Unit, ctx: JobContext[Any]) -> None:
        runs[job.n] += 1
        await anyio.sleep(0.001)

    eng = engine(store, queues={"default": 20})
    eng.register(Unit, unit)
    async with eng:
        await wait_until(lambda: len(runs) >= 200, what="200 jobs to run")
        admin = await asyncpg.connect(store_url)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert killed >= 1

        async def all_completed() -> bool:
            try:
                counts = {c.state: c.count for c in await store.count_jobs()}
            except fiefdom.StoreUnavailable:
                return False
            return counts == {JobState.COMPLETED: 2000}

        await wait_until(all_completed, what="every job to complete after the outage")
    assert len(runs) == 2000
    assert store.healthy


JOB_TIMEOUT = 0.2


class TimedApply(Job):
    options = JobOptions(
        kind="apply.timed", domain="accounts", key="account", timeout=JOB_TIMEOUT, max_attempts=1
    )
    account: str
    hang: bool


async def test_a_domain_jobs_timeout_counts_from_when_its_handler_starts(store: Store) -> None:
    """A domain job queued behind other work for its key longer than its timeout still gets
    its whole timeout once it runs; one that overruns it fails with TimeoutError (002/4 L-3)."""
    busy = anyio.Event()
    release = anyio.Event()

    async def occupy(actor: Account) -> None:
        busy.set()
        await release.wait()

    async def apply(job: TimedApply, ctx: JobContext[Account]) -> None:
        if job.hang:
            await anyio.sleep_forever()

    async with fiefdom.ActorSystem(name="bank") as system, anyio.create_task_group() as tg:
        accounts = system.domain("accounts", Account, idle_timeout=None)
        tg.start_soon(lambda: accounts.call("a", occupy, timeout=None))
        await busy.wait()
        eng = engine(store, domains={"accounts": accounts})
        eng.register(TimedApply, apply)
        queued = await store.enqueue(TimedApply(account="a", hang=False))
        hangs = await store.enqueue(TimedApply(account="b", hang=True))

        async def state(job_id: int | None) -> JobState | None:
            info = await store.get_job(job_id or 0)
            return None if info is None else info.state

        async with eng:

            async def running() -> bool:
                return await state(queued.id) == JobState.RUNNING

            await wait_until(running, what="the queued job to be claimed")
            # Keep the key's actor busy for longer than the job's timeout from the claim:
            # the condition under test, not a wait for something to happen.
            end = anyio.current_time() + 3 * JOB_TIMEOUT
            await wait_until(lambda: anyio.current_time() >= end, what="the timeout to pass")
            release.set()

            async def finished() -> bool:
                return {await state(queued.id), await state(hangs.id)} == {
                    JobState.COMPLETED,
                    JobState.DISCARDED,
                }

            await wait_until(finished, what="both jobs to finish")
    info = await store.get_job(queued.id or 0)
    assert info is not None
    assert (info.state, info.attempt, info.errors) == (JobState.COMPLETED, 1, [])
    info = await store.get_job(hangs.id or 0)
    assert info is not None
    assert info.state == JobState.DISCARDED
    assert [e.type for e in info.errors] == ["builtins.TimeoutError"]


async def test_a_paused_domain_keys_jobs_give_their_queue_slots_back(store: Store) -> None:
    """A paused key's jobs go back unrun, so a plain job in their queue runs; later they run."""
    ran: list[str] = []
    events: list[JobEvent] = []

    async def apply(job: Apply, ctx: JobContext[Account]) -> None:
        ran.append(job.account)

    async def unit(job: Unit, ctx: JobContext[Any]) -> None:
        ran.append(f"unit {job.n}")

    async with fiefdom.ActorSystem(name="bank") as system:
        accounts = system.domain("accounts", Account, idle_timeout=None)
        accounts.pause()
        eng = engine(store, queues={"default": 2}, domains={"accounts": accounts})
        eng.register(Apply, apply)
        eng.register(Unit, unit)
        eng.subscribe(events.append)
        applies = [await store.enqueue(Apply(account=a, n=0)) for a in ("a", "b")]
        plain = await store.enqueue(Unit(n=1))
        async with eng:
            await reaches(store, plain.id, JobState.COMPLETED)  # beside the paused key's

            def both_given_back() -> bool:
                return {
                    e.job_id for e in events if e.detail and "domain key is paused" in e.detail
                } == {a.id for a in applies}

            await wait_until(both_given_back, what="both domain jobs to be given back")
            assert ran == ["unit 1"]
            accounts.resume()

            async def all_done() -> bool:
                counts = {c.state: c.count for c in await store.count_jobs()}
                return counts == {JobState.COMPLETED: 3}

            await wait_until(all_done, what="the domain jobs to run after the resume")
    assert sorted(ran) == ["a", "b", "unit 1"]
    for queued in applies:
        info = await store.get_job(queued.id or 0)
        assert info is not None
        assert info.attempt == 1, "a give-back uses no attempt"


async def test_a_domain_job_stuck_behind_its_keys_work_is_given_back(store: Store) -> None:
    """A domain job its key's busy actor does not take within the lease goes back unrun."""
    busy = anyio.Event()
    release = anyio.Event()
    events: list[JobEvent] = []

    async def occupy(actor: Account) -> None:
        busy.set()
        await release.wait()

    async def apply(job: Apply, ctx: JobContext[Account]) -> None:
        return None

    async with fiefdom.ActorSystem(name="bank") as system, anyio.create_task_group() as tg:
        accounts = system.domain("accounts", Account, idle_timeout=None)
        tg.start_soon(lambda: accounts.call("a", occupy, timeout=None))
        await busy.wait()
        # The short lease is the bound on the key's wait. No rescue runs while the
        # test does: a heartbeat held up past that lease (a loaded machine) would
        # otherwise let this engine's own rescuer take the job back and charge the
        # attempt the give-back must not use.
        eng = engine(
            store,
            domains={"accounts": accounts},
            lease=0.5,
            heartbeat=0.1,
            rescue_interval=UNEXPIRED_LEASE,
        )
        eng.register(Apply, apply)
        eng.subscribe(events.append)
        queued = await store.enqueue(Apply(account="a", n=0))
        async with eng:

            def given_back() -> bool:
                return any(e.detail and "did not take it within" in e.detail for e in events)

            await wait_until(given_back, what="the stuck job to be given back")
            release.set()

            await reaches(store, queued.id, JobState.COMPLETED)  # once its key is free
    info = await store.get_job(queued.id or 0)
    assert info is not None
    assert info.attempt == 1, "a give-back uses no attempt"


def unheeding(store: Store, unit: Any, *, rescue_interval: float) -> fiefdom.JobEngine:
    """An engine running ``unit`` whose heartbeat is too far off to notice a lapsed
    lease before anything else does."""
    eng = engine(
        store,
        lease=UNEXPIRED_LEASE,
        heartbeat=UNEXPIRED_LEASE / 2,
        rescue_interval=rescue_interval,
    )
    eng.register(Unit, unit)
    return eng


async def lapse(store: Store, job_id: int) -> None:
    """The job's lease lapses now, as if its engine's loop had been held up past it."""
    lapsed = "now() - interval '1 hour'" if store.backend == "postgres" else "0"
    async with store.transaction() as tx:
        await tx.execute(
            f"UPDATE fiefdom_jobs SET lease_expires_at = {lapsed} WHERE id = $1", job_id
        )


async def test_a_job_rescued_from_under_its_own_engine_is_cancelled_there_first(
    store: Store,
) -> None:
    """GUARANTEES 000/1a ("stale owner"), within one process: a job whose lease lapsed
    while its handler still ran here (the loop held up past the lease before the lease
    keeper renewed it) is rescued by this engine's own rescuer, and that run is
    cancelled at the rescue, before the job is claimed again: the two runs never
    overlap. The heartbeat here is too far off to notice the lapse first; without the
    rescuer's cancel, the first run would go on until it."""
    first_started = anyio.Event()
    first_ended = anyio.Event()
    left = anyio.Event()
    overlapped: list[bool] = []

    async def unit(job: Unit, ctx: JobContext[Any]) -> None:
        if ctx.attempt == 1:
            first_started.set()
            try:
                await left.wait()  # set only as the test leaves: a cancel ends it before
            finally:
                first_ended.set()
        overlapped.append(not first_ended.is_set())

    eng = unheeding(store, unit, rescue_interval=0.05)
    queued = await store.enqueue(Unit(n=1))
    async with eng:
        try:
            await first_started.wait()
            # The lease lapses as if the loop had been held up past it.
            await lapse(store, queued.id or 0)
            await reaches(store, queued.id, JobState.COMPLETED)  # run again
        finally:
            # A stale run left going (the rescue's cancel missing) would hold up the
            # engine's stop: it ends here, after the runs were compared.
            left.set()
    assert overlapped == [False], "the second run started while the first still ran"
    info = await store.get_job(queued.id or 0)
    assert info is not None
    assert info.attempt == 2


async def test_a_job_claimed_again_while_its_stale_run_is_still_here_is_held_once(
    store: Store,
) -> None:
    """A job whose lease lapsed here and that another process rescued, then this
    engine claimed again: the stale run is cancelled as the new claim comes in, and
    its end frees only its own slot, not the new run's (which would leave the new run
    unrenewed and its slot counted for ever): once both outcomes are in, nothing is
    in flight."""
    first_started = anyio.Event()
    left = anyio.Event()
    second_ran = anyio.Event()

    async def unit(job: Unit, ctx: JobContext[Any]) -> None:
        if ctx.attempt == 1:
            first_started.set()
            await left.wait()  # set only as the test leaves: a cancel ends it before
        else:
            second_ran.set()

    # No rescue of its own: the job is rescued by another process (the test, through
    # the store's engine queries).
    eng = unheeding(store, unit, rescue_interval=UNEXPIRED_LEASE)
    queued = await store.enqueue(Unit(n=1))
    async with eng:
        try:
            await first_started.wait()
            await lapse(store, queued.id or 0)
            assert [r[0] for r in await engine_queries(store).rescue()] == [queued.id]
            await second_ran.wait()

            def both_recorded() -> bool:
                stats = eng.statistics()
                return stats.stale == 1 and stats.outcomes.get("completed") == 1

            await wait_until(both_recorded, what="the stale outcome and the new one")
            assert [q.in_flight for q in eng.statistics().queues] == [0]
        finally:
            left.set()
    info = await store.get_job(queued.id or 0)
    assert info is not None
    assert (info.state, info.attempt) == (JobState.COMPLETED, 2)
