"""Job kinds and everything a job carries: its options (declared once, on the
kind), its states, the outcomes a handler can return, and the records the store
hands back for inspection. No I/O here; the store and the engine use these."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import random
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import msgspec

from .._errors import StoreError

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


_BIGINT = 2**63


def check_bigint(**values: int) -> None:
    """Refuse (StoreError naming it) a number no database column of ours can hold: a
    job id, an ``after_id`` or a ``limit`` past signed 64 bits."""
    for name, value in values.items():
        if not -_BIGINT <= value < _BIGINT:
            raise StoreError(f"{name} must fit in a signed 64-bit integer, got {value}")


def state_bit_sql(column: str) -> str:
    """SQL for the ``STATE_BITS`` bit of the state in ``column`` (both backends)."""
    whens = " ".join(f"WHEN '{state.value}' THEN {bit}" for state, bit in STATE_BITS.items())
    return f"(CASE {column} {whens} ELSE 0 END)"


def unique_key_after(bit: int | str, *, table: str = "", keep: str = "unique_key") -> str:
    """The uniqueness rule, written once for both dialects: the SET clause of any
    state change, keeping a job's unique key while its new state counts (``bit``:
    the new state's ``STATE_BITS`` bit, a number or SQL) and releasing it
    otherwise. ``keep="unique_digest"`` takes a released key back instead (a retry);
    a key taken back may collide with a duplicate's, which the caller resolves
    (``restore_keys`` in each dialect)."""
    return f"unique_key = CASE WHEN {table}unique_states & {bit} <> 0 THEN {table}{keep} END"


# The state a rescue gives a job whose lease expired, and the state a cancel gives a
# job (a running one stays running until its engine stops the handler). SQL over
# the row's old values, as an UPDATE's SET clause sees them.
RESCUED_STATE_SQL = (
    "(CASE WHEN cancel_requested THEN 'cancelled' "
    "WHEN attempt >= max_attempts THEN 'discarded' ELSE 'available' END)"
)
CANCELLED_STATE_SQL = "(CASE WHEN state = 'running' THEN 'running' ELSE 'cancelled' END)"


SUPERSEDED_MESSAGE = (
    "superseded: job {holder} with the same unique key is waiting and will do this "
    "work; this job came back to a state its uniqueness counts after that job was "
    "enqueued"
)


# The error a rescue records on a job whose lease expired (both backends' SQL; the
# placeholders name columns). A rescue charges the lost attempt, as River and Oban
# do: a job that kills its worker must not be retried forever. On the last attempt
# the job is discarded, and the message says that its worker died rather than that
# its handler failed.
LEASE_EXPIRED_SQL = (
    "(CASE WHEN NOT {cancel} AND {attempt} >= {max_attempts} THEN "
    "'the lease expired on the last attempt (' || {attempt} || ' of ' || {max_attempts} || "
    "'): its worker died, hung or lost the database while running it. Discarded, not "
    "retried, because every lost attempt counts (a job that kills its worker must not "
    "run forever); retry_job runs it again' "
    "ELSE 'the lease expired: its worker stopped heartbeating (it died, hung or lost "
    "the database)' END)"
)


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


MAX_DELAY = 100 * 365.25 * 24 * 3600.0  # seconds: the furthest a job may be scheduled
MAX_ATTEMPTS = 1_000_000


class Job(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every job kind. Subclass it with the job's arguments as fields and
    its options in one place::

        class Resize(fiefdom.Job):
            options = fiefdom.JobOptions(kind="resize", queue="media", max_attempts=3)
            asset_id: str
            width: int
    """

    options: ClassVar[JobOptions]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
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


J = TypeVar("J", bound=Job)


# -- records -------------------------------------------------------------------------


class AttemptError(msgspec.Struct, frozen=True, kw_only=True):
    """What went wrong in one attempt (kept on the job, oldest first)."""

    attempt: int
    at: float  # unix time
    type: str
    message: str
    traceback: str = ""


class JobInfo(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
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


def list_jobs_query(
    columns: str,
    *,
    queue: str | None,
    state: JobState | None,
    kind: str | None,
    after_id: int,
    limit: int,
    placeholder: Callable[[int], str],
) -> tuple[str, list[object]]:
    """The listing statement of both dialects (``placeholder(n)`` writes parameter
    ``n``) and its parameters: jobs after ``after_id`` in id order, each filter
    backed by an index. Without a state, a queue or kind filter reads one range per
    state, merged in id order: of (queue, state, id), or of (state, id) filtered by
    kind (no index leads with the kind: each would cost every state change a write)."""
    args: list[object] = []

    def param(value: object) -> str:
        args.append(value)
        return placeholder(len(args))

    where = [f"id > {param(after_id)}"]
    if queue is not None:
        where.append(f"queue = {param(queue)}")
    if kind is not None:
        where.append(f"kind = {param(kind)}")
    cap = param(limit)
    if state is not None:
        where.append(f"state = {param(state.value)}")
    if state is not None or (queue is None and kind is None):
        return (
            f"SELECT {columns} FROM fiefdom_jobs WHERE {' AND '.join(where)} "
            f"ORDER BY id LIMIT {cap}",
            args,
        )
    arms = " UNION ALL ".join(
        f"SELECT * FROM (SELECT {columns} FROM fiefdom_jobs WHERE {' AND '.join(where)} "
        f"AND state = '{s.value}' ORDER BY id LIMIT {cap}) AS s{i}"
        for i, s in enumerate(JobState)
    )
    return f"SELECT * FROM ({arms}) AS u ORDER BY 1 LIMIT {cap}", args


_errors_decoder = msgspec.json.Decoder(list[AttemptError])
_EPOCH = datetime.fromtimestamp(0, UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def job_info(row: Sequence[Any]) -> JobInfo:
    """A ``JobInfo`` from a row of ``JOB_COLUMNS`` (both dialects select the times as
    unix seconds). A value that cannot be read marks the job damaged instead of
    failing the page it is listed on."""
    damage: list[str] = []

    def when(name: str, value: float | None) -> datetime | None:
        if value is None:
            return None
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            damage.append(f"{name} is out of range ({value!r})")
            return _EARLIEST if value < 0 else _LATEST

    try:
        state = JobState(row[3])
    except ValueError:
        damage.append(f"unknown state {row[3]!r}")
        state = JobState.DISCARDED
    try:
        errors = _errors_decoder.decode(row[9])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        damage.append(f"its errors do not decode ({exc})")
        errors = []
    info = JobInfo(
        id=row[0],
        kind=row[1],
        queue=row[2],
        state=state,
        priority=row[4],
        args=row[5],
        key=row[6],
        attempt=row[7],
        max_attempts=row[8],
        errors=errors,
        worker=row[10],
        cancel_requested=bool(row[11]),
        created_at=when("created_at", row[12]) or _EPOCH,
        run_at=when("run_at", row[13]) or _EPOCH,
        attempted_at=when("attempted_at", row[14]),
        finished_at=when("finished_at", row[15]),
    )
    if damage:
        info = msgspec.structs.replace(info, damaged="; ".join(damage))
    return info


class QueueCount(msgspec.Struct, frozen=True, kw_only=True):
    """How many jobs of a queue are in a state (``store.count_jobs``)."""

    queue: str
    state: JobState
    count: int


class Enqueued(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
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
    forbid_unknown_fields=True,
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
        )


class Lease(msgspec.Struct, frozen=True, gc=False):
    """The right to report a job's outcome: its id and the fencing token of the claim.
    A newer claim of the same job makes every older lease stale."""

    job_id: int
    token: int


class Outcome(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What to record for one claimed job (the engine's batch to ``store.finish``).

    ``delay`` (seconds from now) sets ``run_at`` for scheduled, retryable and
    available states; ``refund`` gives back the attempt (snooze, shutdown)."""

    lease: Lease
    state: JobState
    delay: float | None = None
    refund: bool = False
    error: AttemptError | None = None


# -- preparing rows ------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Job], msgspec.json.Decoder[Any]] = {}


def _decoder(kind: type[Job]) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    return decoder


# JSON's escape of NUL, not preceded by an odd number of backslashes (which would
# make it the text "\\u0000" rather than the character).
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


@dataclasses.dataclass(slots=True)
class NewJob:
    """A job ready to insert (the backends turn a batch of these into one statement)."""

    kind: str
    queue: str
    state: JobState
    priority: int
    args: bytes
    key: str | None
    max_attempts: int
    run_at: float | None  # unix time; None = now (the database's clock)
    unique_key: bytes | None  # set while the job's state counts (the unique index)
    unique_states: int
    unique_digest: bytes | None = None  # the key itself, kept in every state
    domain: str | None = None
    partition: int | None = None  # of the domain key (partition_of), None without one
    ordered: bool = False


def prepare(
    job: Job,
    *,
    now: float,
    queue: str | None = None,
    priority: int | None = None,
    run_at: datetime | None = None,
    delay: float | None = None,
    max_attempts: int | None = None,
    unique_key: bytes | None = None,
    unique_states: int | None = None,
) -> NewJob:
    """Validate a job and its overrides and build its row."""
    if not isinstance(job, Job):
        raise TypeError(
            f"enqueue takes a fiefdom.Job instance, got {type(job).__name__}: "
            "declare the kind as 'class MyJob(fiefdom.Job): options = fiefdom.JobOptions(...)'"
        )
    opts = type(job).options
    if run_at is not None and delay is not None:
        raise ValueError("enqueue takes run_at or delay, not both")
    when: float | None = None
    if run_at is not None:
        if run_at.tzinfo is None:
            raise ValueError(
                "enqueue(run_at=...) needs an aware datetime (e.g. datetime.now(UTC)), "
                "got a naive one"
            )
        when = run_at.timestamp()
        if not when <= now + MAX_DELAY:
            raise ValueError(
                f"enqueue(run_at=...) must be within {MAX_DELAY:.0f} seconds (100 years) "
                f"from now, got {run_at.isoformat()}"
            )
    elif delay is not None:
        # Non-finite and huge delays are refused before anything is written: every
        # time a job carries must be one both databases can store and read back.
        if not (isinstance(delay, int | float) and 0 <= delay <= MAX_DELAY):
            raise ValueError(
                f"enqueue(delay=...) must be finite seconds from 0 to {MAX_DELAY:.0f} "
                f"(100 years), got {delay!r}"
            )
        when = now + delay
    attempts = opts.max_attempts if max_attempts is None else max_attempts
    if not 1 <= attempts <= MAX_ATTEMPTS:
        raise ValueError(
            f"enqueue(max_attempts=...) must be from 1 to {MAX_ATTEMPTS}, got {attempts}"
        )
    prio = opts.priority if priority is None else priority
    if not -32768 <= prio <= 32767:
        raise ValueError(f"enqueue(priority=...) must fit in 16 bits, got {prio}")
    if queue is None:
        q = opts.queue  # checked by JobOptions
    elif isinstance(queue, str) and 1 <= len(queue) <= 200:
        q = queue
    else:
        raise ValueError(f"enqueue(queue=...) must be a name of 1-200 characters, got {queue!r}")
    try:
        args = _encoder.encode(job)
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"the arguments of a {opts.kind} job hold text that is not valid Unicode "
            f"(a lone surrogate at position {exc.start}): encode bytes as base64 or hex"
        ) from None
    if b"null" in args:
        # JSON has no NaN or infinity: msgspec writes them as null, which the handler
        # could not decode. Whatever holds a null must decode back as the kind.
        try:
            _decoder(type(job)).decode(args)
        except msgspec.ValidationError as exc:
            raise ValueError(
                f"the arguments of a {opts.kind} job do not survive storage ({exc}): "
                "a float that is NaN or infinite has no JSON form; send a finite number"
            ) from None
    if b"\\u0000" in args and _NUL_ESCAPE.search(args):
        # PostgreSQL's jsonb cannot hold NUL; refused on both dialects alike.
        raise ValueError(
            f"the arguments of a {opts.kind} job contain a NUL character (\\u0000), "
            "which a job's arguments cannot hold: encode binary data as base64 or hex"
        )
    key: str | None = None
    partition: int | None = None
    if opts.key is not None:
        key = str(getattr(job, opts.key))
        partition = partition_of(key)
    state = JobState.SCHEDULED if when is not None and when > now else JobState.AVAILABLE
    mask = 0
    if unique_key is None and opts.unique is not None:
        unique_key = _unique_key(job, opts, opts.unique, q, now)
        mask = state_mask(opts.unique.states)
    elif unique_key is not None:
        mask = unique_states if unique_states is not None else state_mask(frozenset(JobState))
    digest = unique_key
    if unique_key is not None and not mask & STATE_BITS[state]:
        unique_key = None  # its own first state does not count: nothing to guard
    return NewJob(
        kind=opts.kind,
        queue=q,
        state=state,
        priority=prio,
        args=args,
        key=key,
        max_attempts=attempts,
        run_at=when,
        unique_key=unique_key,
        unique_states=mask,
        unique_digest=digest,
        domain=opts.domain,
        partition=partition,
        ordered=opts.ordered,
    )


def _unique_key(job: Job, opts: JobOptions, unique: Unique, queue: str, now: float) -> bytes:
    parts: list[object] = [opts.kind]
    if unique.by_queue:
        parts.append(queue)
    if unique.by_args is True:
        parts.append(msgspec.to_builtins(job))
    elif unique.by_args:
        parts.append({name: msgspec.to_builtins(getattr(job, name)) for name in unique.by_args})
    if unique.period is not None:
        parts.append(math.floor(now / unique.period))
    # order_keys: the same arguments always make the same key.
    return hashlib.sha256(msgspec.json.encode(parts, order="sorted")).digest()


def periodic_row(job: Job, name: str, slot: int, *, now: float) -> NewJob:
    """The row of periodic job ``name`` for its time ``slot``: unique in every state,
    so that one engine of many inserts it."""
    return prepare(
        job,
        now=now,
        unique_key=hashlib.sha256(f"fiefdom.periodic\0{name}\0{slot}".encode()).digest(),
        unique_states=state_mask(frozenset(JobState)),
    )
