"""What a drain of the job engine did, told as it goes: from the moment the daemon
stops claiming (``fiefdom drain``, SIGTERM, ``fiefdom stop``) a ``draining`` line
every few seconds while jobs still run (how many, and the seconds left before the
rest are cancelled), then one ``drained`` line with what became of the jobs:

- ``finished``: ran to an outcome (completed, failed to retry, discarded, cancelled
  by request);
- ``given_back``: went back to their queue unrun (claimed, not yet started), no
  attempt used;
- ``cancelled``: still running when the drain's deadline passed (or when a second
  signal or ``stop --cancel`` came): cut short and given back to their queue, no
  attempt used.

Both are log events: on stderr, in the flight recorder, and on the control channel's
``logs`` topic, where a client can follow a drain (the fields are named above, and
``running`` and ``seconds_left`` on a progress line)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from .._log import get_logger
from ..jobs import JobEngine
from ..storage import JobEvent, JobState

log = get_logger("fiefdom.daemon")

# Seconds between two progress lines of a drain that has jobs running.
PROGRESS_EVERY = 2.0


class DrainWatch:
    """Counts what becomes of the jobs of ``engine`` from now on, and logs progress
    until ``finish()``."""

    def __init__(self, engine: JobEngine | None, timeout: float) -> None:
        self.engine = engine
        self.timeout = timeout
        self.began = time.monotonic()
        self.deadline = self.began + timeout
        self.finished = 0
        self.given_back = 0
        self.cancelled = 0
        self.took: float | None = None
        self._unsubscribe: Callable[[], None] = lambda: None
        self._progress: asyncio.Task[None] | None = None
        if engine is not None:
            self._unsubscribe = engine.subscribe(self._on_event)
            self._progress = asyncio.ensure_future(self._report())

    @property
    def running(self) -> int:
        """Jobs the engine holds (claimed and not yet recorded)."""
        if self.engine is None:
            return 0
        return sum(q.in_flight for q in self.engine.statistics().queues)

    def cancelling(self) -> None:
        """Running jobs are being cancelled now (before the deadline)."""
        self.deadline = min(self.deadline, time.monotonic())

    def _on_event(self, event: JobEvent) -> None:
        # Runs in the engine's task: counting only.
        if event.state is JobState.RUNNING:
            return
        if event.state is JobState.AVAILABLE and (event.detail or "").startswith("given back"):
            if time.monotonic() >= self.deadline:
                self.cancelled += 1
            else:
                self.given_back += 1
        else:
            self.finished += 1

    async def _report(self) -> None:
        while True:
            running = self.running
            if running:
                log.info(
                    "draining: jobs still running",
                    running=running,
                    seconds_left=round(max(0.0, self.deadline - time.monotonic()), 1),
                )
            await asyncio.sleep(PROGRESS_EVERY)

    def counts(self) -> dict[str, Any]:
        """The summary's fields."""
        took = time.monotonic() - self.began if self.took is None else self.took
        return {
            "finished": self.finished,
            "given_back": self.given_back,
            "cancelled": self.cancelled,
            "took": round(took, 3),
        }

    async def finish(self) -> dict[str, Any]:
        """The engine has stopped: stop reporting; returns the summary's fields (the
        first call fixes them)."""
        if self.took is None:
            self.took = time.monotonic() - self.began
            self._unsubscribe()
            if self._progress is not None:
                self._progress.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._progress
        return self.counts()
