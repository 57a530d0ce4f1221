"""``fiefdom jobs``: list (newest first, with the total), show (every attempt with
its error and traceback), enqueue, retry (one job, or many with a count and a
confirmation), cancel (saying what it found), the registered kinds, and prune."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from ..protocol import Client
from ..storage import Enqueued, JobInfo, JobState
from ._common import CommandError, cell, confirm, emit_json, table, when

_FINAL = (JobState.COMPLETED, JobState.CANCELLED, JobState.DISCARDED)


def _print_jobs(jobs: Sequence[JobInfo]) -> None:
    table(
        ["id", "kind", "queue", "state", "attempt", "key", "run_at"],
        [
            [j.id, j.kind, j.queue, j.state, f"{j.attempt}/{j.max_attempts}", j.key, when(j.run_at)]
            for j in jobs
        ],
    )


# The fields of a job that ``jobs show`` prints, by their names in JobInfo.
_JOB_FIELDS = (
    "id",
    "kind",
    "queue",
    "state",
    "priority",
    "key",
    "attempt",
    "max_attempts",
    "snoozes",
)
_JOB_TIMES = ("created_at", "run_at", "attempted_at", "finished_at")
_WIDTH = len("cancel_requested")
_INDENT = " " * (_WIDTH + 3)


def _print_job(job: JobInfo) -> None:
    for name in _JOB_FIELDS:
        print(f"{name:<{_WIDTH}} {cell(getattr(job, name))}")
    print(f"{'worker':<{_WIDTH}} {cell(job.worker)}")
    print(f"{'cancel_requested':<{_WIDTH}} {'yes' if job.cancel_requested else 'no'}")
    for name in _JOB_TIMES:
        print(f"{name:<{_WIDTH}} {when(getattr(job, name))}")
    print(f"{'args':<{_WIDTH}} {job.args}")
    if job.damaged is not None:
        print(f"{'damaged':<{_WIDTH}} {job.damaged}")
    label = "errors"
    for error in job.errors:
        print(
            f"{label:<{_WIDTH}} attempt {error.attempt} at {when(error.at)}: "
            f"{error.type}: {error.message}"
        )
        for line in error.traceback.rstrip("\n").splitlines():
            print(f"{_INDENT}{line}".rstrip())
        label = ""


def _print_enqueued(kind: str, enqueued: Enqueued) -> None:
    if not enqueued.duplicate:
        print(f"enqueued job {enqueued.id} ({kind})")
    elif enqueued.id is not None:
        print(f"job {enqueued.id} is a unique {kind} job like this one: nothing new enqueued")
    else:
        print(f"a unique {kind} job like this one has just finished: nothing enqueued")


def _count(total: int | None, cap: int | None) -> str:
    if total is None:
        return "?"
    if cap is not None and total >= cap:
        return f"more than {cap - 1:,}"
    return f"{total:,}"


async def jobs_ls(client: Client, args: argparse.Namespace) -> int:
    page = await client.jobs_page(
        queue=args.queue,
        state=None if args.state is None else JobState(args.state),
        kind=args.kind,
        key=args.key,
        since=args.since,
        after_id=args.after,
        limit=args.limit,
        newest_first=not args.oldest_first,
        count=True,
    )
    jobs = page.jobs
    # The keyset of the next page: the last id of this one, when there may be more.
    following = jobs[-1].id if len(jobs) == args.limit else None
    if args.json:
        emit_json(
            {
                "jobs": jobs,
                "total": page.total,
                "total_cap": page.total_cap,
                "next_after": following,
            }
        )
        return 0
    _print_jobs(jobs)
    order = "oldest first" if args.oldest_first else "newest first"
    line = f"showing {len(jobs):,} of {_count(page.total, page.total_cap)} ({order})"
    if following is not None:
        line += f"; next page: --after {following}"
    print()
    print(line)
    return 0


async def jobs_show(client: Client, args: argparse.Namespace) -> int:
    job = await client.get_job(args.job_id)
    if args.json:
        emit_json(job)
    else:
        _print_job(job)
    return 0


def _what_retry_did(job: JobInfo, previous: JobState | None) -> str:
    was = f"was {previous}" if previous is not None else "was final"
    return (
        f"job {job.id} ({job.kind}) {was}: retried, now {job.state} "
        f"(attempt {job.attempt} of {job.max_attempts} used)"
    )


def _what_cancel_did(job: JobInfo, previous: JobState | None) -> str:
    name = f"job {job.id} ({job.kind})"
    if previous in _FINAL:
        finished = f" at {when(job.finished_at)}" if job.finished_at is not None else ""
        been = "" if previous is JobState.COMPLETED else "been "
        return f"{name} had already {been}{previous}{finished}: nothing to cancel"
    if job.state is JobState.RUNNING:
        return (
            f"{name} is running on {job.worker or 'a worker'}: asked to stop; "
            "it ends cancelled once its handler returns"
        )
    return f"{name} was {previous}: cancelled"


async def jobs_retry(client: Client, args: argparse.Namespace) -> int:
    if args.job_id is None:
        return await _retry_many(client, args)
    if args.state is not None or args.kind is not None or args.queue is not None:
        raise CommandError("retry takes a job id or filters (--state, --kind, --queue), not both")
    job, previous = await client.job_action("retry", args.job_id, force=args.force)
    if args.json:
        emit_json({"job": job, "previous": previous})
    else:
        print(_what_retry_did(job, previous))
    return 0


async def _retry_many(client: Client, args: argparse.Namespace) -> int:
    if args.state is None:
        raise CommandError("retry needs a job id, or --state (discarded, cancelled, completed)")
    state = JobState(args.state)
    if state not in _FINAL:
        raise CommandError(
            f"only discarded, cancelled or completed jobs can be retried, not {state}"
        )
    if state is JobState.COMPLETED and not args.force:
        raise CommandError("retrying completed jobs runs them a second time: add --force to do so")
    page = await client.jobs_page(
        state=state, kind=args.kind, queue=args.queue, limit=1, count=True
    )
    total = page.total or 0
    what = f"{state} job{'s' if total != 1 else ''}" + "".join(
        f" of {name} {value}"
        for name, value in (("kind", args.kind), ("queue", args.queue))
        if value is not None
    )
    if total == 0:
        if args.json:
            emit_json({"retried": 0, "skipped": 0})
        else:
            print(f"no {what}: nothing to retry")
        return 0
    confirm(args, f"retry {_count(total, page.total_cap)} {what}?")
    retried, skipped = await client.retry_jobs(
        state, kind=args.kind, queue=args.queue, force=args.force
    )
    if args.json:
        emit_json({"retried": retried, "skipped": skipped})
        return 0
    line = f"retried {retried:,} {what}"
    if skipped:
        line += f"; {skipped:,} skipped: a job enqueued since holds their unique key"
    print(line)
    return 0


async def jobs_cancel(client: Client, args: argparse.Namespace) -> int:
    job, previous = await client.job_action("cancel", args.job_id)
    if args.json:
        emit_json({"job": job, "previous": previous})
    else:
        print(_what_cancel_did(job, previous))
    return 0


async def jobs_enqueue(client: Client, args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.args)
    except ValueError as exc:
        raise CommandError(f"job arguments are not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise CommandError("job arguments must be a JSON object")
    enqueued = await client.enqueue(
        args.kind, payload, queue=args.queue, priority=args.priority, delay=args.delay
    )
    if args.json:
        emit_json(enqueued)
    else:
        _print_enqueued(args.kind, enqueued)
    return 0


async def jobs_kinds(client: Client, args: argparse.Namespace) -> int:
    kinds = await client.job_kinds()
    if args.json:
        emit_json(kinds)
        return 0
    rows: list[list[Any]] = [
        [
            k.kind,
            k.queue,
            k.priority,
            k.max_attempts,
            "-" if k.timeout is None else f"{k.timeout:g}s",
            "-" if k.domain is None else f"{k.domain}[{k.key}]" + (" ordered" if k.ordered else ""),
            k.unique,
            ",".join(k.fields) or "-",
        ]
        for k in kinds
    ]
    table(["kind", "queue", "priority", "attempts", "timeout", "domain", "unique", "args"], rows)
    return 0


async def jobs_prune(client: Client, args: argparse.Namespace) -> int:
    states = [JobState(s) for s in (args.state or [s.value for s in _FINAL])]
    what = (
        ", ".join(str(s) for s in states)
        + " jobs"
        + "".join(
            f" of {name} {value}"
            for name, value in (("kind", args.kind), ("queue", args.queue))
            if value is not None
        )
    )
    age = args.older_than_text
    confirm(args, f"delete {what} that finished more than {age} ago?")
    deleted, more = await client.prune_jobs(
        args.older_than, states=states, queue=args.queue, kind=args.kind
    )
    if args.json:
        emit_json({"deleted": deleted, "more": more})
        return 0
    line = f"deleted {deleted:,} {what} that finished more than {age} ago"
    if more:
        line += " (the limit of one prune: more are left, prune again)"
    print(line)
    return 0
