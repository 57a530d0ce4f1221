"""PostgreSQL's enqueue statements: an INSERT of one job; a large batch whose rows
hold no unique key as a binary COPY of rows whose ids were taken beforehand; any
other batch as one JSON array of rows the server expands, split into several
statements by size. Each row's values follow the column list of ``_INSERT_INTO`` in
every encoding (the single INSERT, the JSON rows, the copied records). The store
(``_postgres.py``) calls ``insert_rows`` and matches what it returns to the jobs it
was given."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

import asyncpg
import msgspec

from .._errors import StoreError
from ._rows import NewJob, available_queues

if TYPE_CHECKING:
    from ._postgres_pool import Conn

T = TypeVar("T")

_json_encoder = msgspec.json.Encoder()

# Enqueueing: a batch is one JSON array of rows (a positional array each, the job's
# arguments embedded as they were encoded, unique keys in hex), one parameter the
# server parses once (an array per column costs the driver a check per element),
# expanded and inserted in its order (ids grow in that order); a single job, the
# most common enqueue, as plain parameters (a cheaper statement to run). A
# duplicate of a unique job is skipped (the unique index), and looked up afterwards.
# Rows that hold no unique key cannot conflict (the only other unique index is the
# generated id's): they take the statements without ON CONFLICT, which PostgreSQL
# inserts directly instead of speculatively (a speculative insert takes a lock and
# writes a second WAL record per row to confirm it): a batch of 10,000 inserts
# about a sixth faster.
_INSERT_INTO = (
    "INSERT INTO fiefdom_jobs (kind, queue, state, priority, args, domain_key, "
    "max_attempts, unique_key, unique_states, run_at, unique_digest, domain, partition, "
    "ordered) "
)
_RETURNING = "RETURNING id, unique_key"
_ON_CONFLICT = "ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING " + _RETURNING
_INSERT_MANY = (
    _INSERT_INTO + "SELECT r ->> 0, r ->> 1, r ->> 2, (r ->> 3)::smallint, r -> 4, r ->> 5, "
    "(r ->> 6)::integer, decode(r ->> 7, 'hex'), (r ->> 8)::smallint, "
    "coalesce(to_timestamp((r ->> 9)::float8), now()), decode(r ->> 10, 'hex'), r ->> 11, "
    "(r ->> 12)::smallint, (r ->> 13)::boolean "
    "FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(r, ord) "
    "ORDER BY ord "
)
_INSERT_ONE = (
    _INSERT_INTO + "VALUES ($1::text, $2::text, $3::text, $4::smallint, $5::text::jsonb, "
    "$6::text, $7::integer, $8::bytea, $9::smallint, "
    "coalesce(to_timestamp($10::float8), now()), $11::bytea, $12::text, $13::smallint, "
    "$14::boolean) "
)

# The channel engines listen on for queues that have new available jobs.
NOTIFY_CHANNEL = "fiefdom_jobs"


def _notifying(insert: str) -> str:
    """``insert`` (which returns the id and unique key of each row it inserts) in a
    statement that also notifies engines of each queue it gave an available job,
    once per queue: the notification is sent when the statement's transaction
    commits, so an enqueue rolled back wakes nobody, and a duplicate skipped wakes
    nobody either. The table has no trigger for it (a statement trigger keeps every
    inserted row for the statement's end: about a tenth of a batch's insert)."""
    return (
        f"WITH j AS ({insert}, queue, state) SELECT id, unique_key FROM j "
        f"WHERE (SELECT count(pg_notify({NOTIFY_CHANNEL!r}, q)) "
        "FROM (SELECT DISTINCT queue FROM j WHERE state = 'available') AS d(q)) >= 0"
    )


_INSERT_MANY_SQL = _notifying(_INSERT_MANY + _ON_CONFLICT)
_INSERT_MANY_PLAIN_SQL = _notifying(_INSERT_MANY + _RETURNING)
INSERT_ONE_SQL = _notifying(_INSERT_ONE + _ON_CONFLICT)
INSERT_ONE_PLAIN_SQL = _notifying(_INSERT_ONE + _RETURNING)
_NOTIFY_SQL = f"SELECT pg_notify({NOTIFY_CHANNEL!r}, q) FROM unnest($1::text[]) AS q"


async def notify_queues(conn: Conn, queues: Sequence[str]) -> None:
    """Notify engines (when ``conn``'s transaction commits, or at once outside one)
    that these queues have new available jobs."""
    if queues:
        await conn.execute(_NOTIFY_SQL, list(queues))


# A batch statement takes at most this many rows, or rows whose arguments and keys
# add up to this many bytes: its JSON stays far below what a jsonb value may hold
# (256 MiB), and the rows the server expands from it stay few (an expansion larger
# than its work_mem goes to disk). A larger batch is several statements in one
# transaction.
_BATCH_ROWS = 10_000
_BATCH_BYTES = 32 * 1024 * 1024


def _chunks(rows: Sequence[NewJob]) -> list[Sequence[NewJob]]:
    chunks: list[Sequence[NewJob]] = []
    start = size = 0
    for i, r in enumerate(rows):
        # The arguments and the key, and a bound on the rest of the row.
        row = len(r.args) + (0 if r.key is None else len(r.key)) + 1024
        if i > start and (i - start >= _BATCH_ROWS or size + row > _BATCH_BYTES):
            chunks.append(rows[start:i])
            start, size = i, 0
        size += row
    chunks.append(rows[start:])
    return chunks


def _json_rows(rows: Sequence[NewJob]) -> str:
    """The JSON array of rows _INSERT_MANY_SQL expands. Text that is not valid
    Unicode (a queue name holding a lone surrogate) is refused, as the driver
    refuses it in a statement's parameters."""
    try:
        encoded = _json_encoder.encode(
            [
                (
                    r.kind,
                    r.queue,
                    r.state.value,
                    r.priority,
                    msgspec.Raw(r.args),
                    r.key,
                    r.max_attempts,
                    None if r.unique_key is None else r.unique_key.hex(),
                    r.unique_states,
                    r.run_at,
                    None if r.unique_digest is None else r.unique_digest.hex(),
                    r.domain,
                    r.partition,
                    r.ordered,
                )
                for r in rows
            ]
        )
    except UnicodeEncodeError as exc:
        raise StoreError(f"PostgreSQL: invalid input for a batch of jobs: {exc}") from exc
    return encoded.decode()


# A batch of at least this many rows, none holding a unique key, is copied: COPY
# skips the JSON the server would parse and expand, and inserts the rows in pages
# (a batch of 20,000 takes about a fifth less of the server's time). It cannot
# return the ids, so they are taken first from the table's sequence, in order, and
# written into the rows (COPY writes an identity column's given values); it cannot
# skip a duplicate either, so a batch with any unique key takes the JSON statement
# with ON CONFLICT. Below this size the two more round trips cost about what COPY
# saves (measured even at 2,000 to 5,000 rows, about 1.2x faster from 9,000).
COPY_ROWS = 5000
# The sequence is looked up once, as a regclass: nextval of its name (text) would look
# it up again for every id (twice the time for 20,000 ids).
_TAKE_IDS_SQL = (
    "SELECT now(), array(SELECT nextval("
    "(SELECT pg_get_serial_sequence('fiefdom_jobs', 'id')::regclass)) "
    "FROM generate_series(1, $1::integer))"
)
_COPY_COLUMNS = (
    "id",
    "kind",
    "queue",
    "state",
    "priority",
    "args",
    "domain_key",
    "max_attempts",
    "unique_states",
    "run_at",
    "created_at",
    "unique_digest",
    "domain",
    "partition",
    "ordered",
)
_COPY_COLUMNS_NOW = tuple(c for c in _COPY_COLUMNS if c not in ("run_at", "created_at"))
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_UNIX = 946_684_800.0


def timestamp(unix: float) -> datetime:
    """``to_timestamp(unix)`` as the statements compute it (the microseconds since
    PostgreSQL's epoch, rounded half to even as ``rint`` does), so a copied row's
    time is the one an INSERT of the same job stores."""
    return _PG_EPOCH + timedelta(microseconds=round((unix - _PG_EPOCH_UNIX) * 1_000_000.0))


async def _copy(conn: Conn, rows: Sequence[NewJob]) -> list[tuple[int, bytes | None]]:
    # The ids in the order nextval gave them (each one larger than the last).
    taken = await conn.fetchrow(_TAKE_IDS_SQL, len(rows))
    assert taken is not None
    ids: list[int] = sorted(taken[1])
    # When no job sets its own time, created_at and run_at are left to the columns'
    # defaults, the COPY's now() (the times cost the driver more to encode than the
    # rest of the row). Otherwise created_at, and the run_at of a job due now, are
    # the database's now() when the ids were taken (in a caller's transaction, the
    # transaction's).
    timed = any(r.run_at is not None for r in rows)
    columns = _COPY_COLUMNS if timed else _COPY_COLUMNS_NOW
    now: datetime = taken[0]
    # Built while the driver encodes and sends them: the server inserts the first
    # rows while the last are still being built.
    records = (
        (
            id_,
            r.kind,
            r.queue,
            r.state.value,
            r.priority,
            r.args.decode(),
            r.key,
            r.max_attempts,
            r.unique_states,
            *((now if r.run_at is None else timestamp(r.run_at), now) if timed else ()),
            r.unique_digest,
            r.domain,
            r.partition,
            r.ordered,
        )
        for id_, r in zip(ids, rows, strict=True)
    )
    try:
        # One statement: all or nothing on its own, and inside a caller's
        # transaction part of it.
        await conn.copy_records_to_table("fiefdom_jobs", records=records, columns=columns)
    except UnicodeEncodeError as exc:
        raise StoreError(f"PostgreSQL: invalid input for a batch of jobs: {exc}") from exc
    return [(id_, None) for id_ in ids]


async def insert_rows(conn: Conn, rows: Sequence[NewJob]) -> list[tuple[int, bytes | None]]:
    """Insert jobs: the (id, unique key) of each row inserted, in input order (a
    duplicate of a unique job is skipped)."""
    if len(rows) != 1:
        return await _insert_many(conn, rows)
    r = rows[0]
    one = await conn.fetch(
        INSERT_ONE_SQL if r.unique_key is not None else INSERT_ONE_PLAIN_SQL,
        r.kind,
        r.queue,
        r.state.value,
        r.priority,
        r.args.decode(),
        r.key,
        r.max_attempts,
        r.unique_key,
        r.unique_states,
        r.run_at,
        r.unique_digest,
        r.domain,
        r.partition,
        r.ordered,
    )
    return [(row[0], row[1]) for row in one]


async def _atomically(conn: Conn, work: Callable[[], Awaitable[T]]) -> T:
    """``work`` (several statements) all or nothing: in the caller's transaction
    (committed with it), or in one of its own."""
    if conn.is_in_transaction():
        return await work()
    async with conn.transaction():
        return await work()


async def _copy_and_notify(conn: Conn, rows: Sequence[NewJob]) -> list[tuple[int, bytes | None]]:
    copied = await _copy(conn, rows)
    await notify_queues(conn, available_queues(rows))
    return copied


async def _insert_many(conn: Conn, rows: Sequence[NewJob]) -> list[tuple[int, bytes | None]]:
    keyed = any(r.unique_key is not None for r in rows)
    if not keyed and len(rows) >= COPY_ROWS:
        # With its notification: an error between the two (the connection lost)
        # means that nothing was stored.
        return await _atomically(conn, lambda: _copy_and_notify(conn, rows))
    chunks = _chunks(rows)
    sql = _INSERT_MANY_SQL if keyed else _INSERT_MANY_PLAIN_SQL
    if len(chunks) == 1:
        got = await conn.fetch(sql, _json_rows(chunks[0]))
    else:
        got = await _atomically(conn, lambda: _insert_chunks(conn, chunks, sql))
    return [(r[0], r[1]) for r in got]


async def _insert_chunks(
    conn: Conn, chunks: Sequence[Sequence[NewJob]], sql: str
) -> list[asyncpg.Record]:
    got: list[asyncpg.Record] = []
    for chunk in chunks:
        got += await conn.fetch(sql, _json_rows(chunk))
    return got
