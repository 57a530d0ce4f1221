"""Preparing a job's row: validation of the job and its overrides (every number and
time bounded, arguments a store can hold and a handler can decode), its unique key,
and the row of a periodic job's slot."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from ._jobs import (
    STATE_BITS,
    Job,
    JobOptions,
    JobState,
    Unique,
    partition_of,
    state_mask,
)

MAX_DELAY = 100 * 365.25 * 24 * 3600.0  # seconds: the furthest a job may be scheduled
MAX_ATTEMPTS = 1_000_000


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


class NewJob(msgspec.Struct, gc=False):
    """A job ready to insert (the backends turn a batch of these into one statement).
    ``prepare`` builds it with positional arguments, in this order of the fields. A
    Struct the garbage collector does not track (it holds no container): a third of
    a slotted dataclass's time to build, which a batch pays for every job."""

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


_AVAILABLE = JobState.AVAILABLE
_SCHEDULED = JobState.SCHEDULED
_ALL_STATES = state_mask(frozenset(JobState))


def _storable(text: str) -> bool:
    """Whether both dialects can store ``text``: no NUL, valid Unicode."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


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
    when: float | None = None
    if run_at is not None or delay is not None:
        when = _when(now, run_at, delay)
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
    elif isinstance(queue, str) and 1 <= len(queue) <= 200 and _storable(queue):
        q = queue
    else:
        raise ValueError(
            f"enqueue(queue=...) must be a name of 1-200 characters, without NUL or lone "
            f"surrogates, got {queue!r}"
        )
    try:
        args = _encoder.encode(job)
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"the arguments of a {opts.kind} job hold text that is not valid Unicode "
            f"(a lone surrogate at position {exc.start}): encode bytes as base64 or hex"
        ) from None
    # bytes.find: the same test as ``in``, without its slower dispatch (this runs
    # for every job of a batch).
    if args.find(b"null") >= 0:
        # JSON has no NaN or infinity: msgspec writes them as null, which the handler
        # could not decode. Whatever holds a null must decode back as the kind.
        try:
            _decoder(type(job)).decode(args)
        except msgspec.ValidationError as exc:
            raise ValueError(
                f"the arguments of a {opts.kind} job do not survive storage ({exc}): "
                "a float that is NaN or infinite has no JSON form; send a finite number"
            ) from None
    if args.find(b"\\u0000") >= 0 and _NUL_ESCAPE.search(args):
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
    state = _SCHEDULED if when is not None and when > now else _AVAILABLE
    mask = 0
    if unique_key is None:
        if opts.unique is not None:
            unique_key = _unique_key(job, opts, opts.unique, q, now)
            mask = state_mask(opts.unique.states)
    else:
        mask = unique_states if unique_states is not None else _ALL_STATES
    digest = unique_key
    if unique_key is not None and not mask & STATE_BITS[state]:
        unique_key = None  # its own first state does not count: nothing to guard
    # Positional: about half the cost of keywords for a 14-field dataclass.
    return NewJob(
        opts.kind,
        q,
        state,
        prio,
        args,
        key,
        attempts,
        when,
        unique_key,
        mask,
        digest,
        opts.domain,
        partition,
        opts.ordered,
    )


def available_queues(rows: Sequence[NewJob]) -> list[str]:
    """The queues ``rows`` give available jobs (to wake their engines), sorted."""
    return sorted({r.queue for r in rows if r.state is _AVAILABLE})


# A class prepare_many has not met yet.
_UNSEEN: Any = object()


def prepare_many(
    jobs: Sequence[Job],
    *,
    now: float,
    queue: str | None = None,
    priority: int | None = None,
    run_at: datetime | None = None,
    delay: float | None = None,
) -> list[NewJob | TypeError | ValueError]:
    """``prepare`` of each job with the same overrides: its row, or the error
    ``prepare`` raises for it. What a row holds beyond the job's arguments and key
    depends only on its class and the overrides, so the first job of a class that
    takes no unique key goes through ``prepare`` and the others of its class reuse
    its row, checking only their own arguments (encoded, and through ``prepare``
    whenever they hold a null or a NUL escape, or cannot be encoded): a batch of
    plain jobs takes about half the time."""
    rows: list[NewJob | TypeError | ValueError] = []
    shared: dict[type[Job], NewJob | None] = {}  # None: every job through prepare
    encode = _encoder.encode
    for job in jobs:
        cls = type(job)
        first = shared.get(cls, _UNSEEN)
        if first is not None and first is not _UNSEEN:
            try:
                args = encode(job)
            except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
                args = b"null"  # prepare says what is wrong
            if args.find(b"null") < 0 and args.find(b"\\u0000") < 0:
                opts = cls.options
                key: str | None = None
                partition: int | None = None
                if opts.key is not None:
                    key = str(getattr(job, opts.key))
                    partition = partition_of(key)
                rows.append(
                    NewJob(
                        first.kind,
                        first.queue,
                        first.state,
                        first.priority,
                        args,
                        key,
                        first.max_attempts,
                        first.run_at,
                        None,
                        0,
                        None,
                        first.domain,
                        partition,
                        first.ordered,
                    )
                )
                continue
        try:
            row = prepare(job, now=now, queue=queue, priority=priority, run_at=run_at, delay=delay)
        except (TypeError, ValueError) as exc:
            rows.append(exc)
            continue
        if first is _UNSEEN:
            shared[cls] = row if cls.options.unique is None else None
        rows.append(row)
    return rows


def _when(now: float, run_at: datetime | None, delay: float | None) -> float:
    """The unix time a job scheduled by ``run_at`` or ``delay`` is due."""
    if run_at is not None and delay is not None:
        raise ValueError("enqueue takes run_at or delay, not both")
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
        return when
    # Non-finite and huge delays are refused before anything is written: every
    # time a job carries must be one both databases can store and read back.
    if not (isinstance(delay, int | float) and 0 <= delay <= MAX_DELAY):
        raise ValueError(
            f"enqueue(delay=...) must be finite seconds from 0 to {MAX_DELAY:.0f} "
            f"(100 years), got {delay!r}"
        )
    return now + delay


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
