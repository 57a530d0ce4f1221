"""The engine's side of job kinds: what a handler is given (``JobContext``), the
outcomes it may return or raise (``Cancel``, ``Discard``, ``Snooze``), and how an
exception becomes the error recorded on the job."""

from __future__ import annotations

import math
from typing import Generic, TypeVar

from ..storage import AttemptError, Store

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
    """Run the job again after ``delay`` seconds without using an attempt."""

    def __init__(self, delay: float) -> None:
        if not delay >= 0 or math.isinf(delay):
            raise ValueError(f"Snooze(delay) must be finite seconds >= 0, got {delay}")
        self.delay = delay
        super().__init__(f"snoozed for {delay:g}s")


class JobContext(Generic[T]):
    """What a handler knows about the job it runs. ``actor`` is the instance of the
    key's actor for a job whose kind names a domain, else None."""

    __slots__ = ("actor", "attempt", "id", "kind", "max_attempts", "queue", "store")

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
    ) -> None:
        self.id = id
        self.kind = kind
        self.queue = queue
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.store = store
        self.actor = actor

    def __repr__(self) -> str:
        return f"<JobContext {self.kind} id={self.id} attempt={self.attempt}/{self.max_attempts}>"


def describe_error(exc: BaseException, attempt: int, now: float) -> AttemptError:
    import traceback

    tb = "".join(traceback.format_exception(exc))
    return AttemptError(
        attempt=attempt,
        at=now,
        type=f"{type(exc).__module__}.{type(exc).__qualname__}",
        message=str(exc)[:2000],
        traceback=tb[-8000:],
    )


def note(attempt: int, now: float, type_: str, message: str) -> AttemptError:
    return AttemptError(attempt=attempt, at=now, type=type_, message=message)
