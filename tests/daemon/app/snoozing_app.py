"""A job kind whose handler always snoozes: the daemon's ``[jobs] max_snoozes``
decides when it is discarded."""

from __future__ import annotations

from typing import Any

from fiefdom.jobs import JobContext, Snooze
from fiefdom.storage import Job, JobOptions


class Snoozer(Job):
    """Asks to run again at once, every time (a service that answers 429 forever)."""

    options = JobOptions(kind="snoozer", max_attempts=1)


async def run_snoozer(job: Snoozer, ctx: JobContext[Any]) -> None:
    raise Snooze(0)


async def setup(daemon: Any) -> None:
    daemon.jobs.register(Snoozer, run_snoozer)
