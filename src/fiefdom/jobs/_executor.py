"""Running claimed jobs: a queue's workers take held jobs from its inbox, run each
handler in the worker's cancel scope (inside the key's actor for a job whose kind
names a domain) and turn what it returned or raised into an outcome."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec

from .._errors import OwnerUnavailable
from .._log import get_logger
from .._throttle import Throttle, exc_fields
from ..storage import AttemptError, ClaimedJob, Job, JobOptions, JobState, Lease, Outcome
from ._core import Core, Held, Kind, Runner
from ._kinds import (
    Cancel,
    Discard,
    DomainJobContext,
    JobContext,
    JobOutcome,
    Snooze,
    describe_error,
    note,
    snoozed_too_often,
)

log = get_logger("fiefdom.jobs")

# A failed attempt that will be retried is logged at warning level, at most once per
# interval per kind: a kind whose every job fails (a dependency down) must not
# flood the log; the line after a quiet interval counts those held back.
_RETRY_LOG_INTERVAL = 10.0
_retry_logs: dict[str, Throttle] = {}


def _log_retry(job: ClaimedJob, err: AttemptError, state: JobState, delay: float) -> None:
    throttle = _retry_logs.get(job.kind)
    if throttle is None:
        throttle = _retry_logs[job.kind] = Throttle(_RETRY_LOG_INTERVAL)
    throttle.warning(
        log,
        "job attempt failed: will retry",
        kind=job.kind,
        job_id=job.id,
        key=job.key,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        error=f"{err.type}: {err.message}",
        state=str(state),
        retry_in=round(delay, 3),
    )


class _Raised:
    """An exception a domain job's handler raised, carried out of the actor's turn
    as a value: a failing job is an outcome, not a crash of the key's actor."""

    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


class _Queued:
    """A domain job's key did not take it within its queued bound: it never ran."""

    __slots__ = ()


_QUEUED = _Queued()
# The job's key's partition was no longer this node's when the key's actor took it:
# it never ran.
_NOT_OWNED = _Queued()
# Why such a job went back, whether the worker or the key's actor found it so.
_PARTITION_LOST = "given back unrun: its key's partition is no longer held"


async def work(core: Core, runner: Runner) -> None:
    """One worker of ``runner``'s queue: runs held jobs until its sentinel.

    Its handlers run in one cancel scope, shared by the jobs it runs one after the
    other, until a job is cancelled through it (``Core.cancel_held``: a cancel
    request, a lost lease, a stop); a cancelled scope cannot serve again (its
    cancellation holds for whatever runs in it), so the worker leaves it and enters
    a new one. Entering and leaving a scope per job took about a quarter of the
    event loop's time in a drain. A job's handler is the only thing the scope can
    cancel: it is the job's (``held.scope``) only while that handler runs, and the
    worker leaves a cancelled scope before it waits for another job."""
    inbox = runner.inbox
    while True:
        held: Held | None = None
        with anyio.CancelScope() as scope:
            while not scope.cancel_called:
                held = await inbox.get()
                if held is None:
                    core.idle.set()  # a stop waits for the inboxes to empty too
                    return
                runner.running += 1
                try:
                    outcome = await execute(core, held, scope)
                finally:
                    runner.running -= 1
                    if not runner.running:
                        core.idle.set()
                core.submit(held, outcome)
                held = None
        if held is not None:
            # The scope caught its own cancellation, raised in the handler (a
            # cancellation from further out is not caught and ends the worker, as it
            # did with a scope per job): the job was cancelled.
            core.submit(held, cancelled_outcome(held, Lease(held.job.id, held.job.lease_token)))


async def execute(core: Core, held: Held, scope: anyio.CancelScope) -> Outcome | None:
    """Run ``held``'s handler in ``scope`` (its worker's): its outcome, or None when
    there is nothing to record. A cancellation through ``scope`` propagates, and its
    worker records the job as cancelled."""
    job = held.job
    lease = Lease(job.id, job.lease_token)
    if held.cancel_reason is not None or core.stop_requested.is_set():
        return cancelled_outcome(held, lease)
    kind = core.kinds.get(job.kind)
    if kind is None:
        reason = (
            f"no handler for job kind {job.kind!r} on engine {core.worker} "
            f"(it handles {sorted(core.kinds)})"
        )
        log.error("discarding a job of an unknown kind", job_id=job.id, kind=job.kind)
        return Outcome(
            lease=lease,
            state=JobState.DISCARDED,
            error=note(job.attempt, time.time(), "fiefdom.UnknownJobKind", reason),
        )
    try:
        payload = kind.decoder.decode(job.args)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        reason = f"the arguments of {job.kind} job {job.id} do not decode: {exc}"
        log.error("discarding a job whose arguments do not decode", job_id=job.id, error=str(exc))
        return Outcome(
            lease=lease,
            state=JobState.DISCARDED,
            error=note(job.attempt, time.time(), "msgspec.ValidationError", reason),
        )
    # A domain job's context: its actor is set inside the key's actor (_in_actor),
    # before its handler starts.
    context = JobContext if kind.domain is None else DomainJobContext
    ctx: JobContext[Any] = context(
        id=job.id,
        kind=job.kind,
        queue=job.queue,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        store=core.store,
        partition=job.partition,
        epoch=core.epoch(job.partition),
        snoozes=job.snoozes,
    )
    if kind.domain is not None:
        assert kind.options.key is not None
        ownership = core.ownership
        if (
            job.partition is not None
            and ownership is not None
            and not ownership.owns(job.partition)
        ):
            # Claimed while the partition was ours, and no longer is (lost, or the
            # process was stopped past its lease while the job waited for a worker):
            # another node may run the key now. Back unrun.
            held.given_back = _PARTITION_LOST
            return given_back(core, lease)
        if kind.domain.is_paused(getattr(payload, kind.options.key)):
            # A paused key takes no message: handed to it, the job would hold a
            # slot of its queue (its lease kept alive by the heartbeat) until the
            # key resumes. It goes back unrun, to be claimed again after a poll.
            held.given_back = "given back unrun: its domain key is paused"
            return given_back(core, lease)
    result: object
    held.scope = scope
    try:
        if kind.domain is not None:
            assert kind.options.key is not None
            result = await _call_in_domain(
                core, held, kind, getattr(payload, kind.options.key), payload, ctx
            )
            if type(result) is _Raised:
                result = result.exc
        elif kind.options.timeout is not None:
            with anyio.fail_after(kind.options.timeout):
                result = await kind.handler(payload, ctx)
        else:
            result = await kind.handler(payload, ctx)
    except Exception as exc:
        result = exc
    finally:
        held.scope = None
    # A handler that returned although cancelled (it caught the cancellation): its
    # result stands, unless the lease is lost (the job is no longer ours to record).
    if held.cancel_reason == "lease":
        return cancelled_outcome(held, lease)
    if type(result) is _Queued:
        if held.cancel_reason is not None:
            return cancelled_outcome(held, lease)
        return given_back(core, lease)
    return outcome_of(job, lease, kind.options, result, core.max_snoozes)


def given_back(core: Core, lease: Lease) -> Outcome:
    """A job that never started goes back without using an attempt, claimable
    again after a poll interval (not at once, which would spin on the same key)."""
    return Outcome(lease=lease, state=JobState.SCHEDULED, delay=core.timing.poll, refund=True)


async def _call_in_domain(
    core: Core, held: Held, kind: Kind, key: Any, payload: Job, ctx: JobContext[Any]
) -> object:
    """Run a domain job in its key's actor; ``_Queued`` if it never started.

    The job's timeout starts with its handler, inside the actor (_in_actor): the
    time queued behind other work for the key is not the job's. That wait still
    has a bound, the longer of the lease and the job's timeout, so that a key
    stuck behind earlier work (or paused after the job was handed to it) does not
    hold a slot of the queue indefinitely; past it the job goes back unrun.
    Cancellation (by request, lost lease, shutdown) reaches it through the
    caller's scope either way.
    """
    assert kind.domain is not None
    queued_for = max(core.timing.lease, kind.options.timeout or 0.0)
    result: object = _QUEUED  # until the call returns: cut short by the bound, it never ran
    with anyio.CancelScope() as queued:
        queued.deadline = anyio.current_time() + queued_for
        try:
            result = await kind.domain.call(
                key,
                _in_actor(
                    kind.handler,
                    payload,
                    ctx,
                    kind.options.timeout,
                    queued,
                    core.stop_requested,
                    _owned(core, held.job.partition),
                ),
                timeout=None,
                name=f"job:{kind.options.kind}",
            )
        except OwnerUnavailable as exc:
            # For this very key (not an ask the handler made): the key's actor found
            # it another node's as the job's turn came (this process paused past its
            # lease), or it could not be activated here. Nothing ran, as below.
            if exc.path != f"{kind.domain.path}/{key}":
                raise
            result = _NOT_OWNED
    if type(result) is _Queued and core.stop_requested.is_set():
        # The engine began stopping while the job waited for its key: like a job
        # not yet handed to a worker, it goes back unrun at once.
        held.cancel_reason = held.cancel_reason or "shutdown"
        return _QUEUED
    if result is _NOT_OWNED:
        held.given_back = _PARTITION_LOST
        return _QUEUED
    if queued.cancelled_caught or type(result) is _Queued:
        log.warning(
            "domain job given back unrun: its key's actor did not take it in time",
            job_id=held.job.id,
            kind=held.job.kind,
            key=str(key),
            queued_for=queued_for,
        )
        held.given_back = f"given back unrun: its domain key did not take it within {queued_for:g}s"
        return _QUEUED
    return result


def _owned(core: Core, partition: int | None) -> Callable[[], int | None] | None:
    """What the key's actor asks as it starts the job: the epoch under which this
    node owns ``partition`` now (its lease fresh), or None if it no longer does.
    None instead of the function when no cluster decides it."""
    ownership = core.ownership
    if partition is None or ownership is None:
        return None

    def epoch() -> int | None:
        return ownership.epoch(partition) if ownership.owns(partition) else None

    return epoch


def _in_actor(
    handler: Callable[[Any, JobContext[Any]], Awaitable[object]],
    payload: Job,
    ctx: JobContext[Any],
    timeout: float | None,
    queued: anyio.CancelScope,
    stopping: asyncio.Event,
    owned: Callable[[], int | None] | None,
) -> Callable[[Any], Awaitable[object]]:
    async def run(actor: Any) -> object:
        if queued.cancel_called or stopping.is_set():
            # The queued bound passed as the actor took the job (the caller is being
            # cancelled and gives the job back), or the engine is stopping: the
            # handler must not start.
            return _QUEUED
        if owned is not None:
            # The worker checked ownership when it took the job, some turns of the
            # loop ago (or longer, behind the key's earlier messages). A process
            # paused in between resumes with the actor about to start the job before
            # its lease loop has run: the key may be another node's by now.
            epoch = owned()
            if epoch is None:
                return _NOT_OWNED
            # Held again under a new epoch meanwhile: its fenced writes use that one.
            ctx.epoch = epoch
        # Started: from here only the job's own timeout applies.
        queued.deadline = math.inf
        ctx.actor = actor
        try:
            if timeout is None:
                return await handler(payload, ctx)
            # The same TimeoutError as a job outside a domain: a failed attempt.
            with anyio.fail_after(timeout):
                return await handler(payload, ctx)
        except Exception as exc:
            return _Raised(exc)

    return run


def cancelled_outcome(held: Held, lease: Lease) -> Outcome | None:
    job = held.job
    reason = held.cancel_reason or "shutdown"
    if reason == "lease":
        return None  # another claim owns the job now: nothing of ours to record
    if reason == "cancel":
        return Outcome(
            lease=lease,
            state=JobState.CANCELLED,
            error=note(job.attempt, time.time(), "fiefdom.Cancelled", "cancelled by request"),
        )
    # Shutdown: the job goes back as it was, without using an attempt.
    return Outcome(lease=lease, state=JobState.AVAILABLE, delay=0.0, refund=True)


def outcome_of(
    job: ClaimedJob,
    lease: Lease,
    options: JobOptions,
    result: object,
    max_snoozes: int | None,
) -> Outcome:
    now = time.time()
    if not isinstance(result, BaseException):
        return Outcome(lease=lease, state=JobState.COMPLETED)
    if isinstance(result, JobOutcome):
        if isinstance(result, Cancel):
            err = note(job.attempt, now, "fiefdom.Cancel", result.reason)
            return Outcome(lease=lease, state=JobState.CANCELLED, error=err)
        if isinstance(result, Discard):
            err = note(job.attempt, now, "fiefdom.Discard", result.reason)
            log.warning(
                "job discarded by its handler",
                kind=job.kind,
                job_id=job.id,
                key=job.key,
                attempt=job.attempt,
                error=result.reason,
            )
            return Outcome(lease=lease, state=JobState.DISCARDED, error=err)
        if isinstance(result, Snooze):
            if max_snoozes is not None and job.snoozes >= max_snoozes:
                return _too_many_snoozes(job, lease, max_snoozes, now)
            state = JobState.SCHEDULED if result.delay > 0 else JobState.AVAILABLE
            return Outcome(lease=lease, state=state, delay=result.delay, refund=True, snooze=True)
    err = describe_error(result, job.attempt, now)
    if job.attempt >= job.max_attempts:
        log.warning(
            "job failed its last attempt: discarded",
            kind=job.kind,
            job_id=job.id,
            key=job.key,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            error=f"{err.type}: {err.message}",
        )
        return Outcome(lease=lease, state=JobState.DISCARDED, error=err)
    try:
        delay = float(options.backoff(job.attempt))
    except Exception:
        log.error("backoff function raised; retrying at once", kind=job.kind, **exc_fields())
        delay = 0.0
    if not math.isfinite(delay) or delay < 0:
        delay = 0.0
    state = JobState.RETRYABLE if delay > 0 else JobState.AVAILABLE
    _log_retry(job, err, state, delay)
    return Outcome(lease=lease, state=state, delay=delay, error=err)


def _too_many_snoozes(job: ClaimedJob, lease: Lease, max_snoozes: int, now: float) -> Outcome:
    """A snooze past the engine's ``max_snoozes``: the job is discarded instead (a
    dependency that answers "later" forever must not keep it alive forever)."""
    log.warning(
        "job snoozed too many times: discarded",
        kind=job.kind,
        job_id=job.id,
        key=job.key,
        attempt=job.attempt,
        snoozes=job.snoozes,
        max_snoozes=max_snoozes,
    )
    err = note(
        job.attempt,
        now,
        "fiefdom.TooManySnoozes",
        snoozed_too_often(job.snoozes, max_snoozes),
    )
    return Outcome(lease=lease, state=JobState.DISCARDED, error=err)
