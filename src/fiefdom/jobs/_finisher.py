"""The finisher: records outcomes in batches. Every outcome that piled up while
the previous write was in progress goes in one statement: at low load a job's
outcome is written at once, at high load the batches grow (group commit)."""

from __future__ import annotations

import time

import anyio
import structlog

from ..storage import JobState, StoreError
from ._service import Service

log = structlog.get_logger("fiefdom.jobs")


class Finisher(Service):
    name = "finisher"

    async def run(self) -> None:
        core = self.core
        while True:
            if not core.pending:
                core.pending_event.clear()
                await core.pending_event.wait()
                continue
            batch, core.pending = core.pending, []
            try:
                # Shielded: an outcome write in progress is waited for, so a
                # cancelled engine knows what was recorded.
                with anyio.CancelScope(shield=True):
                    done = await core.queries.finish([o for _, o in batch if o is not None])
            except StoreError as exc:
                core.pending[:0] = batch
                core.finish_failures += 1
                # Not cut short by a stop: at shutdown this is the write still
                # wanted, and retrying at once would spin on a failing store.
                await core.backoff("finish", exc, core.finish_failures, interruptible=False)
                continue
            core.finish_failures = 0
            core.recorded_at = time.monotonic()
            for held, outcome in batch:
                core.release(held)
                assert outcome is not None
                ended = done.get(held.job.id)
                if ended is None:
                    core.stale += 1
                    log.warning(
                        "outcome refused: the lease was taken over",
                        job_id=held.job.id,
                        token=held.job.lease_token,
                        outcome=outcome.state.value,
                    )
                    continue
                core.outcomes[ended.value] = core.outcomes.get(ended.value, 0) + 1
                if core.subscribers:
                    detail = None if outcome.error is None else outcome.error.message
                    if ended is not outcome.state:
                        detail = "superseded by a waiting job with its unique key"
                    elif held.given_back is not None:
                        detail = held.given_back
                    elif held.cancel_reason == "pause":
                        detail = "given back unrun: its queue was paused"
                    elif outcome.refund and outcome.state is JobState.AVAILABLE:
                        detail = "given back at shutdown"
                    core.emit(held.job, ended, detail)
