"""The requests that act on the daemon: calls to exposed actors, pausing, resuming
and stopping them, the job and queue operations, and the status. Each handler takes
its decoded request and returns its reply frame, or raises; ``error_reply`` turns
what it raised into the typed ``error`` frame (an unexpected exception is
``internal``, and logged with its traceback)."""

from __future__ import annotations

import importlib.metadata
import os
import time
from datetime import UTC, datetime
from typing import Any, Final

import anyio
import msgspec

from .._errors import (
    ActorStopped,
    AskTimeout,
    ControlError,
    FiefdomError,
    JobError,
    MailboxFull,
    StoreError,
    UnknownJobKind,
)
from .._log import get_logger
from .._throttle import exc_fields
from ..actors import ActorRef, Domain, Request
from ..actors._envelope import Ask
from ..storage import Job, JobState
from ._codec import Codec, path_of
from ._messages import (
    Call,
    CancelJob,
    ClientMessage,
    Drain,
    DrainQueue,
    EnqueueJob,
    ErrorCode,
    GetJob,
    GetStatus,
    ListJobKinds,
    ListJobs,
    ListQueues,
    PauseActor,
    PauseQueue,
    PruneJobs,
    ResumeActor,
    ResumeQueue,
    RetryJob,
    RetryJobs,
    StopActor,
)
from ._registry import ControlHost, JobService, Target
from ._replies import (
    Ack,
    CallReply,
    EnqueueReply,
    Error,
    JobReply,
    JobsReply,
    KindInfo,
    KindsReply,
    PrunedReply,
    QueueInfo,
    QueuesReply,
    RetriedReply,
    StatusReply,
    _ServerFrame,
)

log = get_logger("fiefdom.control")

_CODES: Final = frozenset(ErrorCode)
_NULL = msgspec.Raw(b"null")
_MSGPACK_NIL = msgspec.Raw(b"\xc0")


def fail(code: ErrorCode, message: str, **details: object) -> ControlError:
    """A typed error to raise in a request handler; it becomes the ``error`` frame."""
    return ControlError(code, message, details)


def error_reply(msg: ClientMessage, exc: Exception) -> Error:
    """The ``error`` frame answering ``msg`` for what its handler raised. Only the
    exceptions that say what went wrong map to a code; anything else is a bug of the
    daemon: ``internal``, logged with its traceback."""
    code: ErrorCode | None = None
    details: dict[str, object] = {}
    match exc:
        case ControlError(code=wire_code, details=wire_details) if wire_code in _CODES:
            code, details = ErrorCode(wire_code), dict(wire_details)
        case AskTimeout(phase=phase, handler_exited=exited):
            code, details = ErrorCode.TIMEOUT, {"phase": phase, "handler_exited": exited}
        case ActorStopped() | MailboxFull() | StoreError():
            code = ErrorCode.UNAVAILABLE
        case UnknownJobKind():
            code = ErrorCode.NOT_FOUND
        case JobError():
            code = ErrorCode.JOB_ERROR
    if code is None:
        log.error("control request failed", request=msg.__struct_config__.tag, **exc_fields(exc))
        return Error(id=msg.id, code=ErrorCode.INTERNAL, message=f"{type(exc).__name__}: {exc}")
    return Error(id=msg.id, code=code, message=str(exc), details=details)


# -- actors ---------------------------------------------------------------------------


async def call(host: ControlHost, msg: Call, codec: Codec[ClientMessage]) -> CallReply:
    """Ask (a ``Request``) or tell (any other message) an exposed actor or domain key."""
    target = host.registry.target(msg.target)
    message_type = target.message_type(msg.message_type)
    try:
        payload = codec.decode_as(msg.message, message_type)
    except msgspec.DecodeError as exc:
        raise fail(
            ErrorCode.INVALID_MESSAGE,
            f"invalid {msg.message_type} message: {exc}",
            **path_of(exc, "$.message"),
        ) from None
    try:
        result = await _deliver(target, msg, payload)
    except (FiefdomError, ControlError):
        raise
    except Exception as exc:
        raise actor_error(msg, exc) from exc
    return call_reply(msg, codec, result)


def start_call(host: ControlHost, msg: Call, codec: Codec[ClientMessage]) -> Ask | CallReply | None:
    """Start ``msg`` without waiting, when it is for an exposed actor (not a domain)
    that takes it at once: the ask queued (its outcome is read from ``Ask.future``
    once done, as a ``CallResult`` or with ``call_failed``), or the reply to a message
    told. None otherwise, nothing sent: ``call``, awaited, answers it (it waits for
    room in the mailbox, and it answers every error)."""
    target = host.registry.get(msg.target)
    if target is None or target.cell is None or msg.key is not None:
        return None
    message_type = target.messages.get(msg.message_type)
    if message_type is None:
        return None
    cell = target.cell
    try:
        # (Codec.decode_as, without its call once it holds the type's decoder.)
        decode = codec.decoders.get(message_type)
        if decode is not None:
            payload = decode(msg.message)
        else:
            payload = codec.decode_as(msg.message, message_type)
        if isinstance(payload, Request):
            ask = cell.new_ask(payload, msg.timeout)
            return ask if cell.queue_ask(ask) else None
        if cell.mailbox.put_nowait(payload):
            return CallReply(id=msg.id, result=_NULL if codec.encoding == "json" else _MSGPACK_NIL)
    except Exception:
        pass  # the same error again from call, awaited, which answers it
    return None


def call_reply(msg: Call, codec: Codec[ClientMessage], result: object) -> CallReply:
    """The reply to ``msg`` once the actor has returned ``result`` (None for a tell)."""
    if result is None:
        raw = _NULL if codec.encoding == "json" else _MSGPACK_NIL
    else:
        raw = msgspec.Raw(codec.encode(result))
    return CallReply(id=msg.id, result=raw)


class CallResult(_ServerFrame, tag="call.reply"):
    """``CallReply`` as the control channel writes it for a call started without a
    task: with the actor's reply itself as its ``result``, encoded in the same pass
    (not encoded first, then copied in), the same bytes as ``call_reply``'s."""

    id: int
    result: Any


def call_failed(msg: Call, exc: Exception) -> Exception:
    """What a call raises when its ask failed with ``exc`` (see ``call``)."""
    if isinstance(exc, (FiefdomError, ControlError)):
        return exc
    error = actor_error(msg, exc)
    error.__cause__ = exc
    return error


def actor_error(msg: Call, exc: Exception) -> ControlError:
    # The actor's handler raised: the caller gets it as a typed error (the actor
    # itself crashed and is handled by its supervisor).
    return fail(
        ErrorCode.ACTOR_ERROR,
        f"{msg.target} failed on {msg.message_type}: {type(exc).__name__}: {exc}",
        exception=type(exc).__name__,
    )


async def _deliver(target: Target, msg: Call, payload: msgspec.Struct) -> object:
    """Ask a ``Request`` (its reply is returned), tell any other message (None)."""
    if target.domain is not None:
        if msg.key is None:
            raise fail(
                ErrorCode.INVALID_MESSAGE,
                f"{msg.target!r} is a domain: the call needs a 'key'",
                path="$.key",
            )
        if isinstance(payload, Request):
            return await target.domain.ask(msg.key, payload, timeout=msg.timeout)
        await target.domain.tell(msg.key, payload)
        return None
    assert target.ref is not None
    if msg.key is not None:
        raise fail(
            ErrorCode.INVALID_MESSAGE,
            f"{msg.target!r} is a single actor: a call to it takes no 'key'",
            path="$.key",
        )
    if isinstance(payload, Request):
        return await target.ref.ask(payload, timeout=msg.timeout)
    await target.ref.tell(payload)
    return None


async def operate(host: ControlHost, msg: PauseActor | ResumeActor | StopActor) -> Ack:
    """Pause, resume or stop an exposed actor, a domain key or a whole domain."""
    target = host.registry.target(msg.target)
    key = msg.key
    ref: ActorRef[Any] | None = target.ref
    whole: Domain[Any, Any] | None = None  # set when the request is for a whole domain
    if target.domain is not None:
        if key is None:
            whole = target.domain
        else:
            ref = target.domain.ref(key)
    elif key is not None:
        raise fail(
            ErrorCode.INVALID_MESSAGE,
            f"{msg.target!r} is a single actor: it takes no 'key'",
            path="$.key",
        )
    match msg:
        case PauseActor():
            if whole is not None:
                whole.pause()
            elif ref is not None:
                ref.pause()
        case ResumeActor():
            if whole is not None:
                whole.resume()
            elif ref is not None:
                ref.resume()
        case StopActor(timeout=timeout):
            try:
                with anyio.fail_after(timeout):
                    if whole is not None:
                        await whole.passivate_all()
                    elif ref is not None:
                        await ref.stop()
            except TimeoutError:
                what = msg.target if key is None else f"{msg.target} key {key!r}"
                raise fail(
                    ErrorCode.TIMEOUT,
                    f"{what} did not stop within {timeout:g}s; it stops once its "
                    "running message has returned",
                ) from None
    log.info("actor control", request=msg.__struct_config__.tag, target=msg.target, key=key)
    return Ack(id=msg.id)


# -- jobs and queues ------------------------------------------------------------------


def _jobs(host: ControlHost) -> JobService:
    jobs = host.jobs
    if jobs is None:
        raise fail(ErrorCode.UNAVAILABLE, "the job engine is not running")
    return jobs


async def list_jobs(host: ControlHost, msg: ListJobs) -> JobsReply:
    jobs = _jobs(host)
    since = None if msg.since is None else datetime.fromtimestamp(msg.since, UTC)
    page = await jobs.list_jobs(
        queue=msg.queue,
        state=msg.state,
        kind=msg.kind,
        after_id=msg.after_id,
        limit=msg.limit,
        key=msg.key,
        since=since,
        newest_first=msg.newest_first,
    )
    if not msg.count:
        return JobsReply(id=msg.id, jobs=page)
    total, cap = await jobs.count_listed(
        queue=msg.queue, state=msg.state, kind=msg.kind, key=msg.key, since=since
    )
    return JobsReply(id=msg.id, jobs=page, total=total, total_cap=cap)


async def get_job(host: ControlHost, msg: GetJob) -> JobReply:
    return JobReply(id=msg.id, job=await _jobs(host).get_job(msg.job_id))


async def enqueue(host: ControlHost, msg: EnqueueJob, codec: Codec[ClientMessage]) -> EnqueueReply:
    """Decode ``args`` into the kind's Struct, then enqueue it (unless draining)."""
    jobs = _jobs(host)
    kind = jobs.job_kind(msg.kind)
    try:
        job = codec.decode_as(msg.args, kind)
    except msgspec.DecodeError as exc:
        raise fail(
            ErrorCode.INVALID_MESSAGE,
            f"invalid arguments of job kind {msg.kind!r}: {exc}",
            **path_of(exc, "$.args"),
        ) from None
    if host.draining:
        raise fail(ErrorCode.UNAVAILABLE, "the daemon is draining and takes no new jobs")
    try:
        enqueued = await jobs.enqueue(job, queue=msg.queue, priority=msg.priority, delay=msg.delay)
    except ValueError as exc:
        # The store refused the job before writing anything (arguments it cannot
        # hold, a value out of range): the client sent it, so it is named to them.
        raise fail(ErrorCode.INVALID_MESSAGE, f"job of kind {msg.kind!r} refused: {exc}") from None
    return EnqueueReply(id=msg.id, enqueued=enqueued)


async def retry_job(host: ControlHost, msg: RetryJob) -> JobReply:
    jobs = _jobs(host)
    before = await jobs.get_job(msg.job_id)
    job = await jobs.retry_job(msg.job_id, force=msg.force)
    log.info("job retried", job_id=msg.job_id, kind=job.kind, previous=str(before.state))
    return JobReply(id=msg.id, job=job, previous=before.state)


async def cancel_job(host: ControlHost, msg: CancelJob) -> JobReply:
    jobs = _jobs(host)
    before = await jobs.get_job(msg.job_id)
    job = await jobs.cancel_job(msg.job_id)
    return JobReply(id=msg.id, job=job, previous=before.state)


async def job_maintenance(
    host: ControlHost, msg: ListJobKinds | RetryJobs | PruneJobs
) -> KindsReply | RetriedReply | PrunedReply:
    """The registered kinds, and the bulk operations: retrying many jobs and pruning
    old ones. Bad input is refused before anything is written."""
    jobs = _jobs(host)
    match msg:
        case ListJobKinds():
            kinds = [_kind_info(k) for k in jobs.kinds()]
            return KindsReply(id=msg.id, kinds=sorted(kinds, key=lambda k: k.kind))
        case RetryJobs():
            if msg.state not in _FINAL:
                raise fail(
                    ErrorCode.INVALID_MESSAGE,
                    f"only discarded, cancelled or completed jobs can be retried, not {msg.state}",
                    path="$.state",
                )
            retried, skipped = await jobs.retry_jobs(
                state=msg.state, queue=msg.queue, kind=msg.kind, limit=msg.limit, force=msg.force
            )
            log.info(
                "jobs retried",
                state=str(msg.state),
                queue=msg.queue,
                kind=msg.kind,
                retried=retried,
                skipped=skipped,
            )
            return RetriedReply(id=msg.id, retried=retried, skipped=skipped)
        case PruneJobs():
            for index, state in enumerate(msg.states):
                if state not in _FINAL:
                    raise fail(
                        ErrorCode.INVALID_MESSAGE,
                        f"only completed, cancelled or discarded jobs can be pruned, not {state}",
                        path=f"$.states[{index}]",
                    )
            deleted = await jobs.prune_jobs(
                older_than=msg.older_than,
                states=msg.states,
                queue=msg.queue,
                kind=msg.kind,
                limit=msg.limit,
            )
            log.info(
                "jobs pruned",
                older_than=msg.older_than,
                states=[str(s) for s in msg.states],
                queue=msg.queue,
                kind=msg.kind,
                deleted=deleted,
            )
            return PrunedReply(id=msg.id, deleted=deleted, more=deleted >= msg.limit)


_FINAL: Final = frozenset({JobState.COMPLETED, JobState.CANCELLED, JobState.DISCARDED})


def _kind_info(kind: type[Job]) -> KindInfo:
    options = kind.options
    unique = options.unique
    described = None
    if unique is not None:
        by = (
            "all arguments"
            if unique.by_args is True
            else ("no arguments" if unique.by_args is False else ", ".join(unique.by_args))
        )
        described = f"by {by}" + (", queue" if unique.by_queue else "")
        if unique.period is not None:
            described += f", per {unique.period:g}s"
        described += " while " + ", ".join(sorted(str(s) for s in unique.states))
    return KindInfo(
        kind=options.kind,
        queue=options.queue,
        priority=options.priority,
        max_attempts=options.max_attempts,
        timeout=options.timeout,
        unique=described,
        domain=options.domain,
        key=options.key,
        ordered=options.ordered,
        fields=list(kind.__struct_fields__),
    )


async def queues(host: ControlHost, msg: ListQueues) -> QueuesReply:
    return QueuesReply(id=msg.id, queues=await _jobs(host).queues())


async def pause_or_resume_queue(host: ControlHost, msg: PauseQueue | ResumeQueue) -> Ack:
    jobs = _jobs(host)
    if isinstance(msg, PauseQueue):
        await jobs.pause(msg.queue)
    else:
        await jobs.resume(msg.queue)
    return Ack(id=msg.id)


async def drain_queue(host: ControlHost, msg: DrainQueue) -> Ack:
    try:
        await _jobs(host).drain(msg.queue, msg.timeout)
    except TimeoutError:
        raise _still_draining(f"queue {msg.queue!r}", msg.timeout) from None
    return Ack(id=msg.id)


async def drain(host: ControlHost, msg: Drain) -> Ack:
    try:
        await host.drain(msg.timeout)
    except TimeoutError:
        raise _still_draining("the daemon", msg.timeout) from None
    return Ack(id=msg.id)


def _still_draining(what: str, timeout: float | None) -> ControlError:
    return fail(
        ErrorCode.TIMEOUT,
        f"{what} still had running jobs after {timeout or 0:g}s; the drain goes on",
    )


# -- status ---------------------------------------------------------------------------


async def status(host: ControlHost, msg: GetStatus, connections: int) -> StatusReply:
    queue_infos: list[QueueInfo] = []
    if host.jobs is not None:
        queue_infos = await host.jobs.queues()
    checks = await host.readiness()
    return StatusReply(
        id=msg.id,
        name=host.name,
        version=_version(),
        pid=os.getpid(),
        uptime=time.time() - host.started_at,
        ready=all(checks.values()),
        draining=host.draining,
        loop=host.loop_name,
        tree=msgspec.to_builtins(host.system.statistics()),
        targets=[t.info() for t in host.registry.targets()],
        queues=queue_infos,
        connections=connections,
        cluster=None if host.jobs is None else host.jobs.cluster(),
    )


def _version() -> str:
    # The installed distribution's: the package itself sits in the layer above this one.
    try:
        return importlib.metadata.version("fiefdom")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
