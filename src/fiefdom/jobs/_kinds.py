"""The engine's side of job kinds: what a handler is given (``JobContext``), the
outcomes it may return or raise (``Cancel``, ``Discard``, ``Snooze``), and how an
exception becomes the error recorded on the job."""

from __future__ import annotations

import math
from typing import Generic, TypeVar

from ..storage import AttemptError, JobEvent, JobState, Store, Transaction

T = TypeVar("T")


class JobOutcome(Exception):
    """Base of the outcomes other than success. A handler may ``return`` one or
    ``raise`` one (raising reaches out of nested code)."""


class Cancel(JobOutcome):
    """End the job as ``cancelled``: it will not be retried."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Discard(JobOutcome):
    """End the job as ``discarded`` (kept, listed, and re-runnable with ``retry_job``)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Snooze(JobOutcome):
    """Run the job again after ``delay`` seconds without using an attempt. The job
    counts its snoozes (``JobInfo.snoozes``); once they reach the engine's
    ``max_snoozes`` (100 by default), the next snooze discards the job instead."""

    def __init__(self, delay: float) -> None:
        if not delay >= 0 or math.isinf(delay):
            raise ValueError(f"Snooze(delay) must be finite seconds >= 0, got {delay}")
        self.delay = delay
        super().__init__(f"snoozed for {delay:g}s")


_SNOOZED = "snoozed for "


def snooze_detail(delay: float, snoozes: int) -> str:
    """The ``detail`` of the event of a snoozed job (``snoozes``: its count now)."""
    return f"{_SNOOZED}{delay:g}s (snooze {snoozes})"


def is_snooze(event: JobEvent) -> bool:
    """Whether ``event`` says that a handler snoozed its job (the job waits again,
    its attempt given back), as opposed to a job given back unrun: its ``snoozed``
    field, or, for an event of a daemon from before that field, its detail."""
    if event.snoozed:
        return True
    return (
        event.state in (JobState.SCHEDULED, JobState.AVAILABLE)
        and event.detail is not None
        and event.detail.startswith(_SNOOZED)
    )


def snoozed_too_often(snoozes: int, max_snoozes: int) -> str:
    """The error recorded on a job discarded because it asked for one snooze more
    than the engine's ``max_snoozes`` allows."""
    return (
        f"snoozed {snoozes} times and max_snoozes is {max_snoozes}: discarded instead of "
        "snoozing it again (the engine's max_snoozes setting, [jobs] max_snoozes in a "
        "daemon's config.toml; retrying the job starts its count again)"
    )


class JobContext(Generic[T]):
    """What a handler knows about the job it runs. ``actor`` is the instance of the
    key's actor for a job whose kind names a domain, else None. For such a job,
    ``partition`` is its key's partition and ``epoch`` the epoch under which this
    node owns it (None in a process that runs every key without a cluster):
    ``await ctx.fence(tx)`` inside a store transaction makes the transaction fail
    with ``StaleOwner`` if ownership has moved on since. ``snoozes`` is how many
    times the job was snoozed before this run (``Snooze``)."""

    __slots__ = (
        "actor",
        "attempt",
        "epoch",
        "id",
        "kind",
        "max_attempts",
        "partition",
        "queue",
        "snoozes",
        "store",
    )

    def __init__(
        self,
        *,
        id: int,
        kind: str,
        queue: str,
        attempt: int,
        max_attempts: int,
        store: Store,
        actor: T | None = None,
        partition: int | None = None,
        epoch: int | None = None,
        snoozes: int = 0,
    ) -> None:
        self.id = id
        self.kind = kind
        self.queue = queue
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.store = store
        self.actor = actor
        self.partition = partition
        self.epoch = epoch
        self.snoozes = snoozes

    async def fence(self, tx: Transaction) -> None:
        """Refuse ``tx`` (``StaleOwner``) unless this node still owns the job's key
        under ``epoch``; the check holds until ``tx`` ends (a new owner's takeover
        waits for it). Nothing to check for a job without a key or an epoch."""
        if self.partition is not None and self.epoch is not None:
            await self.store.check_owner(tx, self.partition, self.epoch)

    def __repr__(self) -> str:
        return f"<JobContext {self.kind} id={self.id} attempt={self.attempt}/{self.max_attempts}>"


class DomainJobContext(JobContext[T]):
    """The context of a job whose kind is a ``DomainJob``: it runs inside the
    actor of its domain key, and ``actor`` is that actor's instance, typed as
    present (``DomainJobContext[Document]``: ``ctx.actor`` is a ``Document``).
    Register such a handler with ``engine.register`` or ``daemon.jobs.register``;
    for a kind that is a plain ``Job``, the type checker refuses it."""

    __slots__ = ()

    actor: T

    def __repr__(self) -> str:
        return (
            f"<DomainJobContext {self.kind} id={self.id} attempt={self.attempt}/"
            f"{self.max_attempts} partition={self.partition}>"
        )


# A job's error text is data: any bytes, NUL, lone surrogates, megabytes. It is
# stored escaped (what a column cannot hold becomes a visible escape) and capped.
MAX_MESSAGE = 8192
MAX_TRACEBACK = 32768
TRUNCATED = "… [truncated: {n} characters in all]"


def safe_text(text: str, limit: int) -> str:
    """``text`` as any store can hold it: NUL and lone surrogates escaped, other
    control characters kept (a traceback needs newlines), at most ``limit``
    characters plus a marker saying how long it was."""
    total = len(text)
    text = text[:limit]
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (from surrogateescape'd bytes, or built by hand).
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if total > limit or len(text) > limit:
        # Escapes lengthen the text: cut again, so the cap holds whatever it held.
        text = text[:limit] + TRUNCATED.format(n=total)
    return text


def _message_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception as failed:  # a __str__ that raises is the handler's bug, not ours
        return f"<the exception's str() raised {type(failed).__name__}>"


def describe_error(exc: BaseException, attempt: int, now: float) -> AttemptError:
    """What to record for an attempt that raised ``exc``: its type, message and
    traceback, made safe to store (``safe_text``)."""
    import traceback

    try:
        tb = "".join(traceback.format_exception(exc))
    except Exception as failed:
        tb = f"<the traceback could not be formatted: {type(failed).__name__}>"
    # The end of a traceback says where it failed: keep that end when cutting.
    if len(tb) > MAX_TRACEBACK:
        tb = f"[{len(tb) - MAX_TRACEBACK} characters cut] " + tb[-MAX_TRACEBACK:]
    return AttemptError(
        attempt=attempt,
        at=now,
        type=safe_text(f"{type(exc).__module__}.{type(exc).__qualname__}", 300),
        message=safe_text(_message_of(exc), MAX_MESSAGE),
        traceback=safe_text(tb, MAX_TRACEBACK + 100),
    )


def note(attempt: int, now: float, type_: str, message: str) -> AttemptError:
    """An attempt's error written by the engine (a reason given by a handler's
    ``Cancel``/``Discard`` included, so it is made safe too)."""
    return AttemptError(
        attempt=attempt, at=now, type=safe_text(type_, 300), message=safe_text(message, MAX_MESSAGE)
    )
