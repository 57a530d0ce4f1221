"""Job kinds and everything a job carries: its options (declared once, on the
kind), its states, the outcomes a handler can return, and the records the store
hands back for inspection. No I/O here; the store and the engine use these."""

from __future__ import annotations

import dataclasses
import enum
import random
import zlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, TypeVar

import msgspec

T = TypeVar("T")


class JobState(enum.StrEnum):
    """Where a job is in its life. ``scheduled`` and ``retryable`` wait for their
    ``run_at``; ``completed``, ``cancelled`` and ``discarded`` are final."""

    AVAILABLE = "available"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYABLE = "retryable"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    DISCARDED = "discarded"


# Each state's bit in ``unique_states``: a transition into a state whose bit is not
# set releases the job's unique key, so a new job with the same key may be queued.
STATE_BITS: Mapping[JobState, int] = {state: 1 << i for i, state in enumerate(JobState)}
# A state from its column's value: a lookup, where JobState(value) goes through the
# enum's machinery (a finish reads one per job).
STATE_OF: Mapping[str, JobState] = {state.value: state for state in JobState}
FINAL_STATES = frozenset({JobState.COMPLETED, JobState.CANCELLED, JobState.DISCARDED})
DEFAULT_UNIQUE_STATES = frozenset(
    {
        JobState.AVAILABLE,
        JobState.SCHEDULED,
        JobState.RUNNING,
        JobState.RETRYABLE,
        JobState.COMPLETED,
    }
)


PARTITIONS = 256
"""Domain keys hash to this many partitions (fixed when the store is created); a node
owns a partition, and so every key in it, through a lease in the store."""


def partition_of(key: object) -> int:
    """The partition of a domain key: a stable hash of its text (the same in every
    process and release, unlike Python's salted ``hash``)."""
    return zlib.crc32(str(key).encode("utf-8", "surrogatepass")) % PARTITIONS


def state_mask(states: frozenset[JobState]) -> int:
    mask = 0
    for state in states:
        mask |= STATE_BITS[state]
    return mask


@dataclasses.dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """The default retry delay: ``base * factor**(attempt-1)`` seconds, capped at
    ``cap``, then spread by ``jitter`` (0.2 = up to 20% either way) so that jobs
    which failed together do not all retry at the same instant."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 600.0
    jitter: float = 0.2

    def __call__(self, attempt: int) -> float:
        # min() before the power would overflow for a large attempt number.
        exponent = min(attempt - 1, 64)
        delay = min(self.cap, self.base * self.factor**exponent)
        spread = delay * self.jitter
        return max(0.0, delay + random.uniform(-spread, spread))


@dataclasses.dataclass(frozen=True, slots=True)
class Unique:
    """When a new job counts as a duplicate of an existing one.

    ``by_args``: True compares all arguments, a tuple of field names only those,
    False none (one job per kind). ``by_queue`` also compares the queue.
    ``period`` (seconds) makes the key also depend on the time slot the job is
    enqueued in (at most one per period). ``states`` are the states in which an
    existing job blocks a new one; leave ``RUNNING`` out to allow queueing a new
    job while one runs.

    A job that leaves the counted states and comes back (a running job, with
    ``RUNNING`` left out, that fails and becomes ``retryable``; a job scheduled
    while ``SCHEDULED`` is left out that becomes ``available``) takes its key back
    as it re-enters. If a duplicate took the key in the meantime, the waiting
    duplicate will do the same work: a job re-entering a waiting state
    (available, scheduled, retryable) ends ``cancelled`` with a
    ``fiefdom.Superseded`` error naming it, and one re-entering a final state ends
    there without the key. ``RUNNING`` may only be counted together with
    ``AVAILABLE``: a claim cannot give a job up when a duplicate holds its key, so
    a job must already hold its key when it is claimed.
    """

    by_args: bool | tuple[str, ...] = True
    by_queue: bool = False
    period: float | None = None
    states: frozenset[JobState] = DEFAULT_UNIQUE_STATES

    def __post_init__(self) -> None:
        if self.period is not None and not self.period > 0:
            raise ValueError(f"Unique(period=...) must be positive seconds, got {self.period}")
        if not self.states:
            raise ValueError("Unique(states=...) must name at least one JobState")
        unknown = [s for s in self.states if not isinstance(s, JobState)]
        if unknown:
            raise ValueError(f"Unique(states=...) takes JobState members, got {unknown!r}")
        # Every other re-entry into a counted state takes the key back or gives the
        # job up (see the docstring); a claim can do neither without skipping jobs,
        # so a job must not enter RUNNING without already holding its key.
        if JobState.RUNNING in self.states and JobState.AVAILABLE not in self.states:
            raise ValueError(
                "Unique(states=...) counts RUNNING but not AVAILABLE: a job becomes "
                "running only from available, and a claim cannot refuse a job whose key "
                "a duplicate took while it waited uncounted; count AVAILABLE too, or "
                "leave RUNNING out to let a new job queue while one runs"
            )


@dataclasses.dataclass(frozen=True, slots=True)
class JobOptions:
    """A job kind's options, declared once on the kind as ``options = JobOptions(...)``.

    ``kind`` is the name stored in the table (keep it stable: renaming the class
    must not orphan stored jobs). Lower ``priority`` runs first. ``backoff`` maps
    the attempt that failed (1-based) to the delay in seconds before the next.
    ``timeout`` (seconds) bounds one attempt from when its handler starts (for a
    domain job, inside the key's actor: time queued behind the key's other work
    does not count). ``domain`` and ``key`` name the
    domain and the field holding the key: the job then runs inside that key's
    actor, serialised with every other message and job for the same key.
    ``ordered`` makes the key's jobs of ordered kinds run in enqueue order: one
    waits until every earlier one of its key has completed, been discarded or been
    cancelled (a retried or snoozed job holds back those after it).
    """

    kind: str
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 5
    backoff: Callable[[int], float] = ExponentialBackoff()
    timeout: float | None = None
    unique: Unique | None = None
    domain: str | None = None
    key: str | None = None
    ordered: bool = False

    def __post_init__(self) -> None:
        if not self.kind or len(self.kind) > 200:
            raise ValueError(f"JobOptions(kind=...) must be 1-200 characters, got {self.kind!r}")
        if not self.queue or len(self.queue) > 200:
            raise ValueError(f"JobOptions(queue=...) must be 1-200 characters, got {self.queue!r}")
        if self.max_attempts < 1:
            raise ValueError(f"JobOptions(max_attempts=...) must be >= 1, got {self.max_attempts}")
        if not -32768 <= self.priority <= 32767:
            raise ValueError(f"JobOptions(priority=...) must fit in 16 bits, got {self.priority}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"JobOptions(timeout=...) must be positive, got {self.timeout}")
        if (self.domain is None) != (self.key is None):
            raise ValueError(
                "JobOptions(domain=..., key=...) go together: the domain to run in "
                "and the field that holds the key"
            )
        if self.ordered and self.key is None:
            raise ValueError(
                "JobOptions(ordered=True) orders the jobs of one key: name the domain and "
                "the key field too (domain=..., key=...)"
            )


class Job(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every job kind. Subclass it with the job's arguments as fields and
    its options in one place::

        class Resize(fiefdom.Job):
            options = fiefdom.JobOptions(kind="resize", queue="media", max_attempts=3)
            asset_id: str
            width: int
    """

    options: ClassVar[JobOptions]
    # True on a base of kinds that is no kind itself (``DomainJob``): it declares no
    # options.
    _abstract_kind: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("_abstract_kind", False):
            return
        opts = cls.__dict__.get("options")
        if opts is None:
            raise TypeError(
                f"job kind {cls.__name__} must declare its options: "
                f"options = fiefdom.JobOptions(kind={cls.__name__.lower()!r}, ...)"
            )
        if not isinstance(opts, JobOptions):
            raise TypeError(
                f"{cls.__name__}.options must be a fiefdom.JobOptions, got {type(opts).__name__}"
            )
        # The struct's fields are not set up yet when __init_subclass__ runs: read
        # the annotations (ClassVar ones are the only non-fields, like ``options``).
        names = {
            name
            for klass in cls.__mro__
            for name, hint in vars(klass).get("__annotations__", {}).items()
            if "ClassVar" not in str(hint)
        }
        if opts.key is not None and opts.key not in names:
            raise TypeError(
                f"{cls.__name__}: JobOptions(key={opts.key!r}) names no field; "
                f"the fields are {sorted(names)}"
            )
        if opts.unique is not None and isinstance(opts.unique.by_args, tuple):
            missing = [n for n in opts.unique.by_args if n not in names]
            if missing:
                raise TypeError(
                    f"{cls.__name__}: Unique(by_args=...) names unknown fields {missing}; "
                    f"the fields are {sorted(names)}"
                )


class DomainJob(Job):
    """Base of a job kind that runs inside the actor of its domain key: its options
    name the domain and the key field, and its handler is given a
    ``fiefdom.DomainJobContext``, whose ``actor`` is typed as present (that key's
    actor instance), so a handler needs no ``assert ctx.actor is not None``::

        class Reindex(fiefdom.DomainJob):
            options = fiefdom.JobOptions(kind="reindex", domain="documents", key="doc_id")
            doc_id: str

        async def reindex(job: Reindex, ctx: fiefdom.DomainJobContext[Document]) -> None:
            ctx.actor.indexed += 1

    A plain ``Job`` whose options name a domain runs the same way; only its
    handler's ``ctx`` is typed as a ``JobContext``, whose ``actor`` may be None."""

    _abstract_kind: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("_abstract_kind", False):
            return
        if cls.options.domain is None:
            raise TypeError(
                f"{cls.__name__} is a fiefdom.DomainJob: its options must name the domain "
                "it runs in and the field holding the key "
                f"(fiefdom.JobOptions(kind={cls.options.kind!r}, domain=..., key=...)); "
                "a kind that runs outside any actor subclasses fiefdom.Job"
            )


J = TypeVar("J", bound=Job)


# -- records -------------------------------------------------------------------------


class AttemptError(msgspec.Struct, frozen=True, kw_only=True):
    """What went wrong in one attempt (kept on the job, oldest first)."""

    attempt: int
    at: float  # unix time
    type: str
    message: str
    traceback: str = ""


class JobInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One job as the store holds it (``store.get_job``, ``store.list_jobs``)."""

    id: int
    kind: str
    queue: str
    state: JobState
    priority: int
    args: str  # the job's arguments as JSON text
    key: str | None
    attempt: int
    max_attempts: int
    errors: list[AttemptError]
    worker: str | None
    cancel_requested: bool
    created_at: datetime
    run_at: datetime
    attempted_at: datetime | None
    finished_at: datetime | None
    # Set when the row holds a value this code cannot read (a time out of range, an
    # unknown state, unreadable errors): the rest is shown as well as it can be,
    # and the listing it is part of still succeeds.
    damaged: str | None = None
    # Times a handler snoozed the job (``Snooze``: run again later without using an
    # attempt); the engine discards it once this reaches its ``max_snoozes``. Last,
    # with a default: a reply from a daemon that does not send it still decodes.
    snoozes: int = 0


class QueueCount(msgspec.Struct, frozen=True, kw_only=True):
    """How many jobs of a queue are in a state (``store.count_jobs``)."""

    queue: str
    state: JobState
    count: int


class Enqueued(msgspec.Struct, frozen=True, kw_only=True):
    """The result of enqueueing one job: its id, or whether an existing unique job
    took its place (``duplicate``; ``id`` is then that job's, or None if it
    finished in the meantime), or, from ``enqueue_many``, why the item was invalid
    and not enqueued (``error``; ``id`` is then None)."""

    id: int | None
    duplicate: bool
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether this item is in the queue (enqueued now, or as its duplicate)."""
        return self.error is None


class JobEvent(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag="jobs",
    tag_field="topic",
):
    """A job changed state in an engine (what ``engine.subscribe`` delivers).

    ``state`` is the new state; ``detail`` says why when it is not a plain
    success (the error, the cancel reason, "lease expired", "given back"). Encoded, it
    carries ``"topic": "jobs"``: the tag of its place in the control channel's union
    of events."""

    job_id: int
    kind: str
    queue: str
    state: JobState
    attempt: int
    at: float  # unix time
    detail: str | None = None
    # On a ``running`` event: seconds the job waited from when it was due (its
    # ``run_at``) until this attempt was claimed (the store's clock).
    queued_for: float | None = None
    # A handler snoozed the job (``Snooze``): it waits again, its attempt given back
    # (``state`` is scheduled or available). A daemon from before this field sends
    # none: ``fiefdom.jobs.is_snooze`` then reads ``detail``.
    snoozed: bool = False


class ClaimedJob(msgspec.Struct, kw_only=True, gc=False):
    """A job as a claim returns it: the engine's working copy."""

    id: int
    kind: str
    queue: str
    args: str  # JSON text
    attempt: int
    max_attempts: int
    lease_token: int
    key: str | None
    priority: int
    queued_for: float = 0.0  # seconds from run_at to the claim (the store's clock)
    domain: str | None = None
    partition: int | None = None
    snoozes: int = 0  # times the job was snoozed before this claim

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ClaimedJob:
        """Build from a row of either backend's claim statement (same column order)."""
        return cls(
            id=row[0],
            kind=row[1],
            queue=row[2],
            args=row[3],
            attempt=row[4],
            max_attempts=row[5],
            lease_token=row[6],
            key=row[7],
            priority=row[8],
            queued_for=max(0.0, row[9]),
            domain=row[10],
            partition=row[11],
            snoozes=row[12],
        )


class Lease(msgspec.Struct, frozen=True, gc=False):
    """The right to report a job's outcome: its id and the fencing token of the claim.
    A newer claim of the same job makes every older lease stale."""

    job_id: int
    token: int


class Outcome(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What to record for one claimed job (the engine's batch to ``store.finish``).

    ``delay`` (seconds from now) sets ``run_at`` for scheduled, retryable and
    available states; ``refund`` gives back the attempt (snooze, shutdown);
    ``snooze`` counts a snooze in the job's ``snoozes``."""

    lease: Lease
    state: JobState
    delay: float | None = None
    refund: bool = False
    error: AttemptError | None = None
    snooze: bool = False

    @property
    def plain_completion(self) -> bool:
        """Completed with nothing else to record (no error, delay, refund or snooze):
        such a batch is written by a shorter statement on both dialects."""
        return (
            self.state is JobState.COMPLETED
            and self.error is None
            and self.delay is None
            and not self.refund
            and not self.snooze
        )


# -- preparing rows ------------------------------------------------------------------
