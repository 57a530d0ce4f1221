"""A job kind for drain tests: ``gate`` runs until the file ``gates/<name>`` exists in
the daemon's data folder, so a test decides when it finishes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from fiefdom.jobs import JobContext
from fiefdom.storage import Job, JobOptions

GATES: Path | None = None


class Gate(Job):
    """Runs until its gate file exists."""

    options = JobOptions(kind="gate", max_attempts=3)
    name: str = "gate"


async def run_gate(job: Gate, ctx: JobContext[Any]) -> None:
    assert GATES is not None
    gate = GATES / job.name
    while not gate.exists():  # noqa: ASYNC110 - a file is what the test can open
        await anyio.sleep(0.02)


async def setup(daemon: Any) -> None:
    global GATES
    GATES = daemon.data_dir / "gates"
    GATES.mkdir(exist_ok=True)
    daemon.jobs.register(Gate, run_gate)
