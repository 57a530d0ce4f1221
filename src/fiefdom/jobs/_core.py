"""The state one job engine shares between its parts (fetchers, workers, finisher,
maintenance services): the jobs it holds, its queues, its counters, and the few
operations every part needs (cancel a held job, hand an outcome to the finisher,
publish an event, back off from a failing store)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Literal

import anyio
import msgspec

from .._durations import Durations
from .._log import get_logger
from .._throttle import Throttle, exc_fields
from ..actors import Domain
from ..storage import (
    ClaimedJob,
    EngineQueries,
    Job,
    JobEvent,
    JobOptions,
    JobState,
    Outcome,
    Store,
    engine_queries,
    partition_of,
)
from ._kinds import JobContext
from ._ownership import Ownership

log = get_logger("fiefdom.jobs")

# Seconds between retries of an unreachable store, at most: short, so that work
# resumes within about this long of the database coming back.
_MAX_BACKOFF = 2.0

# How many times a job may be snoozed before the next snooze discards it (an
# engine's ``max_snoozes``; None: no limit).
DEFAULT_MAX_SNOOZES = 100

CancelReason = Literal["cancel", "lease", "shutdown", "pause"]


@dataclasses.dataclass(slots=True)
class Kind:
    """A registered job kind: its class, options, handler and argument decoder."""

    cls: type[Job]
    options: JobOptions
    handler: Callable[[Any, JobContext[Any]], Awaitable[object]]
    decoder: msgspec.json.Decoder[Any]
    domain: Domain[Any, Any] | None


class Held:
    """A job this engine claimed and has not yet recorded."""

    __slots__ = ("cancel_reason", "finished", "given_back", "job", "released", "runner", "scope")

    def __init__(self, job: ClaimedJob, runner: Runner) -> None:
        self.job = job
        self.runner = runner
        # Its worker's cancel scope while its handler runs (None before and after):
        # cancelling it cancels this job's handler and nothing else.
        self.scope: anyio.CancelScope | None = None
        self.cancel_reason: CancelReason | None = None
        self.finished = False  # its outcome was handed to the finisher
        self.given_back: str | None = None  # why it went back unrun (its event's detail)
        self.released = False  # its outcome recorded (or nothing to record): slot freed


class Inbox:
    """A queue's claimed jobs on their way from its fetcher to its workers, in order
    (``None``: a worker's sentinel). An ``asyncio.Queue`` without what the hand-over
    does not use (a bound, task counting, a loop check per wait), which cost a tenth of
    the event loop's time in a drain on SQLite. As in ``asyncio.Queue``, an item stays
    in the deque until a worker takes it: a future only wakes a waiting worker, and a
    worker cancelled after its wake-up passes the wake-up on, so no item is lost or
    left waiting while a worker waits."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: collections.deque[Held | None] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Held | None) -> None:
        self._items.append(item)
        self._wake_one()

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def get(self) -> Held | None:
        items = self._items
        while not items:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()  # (a no-op once woken)
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                if items and not waiter.cancelled():
                    # Woken for an item this worker will not take: wake another.
                    self._wake_one()
                raise
        return items.popleft()


class Runner:
    """One queue's fetcher state."""

    __slots__ = ("concurrency", "in_flight", "inbox", "name", "paused", "running", "wake")

    def __init__(self, name: str, concurrency: int) -> None:
        self.name = name
        self.concurrency = concurrency
        self.in_flight = 0
        self.running = 0
        self.paused = False
        self.wake = asyncio.Event()
        self.inbox = Inbox()

    def reset(self) -> None:
        self.in_flight = self.running = 0
        self.inbox = Inbox()


# Upper bounds (seconds) of the buckets of the claim and outcome-write time histograms
# (``Durations``). A claim that slows down as the queue runs (on PostgreSQL, one that
# reads the dead entries left in the claim index until a vacuum removes them) shows
# there first.
STORE_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclasses.dataclass(frozen=True, slots=True)
class Timing:
    """An engine's timing settings (validated by ``JobEngine``)."""

    lease: float
    heartbeat: float
    poll: float
    rescue_every: float
    batch: int
    drain_timeout: float


class Core:
    """What an engine's parts share. Not public: ``JobEngine`` is the face."""

    def __init__(
        self,
        store: Store,
        *,
        name: str | None,
        queues: dict[str, int],
        domains: dict[str, Domain[Any, Any]],
        timing: Timing,
        max_snoozes: int | None = DEFAULT_MAX_SNOOZES,
    ) -> None:
        self.store = store
        self.max_snoozes = max_snoozes
        self.queries: EngineQueries = engine_queries(store)
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{name or uuid.uuid4().hex[:8]}"
        self.path = f"jobs/{name or 'engine'}"
        self.domains = domains
        self.timing = timing
        self.kinds: dict[str, Kind] = {}
        self.runners = {q: Runner(q, n) for q, n in queues.items()}
        self.held: dict[int, Held] = {}
        self.pending: list[tuple[Held, Outcome | None]] = []
        self.pending_event = asyncio.Event()
        self.subscribers: list[Callable[[JobEvent], None]] = []
        self.stop_requested = asyncio.Event()
        self.hard_stop = False
        self.idle = asyncio.Event()
        self.released = asyncio.Event()  # a held job was let go
        self.claimed = 0
        self.outcomes: dict[str, int] = {}
        self.stale = 0
        self.rescued = 0
        self.throttle = Throttle()  # repeated failure lines, one per 10 s per event
        self.recorded_at = 0.0  # monotonic time of the last outcome write that succeeded
        self.finish_failures = 0  # consecutive failed outcome writes (readiness)
        self.claim_failures = 0  # consecutive failed claims, any queue (readiness)
        self.claim_times = Durations(STORE_TIME_BUCKETS)
        self.finish_times = Durations(STORE_TIME_BUCKETS)
        # Paused queues are shared through the store: no claims until they are known.
        self.queue_state_known = False
        self.queue_state_stale = True  # read them on the next maintenance round
        self.queue_changes = 0  # pause notifications received, to spot a racing read
        # Which keyed jobs this engine may claim: its cluster node's partitions; none
        # when it serves no domain (it claims only jobs without a key).
        self.ownership: Ownership | None = None
        self.keyed = bool(domains)

    def claimable(self) -> Collection[int] | None:
        """The partitions whose keyed jobs a claim may take; None: all of them."""
        if self.ownership is not None:
            return self.ownership.claimable()
        return None if self.keyed else ()

    def epoch(self, partition: int | None) -> int | None:
        """The epoch this engine's node holds ``partition`` under (None: no cluster)."""
        if partition is None or self.ownership is None:
            return None
        return self.ownership.epoch(partition)

    def lose(self, partitions: frozenset[int], urgent: bool) -> Awaitable[None]:
        """This process no longer owns ``partitions``. Their jobs not yet started go
        back to the queue at once; running ones are cancelled when ``urgent`` (the
        leases are expiring) and otherwise let finish (a handoff); their keys'
        actors stop (cancelled, or after their current message). The result waits
        until every such job has been let go: a handoff awaits it before releasing
        the leases, so the next owner never overlaps a handler."""
        for held in list(self.held.values()):
            if held.job.partition in partitions and (urgent or held.scope is None):
                self.cancel_held(held.job.id, "shutdown")
        for domain in self.domains.values():
            domain.fence(lambda key: partition_of(key) in partitions, cancel=urgent)
        return self._let_go(partitions)

    async def _let_go(self, partitions: frozenset[int]) -> None:
        while any(h.job.partition in partitions for h in self.held.values()):
            self.released.clear()
            await self.released.wait()

    def reset(self) -> None:
        self.stop_requested = asyncio.Event()
        self.hard_stop = False
        for held in self.held.values():
            held.released = True  # a previous run's: it frees no slot of this one
        self.held.clear()
        self.pending.clear()
        self.queue_state_known = False
        self.queue_state_stale = True
        for runner in self.runners.values():
            runner.reset()

    # -- held jobs -------------------------------------------------------------------

    def cancel_held(self, job_id: int, reason: CancelReason) -> None:
        held = self.held.get(job_id)
        if held is not None:
            self.cancel(held, reason)

    def cancel(self, held: Held, reason: CancelReason) -> None:
        """Cancel ``held``'s handler (or, not started yet, its start)."""
        if held.finished:
            return
        if held.cancel_reason is None or reason == "cancel":
            held.cancel_reason = reason
        if held.scope is not None:
            held.scope.cancel()

    def cancel_all(self, reason: CancelReason) -> None:
        for job_id in list(self.held):
            self.cancel_held(job_id, reason)

    def submit(self, held: Held, outcome: Outcome | None) -> None:
        """Hand a held job's outcome to the finisher (None: nothing to record)."""
        held.finished = True
        if outcome is None:
            self.release(held)
            self.stale += 1
            return
        self.pending.append((held, outcome))
        self.pending_event.set()

    def release(self, held: Held) -> None:
        if held.released:
            return
        held.released = True
        # The job may be held anew by now (claimed again once its lease lapsed and it
        # was rescued): only this run's entry goes.
        if self.held.get(held.job.id) is held:
            del self.held[held.job.id]
        held.runner.in_flight -= 1
        held.runner.wake.set()
        self.released.set()

    # -- queue state -----------------------------------------------------------------

    def apply_paused(self, paused: set[str]) -> None:
        for runner in self.runners.values():
            was = runner.paused
            runner.paused = runner.name in paused
            if was and not runner.paused:
                runner.wake.set()
        if not self.queue_state_known:
            self.queue_state_known = True
            for runner in self.runners.values():
                runner.wake.set()

    def wake_all(self) -> None:
        for runner in self.runners.values():
            runner.wake.set()

    # -- events ----------------------------------------------------------------------

    def emit(
        self, job: ClaimedJob, state: JobState, detail: str | None, *, snoozed: bool = False
    ) -> None:
        self.publish(
            JobEvent(
                job_id=job.id,
                kind=job.kind,
                queue=job.queue,
                state=state,
                attempt=job.attempt,
                at=time.time(),
                detail=detail,
                queued_for=job.queued_for if state is JobState.RUNNING else None,
                snoozed=snoozed,
            )
        )

    def publish(self, event: JobEvent) -> None:
        for callback in list(self.subscribers):
            try:
                callback(event)
            except Exception:
                log.error("job event subscriber raised", subscriber=repr(callback), **exc_fields())

    # -- failures --------------------------------------------------------------------

    async def backoff(
        self, what: str, exc: BaseException, failures: int, *, interruptible: bool = True
    ) -> None:
        """Wait before retrying a failed store operation (longer each time); a stop
        cuts the wait short unless ``interruptible`` is False."""
        delay = min(_MAX_BACKOFF, 0.05 * 2 ** min(failures, 10))
        self.throttle.warning(
            log,
            f"store operation failed; retrying: {what}",
            operation=what,
            error=str(exc),
            retry_in=delay,
        )
        if not interruptible:
            await anyio.sleep(delay)
            return
        with anyio.move_on_after(delay):
            await self.stop_requested.wait()
