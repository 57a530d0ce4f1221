"""The SQL both dialects share: the uniqueness rule, the states a rescue and a cancel
give, the error a rescue records, the reading of a job's row (robust to a value this
code cannot read), and the bounds of numbers. The listings' statements are in
``_listing``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from .._errors import StoreError
from ._jobs import STATE_BITS, AttemptError, JobInfo, JobState

_BIGINT = 2**63


def check_bigint(**values: int) -> None:
    """Refuse (StoreError naming it) a number no database column of ours can hold: a
    job id, an ``after_id`` or a ``limit`` past signed 64 bits."""
    for name, value in values.items():
        if not -_BIGINT <= value < _BIGINT:
            raise StoreError(f"{name} must fit in a signed 64-bit integer, got {value}")


def check_not_negative(**values: int) -> None:
    """Refuse (ValueError naming it) a page size or a count's cap below 0 (which
    SQLite would read as no limit at all, and PostgreSQL refuse)."""
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be at least 0, got {value}")


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
        snoozes=row[16],
    )
    if damage:
        info = msgspec.structs.replace(info, damaged="; ".join(damage))
    return info
