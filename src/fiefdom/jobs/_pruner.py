"""Retention: the engine's own periodic job that deletes final jobs older than
their state's retention."""

from __future__ import annotations

import dataclasses
from typing import Any

from .._log import get_logger
from ..storage import EngineQueries, Job, JobOptions
from ._kinds import JobContext

log = get_logger("fiefdom.jobs")


@dataclasses.dataclass(frozen=True, slots=True)
class Retention:
    """How long final jobs are kept (seconds), and how often the pruning job runs."""

    completed: float = 24 * 3600.0
    cancelled: float = 7 * 24 * 3600.0
    discarded: float = 7 * 24 * 3600.0
    every: float = 3600.0


class PruneJobs(Job):
    """The engine's own periodic job that deletes old final jobs."""

    options = JobOptions(kind="fiefdom.prune", queue="fiefdom", max_attempts=3, timeout=600)
    completed: float
    cancelled: float
    discarded: float


def pruner(queries: EngineQueries) -> Any:
    """The handler of ``PruneJobs`` on ``queries``' store."""

    async def prune(job: PruneJobs, ctx: JobContext[Any]) -> None:
        total = 0
        while True:
            n = await queries.prune(
                completed=job.completed, cancelled=job.cancelled, discarded=job.discarded
            )
            total += n
            if n < 10_000:
                break
        log.info("pruned finished jobs", deleted=total)

    return prune
