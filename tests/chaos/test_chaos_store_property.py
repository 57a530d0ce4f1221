"""A stateful property, on both dialects: no sequence of store and engine operations
(enqueues with random and out-of-range options, in committed and rolled-back
transactions, cancels, retries, pauses and resumes, listings, claims, finishes,
heartbeats, rescues, promotions, bursts of a real engine), each of them possibly
cancelled mid-flight, can make the store unusable. After every step the store answers
a read and a write, a rolled-back transaction has left nothing, and no task outlives
its operation (GUARANTEES 001/9 found by attack)."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import asyncpg
import pytest
from chaos_helpers import ms, percentile
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from fiefdom import FiefdomError
from fiefdom.jobs import Cancel, Discard, JobContext, JobEngine, Snooze
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
    open_store,
)

# A step that takes this long has hung: the property is about usability, not speed.
STEP_GUARD = 60.0
QUEUES = ("default", "other", "paused-often")
# What an operation may raise when its arguments are out of range or its job is in the
# wrong state: typed errors only (ValueError and TypeError for arguments, as documented).
ALLOWED = (FiefdomError, ValueError, TypeError)


class Plain(Job):
    options = JobOptions(kind="chaos.plain", max_attempts=3)
    n: int
    text: str = ""


class Single(Job):
    options = JobOptions(kind="chaos.single", unique=Unique(by_args=True))
    n: int


class Ghost(Job):
    """Only ever enqueued inside transactions that roll back: none may exist."""

    options = JobOptions(kind="chaos.ghost")
    n: int


class Probe(Job):
    options = JobOptions(kind="chaos.probe", queue="probe")


class Rollback(Exception):
    pass


CANCELLED = object()  # the operation was cancelled before it ended
REFUSED = object()  # the operation raised one of ALLOWED

cancel_points = st.none() | st.integers(0, 30) | st.floats(0.0, 0.02)
ids = st.integers(-5, 40) | st.sampled_from([0, 2**31, 2**63 - 1, -(2**63)])
# Options a caller may legitimately pass, and values past what enqueue takes (each
# such call must be refused with a ValueError and change nothing).
priorities = st.none() | st.integers(-32768, 32767)
delays = st.none() | st.floats(0, 3)
attempts = st.none() | st.integers(1, 5)
bad_priorities = st.sampled_from([-32769, 32768, 2**40])
bad_delays = st.sampled_from([-1.0, 1e12, float("nan"), float("inf"), -float("inf")])
bad_attempts = st.sampled_from([0, -1, 1_000_001])
queue_names = st.sampled_from(QUEUES) | st.sampled_from(["", "q" * 201])


class StoreMachine(RuleBasedStateMachine):
    """Drives one store through random operations; ``stats`` collects the figures."""

    url = ""
    stats: collections.Counter[str] = collections.Counter()
    checks: list[float] = []

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.store: Store = open_store(self.url)
        self.run(self.store.open(migrate=True))
        self.queries = engine_queries(self.store)
        self.known: list[int] = []  # ids of jobs known to be committed
        self.held: list[Lease] = []  # claimed by this machine, not finished
        self.stats["examples"] += 1

    def run(self, coro: Awaitable[Any]) -> Any:
        async def guarded() -> Any:
            with anyio.fail_after(STEP_GUARD):
                return await coro

        return self.runner.run(guarded())

    def step(
        self, name: str, make: Callable[[], Awaitable[Any]], cancel: int | float | None
    ) -> Any:
        """Run ``make()``; with ``cancel``, cancel it (as a server cancels the request of
        a client that left) after that many loop turns (int) or seconds (float)."""
        self.stats[f"op {name}"] += 1

        async def go() -> Any:
            if cancel is None:
                return await make()
            task = asyncio.ensure_future(make())
            if isinstance(cancel, int):
                for _ in range(cancel):
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep(cancel)
            if task.cancel():
                self.stats["cancelled mid-flight"] += 1
            try:
                return await task
            except asyncio.CancelledError:
                return CANCELLED

        try:
            return self.run(go())
        except ALLOWED as exc:
            self.stats[f"refused {type(exc).__name__}"] += 1
            return REFUSED

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.runner.close()

    # -- enqueueing --------------------------------------------------------------------

    @initialize(count=st.integers(5, 30))
    def some_jobs(self, count: int) -> None:
        jobs = [Plain(n=i) for i in range(count)]
        for queue in QUEUES:
            self.known += [e.id for e in self.run(self.store.enqueue_many(jobs, queue=queue))]

    @rule(
        n=st.integers(0, 5),
        single=st.booleans(),
        queue=st.none() | st.sampled_from(QUEUES),
        priority=priorities,
        delay=delays,
        max_attempts=attempts,
        cancel=cancel_points,
    )
    def enqueue(
        self,
        n: int,
        single: bool,
        queue: str | None,
        priority: int | None,
        delay: float | None,
        max_attempts: int | None,
        cancel: int | float | None,
    ) -> None:
        job: Job = Single(n=n) if single else Plain(n=n)
        got = self.step(
            "enqueue",
            lambda: self.store.enqueue(
                job, queue=queue, priority=priority, delay=delay, max_attempts=max_attempts
            ),
            cancel,
        )
        if got not in (CANCELLED, REFUSED) and got.id is not None:
            self.known.append(got.id)

    @rule(
        queue=st.none() | queue_names,
        priority=priorities | bad_priorities,
        delay=delays | bad_delays,
        max_attempts=attempts | bad_attempts,
        fallback=bad_attempts,
    )
    def enqueue_out_of_range(
        self,
        queue: str | None,
        priority: int | None,
        delay: float | None,
        max_attempts: int | None,
        fallback: int,
    ) -> None:
        """At least one option past what enqueue takes: refused, and nothing enqueued."""
        if not (
            queue in ("", "q" * 201)
            or priority in (-32769, 32768, 2**40)
            or (delay is not None and not 0 <= delay <= 3)
            or max_attempts in (0, -1, 1_000_001)
        ):
            max_attempts = fallback
        before = self.run(self.store.count_jobs())
        got = self.step(
            "enqueue_out_of_range",
            lambda: self.store.enqueue(
                Plain(n=-1), queue=queue, priority=priority, delay=delay, max_attempts=max_attempts
            ),
            None,
        )
        assert got is REFUSED, f"enqueue took an out-of-range option: {got}"
        assert self.run(self.store.count_jobs()) == before

    @rule(
        count=st.integers(1, 20),
        nul=st.booleans(),
        all_or_nothing=st.booleans(),
        priority=priorities,
        cancel=cancel_points,
    )
    def enqueue_many(
        self,
        count: int,
        nul: bool,
        all_or_nothing: bool,
        priority: int | None,
        cancel: int | float | None,
    ) -> None:
        # A NUL in the arguments makes its item invalid (one of them, when asked).
        jobs = [Plain(n=i, text="\x00" if nul and i == count // 2 else "") for i in range(count)]
        got = self.step(
            "enqueue_many",
            lambda: self.store.enqueue_many(jobs, priority=priority, all_or_nothing=all_or_nothing),
            cancel,
        )
        if got not in (CANCELLED, REFUSED):
            self.known += [e.id for e in got if e.id is not None]

    @rule(n=st.integers(0, 100), commit=st.booleans(), cancel=cancel_points)
    def enqueue_in_a_transaction(self, n: int, commit: bool, cancel: int | float | None) -> None:
        async def transaction() -> int | None:
            async with self.store.transaction() as tx:
                await tx.fetch("SELECT count(*) FROM fiefdom_jobs")
                if not commit:
                    await self.store.enqueue(Ghost(n=n), tx=tx)
                    raise Rollback
                return (await self.store.enqueue(Plain(n=n), tx=tx)).id

        try:
            got = self.step("transaction", transaction, cancel)
        except Rollback:
            got = None
        if isinstance(got, int):
            self.known.append(got)

    # -- administration ----------------------------------------------------------------

    def pick_id(self, pick: int, other: int | None) -> int:
        """A known job's id (``pick`` indexes them), or ``other`` when given. Drawn as
        plain numbers: what exists depends on timing (cancellations), and hypothesis
        must draw the same way whatever happened."""
        if other is not None or not self.known:
            return other if other is not None else pick
        return self.known[pick % len(self.known)]

    @rule(pick=st.integers(0, 10_000), other=st.none() | ids, cancel=cancel_points)
    def cancel_job(self, pick: int, other: int | None, cancel: int | float | None) -> None:
        job_id = self.pick_id(pick, other)
        self.step("cancel_job", lambda: self.store.cancel_job(job_id), cancel)

    @rule(pick=st.integers(0, 10_000), other=st.none() | ids, cancel=cancel_points)
    def retry_job(self, pick: int, other: int | None, cancel: int | float | None) -> None:
        job_id = self.pick_id(pick, other)
        self.step("retry_job", lambda: self.store.retry_job(job_id), cancel)

    @rule(queue=queue_names, pause=st.booleans(), cancel=cancel_points)
    def pause_or_resume(self, queue: str, pause: bool, cancel: int | float | None) -> None:
        what = self.store.pause_queue if pause else self.store.resume_queue
        self.step("pause" if pause else "resume", lambda: what(queue), cancel)

    @rule(
        queue=st.none() | queue_names,
        state=st.none() | st.sampled_from(list(JobState)),
        kind=st.none() | st.sampled_from(["chaos.plain", "chaos.single", "nope"]),
        after_id=st.integers(0, 50) | st.sampled_from([2**63 - 1]),
        limit=st.integers(1, 10_000),
        cancel=cancel_points,
    )
    def list_jobs(
        self,
        queue: str | None,
        state: JobState | None,
        kind: str | None,
        after_id: int,
        limit: int,
        cancel: int | float | None,
    ) -> None:
        self.step(
            "list_jobs",
            lambda: self.store.list_jobs(
                queue=queue, state=state, kind=kind, after_id=after_id, limit=limit
            ),
            cancel,
        )

    @rule(cancel=cancel_points)
    def count_jobs(self, cancel: int | float | None) -> None:
        self.step("count_jobs", self.store.count_jobs, cancel)

    # -- the engine's queries ----------------------------------------------------------

    @rule(queue=st.sampled_from(QUEUES), limit=st.integers(1, 20), cancel=cancel_points)
    def claim(self, queue: str, limit: int, cancel: int | float | None) -> None:
        got = self.step(
            "claim",
            lambda: self.queries.claim(queue, limit, worker="chaos-machine", lease=300),
            cancel,
        )
        if got not in (CANCELLED, REFUSED):
            self.held += [Lease(j.id, j.lease_token) for j in got]

    @rule(
        pick=st.integers(0, 10_000),
        state=st.sampled_from(
            [
                JobState.COMPLETED,
                JobState.RETRYABLE,
                JobState.DISCARDED,
                JobState.CANCELLED,
                JobState.AVAILABLE,
                JobState.SCHEDULED,
            ]
        ),
        delay=st.none() | st.floats(0, 3),
        stale=st.booleans(),
        cancel=cancel_points,
    )
    def finish(
        self,
        pick: int,
        state: JobState,
        delay: float | None,
        stale: bool,
        cancel: int | float | None,
    ) -> None:
        if not self.held:
            return
        lease = self.held.pop(pick % len(self.held))
        if stale:  # a token of a claim that lost its lease: must change nothing
            lease = Lease(lease.job_id, lease.token + 1)
        error = None
        if state in (JobState.RETRYABLE, JobState.DISCARDED):
            error = AttemptError(attempt=1, at=time.time(), type="chaos", message="failed")
        outcome = Outcome(
            lease=lease,
            state=state,
            delay=delay if state is not JobState.COMPLETED else None,
            refund=state is JobState.AVAILABLE,
            error=error,
        )
        self.step("finish", lambda: self.queries.finish([outcome]), cancel)

    @rule(cancel=cancel_points)
    def heartbeat(self, cancel: int | float | None) -> None:
        leases = list(self.held)
        self.step("heartbeat", lambda: self.queries.heartbeat(leases, lease=300), cancel)

    @rule(cancel=cancel_points)
    def rescue_and_promote(self, cancel: int | float | None) -> None:
        async def both() -> None:
            await self.queries.rescue()
            await self.queries.promote()

        self.step("rescue_and_promote", both, cancel)

    @rule(
        seconds=st.floats(0.0, 0.15),
        mode=st.sampled_from(["drain", "cancel"]),
        cancel=cancel_points,
    )
    def engine_burst(self, seconds: float, mode: str, cancel: int | float | None) -> None:
        """A real engine runs a moment (handlers complete, fail, snooze, cancel, discard)
        and stops (draining, or cancelling its handlers)."""

        async def handler(job: Plain | Single, ctx: JobContext[Any]) -> object:
            match job.n % 6:
                case 0:
                    raise RuntimeError("chaos")
                case 1:
                    return Snooze(0.05)
                case 2:
                    return Cancel("chaos")
                case 3:
                    return Discard("chaos")
                case 4:
                    await anyio.sleep(0.05)
            return None

        engines: list[JobEngine] = []

        async def burst() -> None:
            engine = JobEngine(
                self.store,
                queues={"default": 4, "other": 2},
                lease=30.0,
                poll_interval=0.02,
                rescue_interval=0.1,
                drain_timeout=0.2,
                retention=None,
            )
            engine.register(Plain, handler)
            engine.register(Single, handler)
            engines.append(engine)
            await engine.start()
            try:
                await anyio.sleep(seconds)
            finally:
                with anyio.CancelScope(shield=True):
                    await engine.stop("drain" if mode == "drain" else "cancel")

        self.step("engine_burst", burst, cancel)

        async def settle() -> None:
            # A stop() cancelled natively returns while its engine still stops
            # (test_a_natively_cancelled_stop_waits_for_the_engine): wait for it here,
            # so that this property stays about the store.
            for engine in engines:
                await engine.stop()

        self.run(settle())

    # -- the property ------------------------------------------------------------------

    @invariant()
    def the_store_answers_a_read_and_a_write(self) -> None:
        async def check() -> None:
            started = time.monotonic()
            await self.store.count_jobs()
            enqueued = await self.store.enqueue(Probe())
            assert enqueued.id is not None
            assert await self.store.cancel_job(enqueued.id) is JobState.CANCELLED
            StoreMachine.checks.append(time.monotonic() - started)
            assert self.store.healthy
            assert await self.store.list_jobs(kind="chaos.ghost", limit=1) == [], (
                "a rolled-back transaction's job exists"
            )
            for job_id in self.known[-5:]:
                assert await self.store.get_job(job_id) is not None, f"job {job_id} vanished"
            me = asyncio.current_task()
            left = [t for t in asyncio.all_tasks() if t is not me]
            assert not left, f"tasks outlived their operation: {left}"

        self.run(check())


async def _new_schema(server: str) -> str:
    schema = f"p_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    return f"{server}?search_path={schema}"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_no_sequence_of_operations_makes_the_store_unusable(
    store_url: str, backend: str, tmp_path: Any, figures: Any
) -> None:
    """No operation sequence, any cancelled mid-flight, makes the store unusable (001/9)."""
    StoreMachine.stats = collections.Counter()
    StoreMachine.checks = []
    made = 0

    def fresh() -> StoreMachine:
        # A database of its own per example: each sequence starts from an empty store.
        nonlocal made
        made += 1
        if backend == "sqlite":
            StoreMachine.url = f"sqlite:///{tmp_path / f'example-{made}.db'}"
        else:
            StoreMachine.url = asyncio.run(_new_schema(store_url.split("?")[0]))
        return StoreMachine()

    started = time.monotonic()
    run_state_machine_as_test(
        fresh,
        settings=settings(
            max_examples=20,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
    stats = StoreMachine.stats
    figures(
        dialect=backend,
        examples=stats.pop("examples", 0),
        operations=sum(v for k, v in stats.items() if k.startswith("op ")),
        cancelled_mid_flight=stats.pop("cancelled mid-flight", 0),
        refused={k.removeprefix("refused "): v for k, v in stats.items() if "refused" in k},
        by_operation={k.removeprefix("op "): v for k, v in stats.items() if k.startswith("op ")},
        read_write_check_p50_ms=ms(percentile(StoreMachine.checks, 50)),
        read_write_check_p99_ms=ms(percentile(StoreMachine.checks, 99)),
        wall_s=round(time.monotonic() - started, 2),
    )
