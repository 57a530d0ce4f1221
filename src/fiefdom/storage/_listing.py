"""The statements of the job listings, in both dialects (``Dialect``): a page of
jobs, how many a listing has (up to a cap), and the ids a bulk retry takes, each
reading an index walked in either direction, a state's queue by queue."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from ._jobs import JobState
from ._sql import check_bigint, check_not_negative


def _filters(
    *,
    queue: str | None,
    kind: str | None,
    key: str | None,
    since: float | None,
    param: Callable[[object], str],
    timestamp: Callable[[str], str],
) -> list[str]:
    where = []
    if queue is not None:
        where.append(f"queue = {param(queue)}")
    if kind is not None:
        where.append(f"kind = {param(kind)}")
    if key is not None:
        where.append(f"domain_key = {param(key)}")
    if since is not None:
        where.append(f"created_at >= {timestamp(param(since))}")
    return where


def _params(placeholder: Callable[[int], str]) -> tuple[list[object], Callable[[object], str]]:
    args: list[object] = []

    def param(value: object) -> str:
        args.append(value)
        return placeholder(len(args))

    return args, param


# Running jobs are in no listing index (migration 0011; on PostgreSQL also 0012, the
# kind's): every job passes through running, so a claim writes fewer index entries
# (on SQLite a finish too, which puts back the entries a claim deletes; SQLite keeps
# (kind, id) whole, which neither writes; docs/performance.md has the figures). A
# statement that reads a listing index says NOT_RUNNING, the condition of those
# partial indexes, in so many words: both planners then use them whatever the state
# parameter. Running jobs are read through the partial lease index instead, all of
# them (at most the workers' slots in all, and the jobs of lapsed leases until their
# rescue), and sorted; ``RUNNING_ORDER`` keeps PostgreSQL's planner from walking the
# primary key instead (which reads every job when few are running), and SQLite,
# which has no statistics, is told the index (``Dialect.running_from``).
NOT_RUNNING = "state <> 'running'"
RUNNING = "state = 'running'"
RUNNING_ORDER = "id + 0"


@dataclasses.dataclass(frozen=True, slots=True)
class Dialect:
    """Where the statements built here differ between the stores: how parameter
    ``n`` is written, how a parameter of unix seconds becomes the time columns' type,
    where running jobs are read from (see above), and whether the dialect joins
    LATERAL (see ``_queues``)."""

    placeholder: Callable[[int], str]
    timestamp: Callable[[str], str]
    running_from: str
    lateral: bool


POSTGRES = Dialect(
    placeholder=lambda n: f"${n}",
    timestamp=lambda p: f"to_timestamp({p}::float8)",
    running_from="fiefdom_jobs",
    lateral=True,
)
SQLITE = Dialect(
    placeholder=lambda n: f"?{n}",
    timestamp=lambda p: p,
    running_from="fiefdom_jobs INDEXED BY fiefdom_jobs_lease",
    lateral=False,
)


def _where(terms: Sequence[str]) -> str:
    return f"WHERE {' AND '.join(terms)} " if terms else ""


# Neither dialect has a (state, id) listing index (migration 0014 on PostgreSQL, 0015
# on SQLite: one index entry fewer for every job enqueued and every state change). A
# statement over one state of every queue reads, for each queue, its range of
# (queue, state, id), at most a page of it, and merges them. The queues come from the
# same index, one descent per queue (its first entry past the last queue found: a
# loose index scan; the recursion ends on a NULL queue, which is not joined). Each
# queue's range is ordered as the index is, so that the planner reads it through the
# index whatever the state's share of the table (by id alone, it may walk the primary
# key and filter, reading most of the table for a small queue). So the statement
# reads at most a page and a descent per queue whatever the number of jobs (the key
# and since filters filter that walk). PostgreSQL joins each queue's page LATERAL;
# SQLite, which has no LATERAL join, gathers each queue's page of ids into a JSON
# array (a correlated subquery) and reads the rows by id.
def _first_queue(past: str | None, *, lateral: bool) -> str:
    """The first queue (past ``past``, a queue) with a job in a listing index: one
    descent of (queue, state, id). On SQLite, as min(), which its planner reads as
    one search of the index."""
    after = "" if past is None else f" AND queue > {past}"
    if lateral:
        where = f"WHERE {NOT_RUNNING}{after} ORDER BY queue LIMIT 1"
        return f"(SELECT queue FROM fiefdom_jobs {where})"
    return f"(SELECT min(queue) FROM fiefdom_jobs WHERE {NOT_RUNNING}{after})"


def _queues(*, lateral: bool) -> str:
    return (
        f"WITH RECURSIVE q(queue) AS (SELECT {_first_queue(None, lateral=lateral)} "
        f"UNION ALL SELECT {_first_queue('q.queue', lateral=lateral)} "
        "FROM q WHERE q.queue IS NOT NULL) "
    )


def _queue_page(
    columns: str,
    where: Sequence[str],
    state: str,
    limit: str,
    d: str,
    *,
    lateral: bool,
    queue: str = "q.queue",
) -> str:
    """``columns`` of the first ``limit`` jobs in ``state`` of the queue ``queue``
    that meet ``where``, read in the index's order. On PostgreSQL the state is
    written as a range of one value: with ``state =``, the planner takes the queue
    and the state for constants, finds the primary key in the order asked for too,
    and may walk it, filtering, for a state most jobs are in (reading most of the
    table for a small queue); no other index gives (state, id) order, so it walks
    (queue, state, id). SQLite needs ``state =``: after a range it uses no further
    column of the index, and would walk the state's entries up to ``after_id``
    instead of seeking to it."""
    states = [f"state >= {state}", f"state <= {state}"] if lateral else [f"state = {state}"]
    terms = [f"queue = {queue}", *states, NOT_RUNNING, *where]
    return (
        f"SELECT {columns} FROM fiefdom_jobs {_where(terms)}ORDER BY state{d}, id{d} LIMIT {limit}"
    )


def _each_queue(
    columns: str,
    where: Sequence[str],
    state: str,
    limit: str,
    then: str,
    *,
    lateral: bool,
    newest_first: bool = False,
) -> str:
    """``columns`` of the first ``limit`` jobs in ``state`` (a parameter) of each
    queue that meet ``where`` (in id order, or going down), then ``then`` (their
    order and limit in all; ``columns`` starts with the id)."""
    d = " DESC" if newest_first else ""
    if lateral:
        page = _queue_page(columns, where, state, limit, d, lateral=True)
        return (
            f"{_queues(lateral=True)}SELECT s.* FROM q CROSS JOIN LATERAL ({page}) AS s "
            f"WHERE q.queue IS NOT NULL {then}"
        )
    page = _queue_page("id", where, state, limit, d, lateral=False)
    ids = (
        "SELECT e.value FROM q, json_each((SELECT json_group_array(id) "
        f"FROM ({page}))) AS e WHERE q.queue IS NOT NULL"
    )
    return f"{_queues(lateral=False)}SELECT {columns} FROM fiefdom_jobs WHERE id IN ({ids}) {then}"


def _count_each_queue(where: Sequence[str], state: str, cap: str, *, lateral: bool) -> str:
    """How many jobs in ``state`` meet ``where``, counted up to ``cap``: queue by
    queue, each counted up to ``cap``, until ``cap`` is reached."""
    if lateral:
        counted = _each_queue("1 AS one", where, state, cap, f"LIMIT {cap}", lateral=True)
        return f"SELECT count(*) FROM ({counted}) AS c"
    # SQLite: the loose scan carries the count so far and stops once it reaches cap.
    page = _queue_page("1", where, state, cap, "", lateral=False, queue="c.queue")
    return (
        f"WITH RECURSIVE c(queue, n) AS (SELECT {_first_queue(None, lateral=False)}, 0 "
        f"UNION ALL SELECT {_first_queue('c.queue', lateral=False)}, "
        f"c.n + (SELECT count(*) FROM ({page})) "
        f"FROM c WHERE c.queue IS NOT NULL AND c.n < {cap}) SELECT min(max(n), {cap}) FROM c"
    )


def list_jobs_query(
    columns: str,
    *,
    queue: str | None,
    state: JobState | None,
    kind: str | None,
    after_id: int,
    limit: int,
    key: str | None = None,
    since: float | None = None,
    newest_first: bool = False,
    dialect: Dialect,
) -> tuple[str, list[object]]:
    """The listing statement in ``dialect`` and its parameters: jobs after
    ``after_id`` in id order (newest first: before it, ids going down; 0 starts at
    either end), each filter backed by an index walked in either direction: a
    state's, (queue, state, id) queue by queue (see ``_queues``); for a queue, one
    range of (queue, state, id) per state or the state's; for a kind without either,
    (kind, id). Running jobs come from the dialect's ``running_from`` (see
    NOT_RUNNING), as an arm of their own where a listing by queue or kind takes every
    state, the arms merged in id order. ``key`` and ``since`` filter the rows of that
    walk (no index of their own)."""
    check_bigint(after_id=after_id, limit=limit)
    check_not_negative(limit=limit)
    args, param = _params(dialect.placeholder)
    running_from, lateral = dialect.running_from, dialect.lateral
    where = []
    if newest_first:
        if after_id:
            where.append(f"id < {param(after_id)}")
    else:
        where.append(f"id > {param(after_id)}")
    where += _filters(
        queue=queue, kind=kind, key=key, since=since, param=param, timestamp=dialect.timestamp
    )
    cap = param(limit)
    order = " DESC" if newest_first else ""

    def select(source: str, terms: list[str], by: str = "id") -> str:
        return f"SELECT {columns} FROM {source} {_where(terms)}ORDER BY {by}{order} LIMIT {cap}"

    if state is JobState.RUNNING:
        return select(running_from, [*where, RUNNING], RUNNING_ORDER), args
    if state is not None:
        value = param(state.value)
        if queue is None and kind is None:
            then = f"ORDER BY 1{order} LIMIT {cap}"
            sql = _each_queue(
                columns, where, value, cap, then, lateral=lateral, newest_first=newest_first
            )
            return sql, args
        return select("fiefdom_jobs", [*where, f"state = {value}", NOT_RUNNING]), args
    if queue is None and kind is None:
        return select("fiefdom_jobs", where), args
    running = select(running_from, [*where, RUNNING], RUNNING_ORDER)
    if queue is None:  # a kind's jobs: those of its listing index, and the running ones
        parts = [select("fiefdom_jobs", [*where, NOT_RUNNING]), running]
    else:
        parts = [
            running
            if s is JobState.RUNNING
            else select("fiefdom_jobs", [*where, f"state = '{s.value}'", NOT_RUNNING])
            for s in JobState
        ]
    arms = " UNION ALL ".join(f"SELECT * FROM ({part}) AS s{i}" for i, part in enumerate(parts))
    return f"SELECT * FROM ({arms}) AS u ORDER BY 1{order} LIMIT {cap}", args


def count_listed_query(
    *,
    queue: str | None,
    state: JobState | None,
    kind: str | None,
    key: str | None,
    since: float | None,
    cap: int,
    dialect: Dialect,
) -> tuple[str, list[object]]:
    """How many jobs a listing with these filters has in all (whatever its page),
    counted up to ``cap`` at most: a count never reads more than ``cap`` rows of an
    index, however big the table (and the running jobs, see NOT_RUNNING; a state's
    count across queues also descends once per queue, until ``cap``; on SQLite it
    reads up to ``cap`` rows of the queue that reaches it)."""
    check_bigint(cap=cap)
    check_not_negative(cap=cap)
    args, param = _params(dialect.placeholder)
    where = _filters(
        queue=queue, kind=kind, key=key, since=since, param=param, timestamp=dialect.timestamp
    )
    running_from = dialect.running_from
    limit = param(cap)
    if state is JobState.RUNNING:
        parts = [(running_from, [*where, RUNNING])]
    elif state is not None:
        value = param(state.value)
        if queue is None and kind is None:
            return _count_each_queue(where, value, limit, lateral=dialect.lateral), args
        parts = [("fiefdom_jobs", [*where, f"state = {value}", NOT_RUNNING])]
    elif queue is None and kind is None:
        parts = [("fiefdom_jobs", where)]
    else:  # a queue's or a kind's jobs: those of its listing index, and the running ones
        parts = [("fiefdom_jobs", [*where, NOT_RUNNING]), (running_from, [*where, RUNNING])]
    selects = " UNION ALL ".join(
        f"SELECT * FROM (SELECT 1 AS one FROM {source} {_where(terms)}LIMIT {limit}) AS p{i}"
        for i, (source, terms) in enumerate(parts)
    )
    return f"SELECT count(*) FROM ({selects} LIMIT {limit}) AS c", args


def retry_candidates_query(
    *,
    state: JobState,
    queue: str | None,
    kind: str | None,
    limit: int,
    dialect: Dialect,
) -> tuple[str, list[object]]:
    """The ids a bulk retry takes (oldest first, at most ``limit``; ``state`` is a
    final one: never running), through (queue, state, id), queue by queue without a
    queue (see ``_queues``), or the kind's (kind, id) with a kind alone. The
    statement selects from the table itself, so that ``FOR UPDATE`` may follow it
    (and a row changed meanwhile is checked again against its conditions)."""
    check_bigint(limit=limit)
    args, param = _params(dialect.placeholder)
    value = param(state.value)
    where = [f"state = {value}", NOT_RUNNING]
    where += _filters(
        queue=queue, kind=kind, key=None, since=None, param=param, timestamp=lambda p: p
    )
    cap = param(limit)
    if queue is None and kind is None:
        # The ids, looked up through the primary key (the state is checked again on
        # each row, which FOR UPDATE checks again on a row changed meanwhile).
        lateral = dialect.lateral
        taken = _each_queue("id", [], value, cap, f"ORDER BY 1 LIMIT {cap}", lateral=lateral)
        where.append(f"id = ANY(ARRAY({taken}))" if lateral else f"id IN ({taken})")
    return f"SELECT id FROM fiefdom_jobs {_where(where)}ORDER BY id LIMIT {cap}", args
