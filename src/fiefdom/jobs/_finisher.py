"""The finisher: records outcomes in batches. Every outcome that piled up while
the previous write was in progress goes in one statement: at low load a job's
outcome is written at once, at high load the batches grow (group commit)."""

from __future__ import annotations

import time

import anyio
import msgspec

from .._errors import StoreUnavailable
from .._log import get_logger
from ..storage import JobState, Outcome, StoreError
from ._core import Held
from ._kinds import note, snooze_detail
from ._service import Service

log = get_logger("fiefdom.jobs")

Item = tuple[Held, Outcome | None]


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
            done, failed, error = await self._write(batch)
            if len(failed) < len(batch):
                core.recorded_at = time.monotonic()
                self._recorded([item for item in batch if item not in failed], done)
            if failed:
                assert error is not None
                core.pending[:0] = failed
                core.finish_failures += 1
                # Not cut short by a stop: at shutdown this is the write still
                # wanted, and retrying at once would spin on a failing store.
                await core.backoff("finish", error, core.finish_failures, interruptible=False)
            else:
                core.finish_failures = 0

    def _recorded(self, batch: list[Item], done: dict[int, JobState]) -> None:
        core = self.core
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
                snoozed = False
                if ended is not outcome.state:
                    detail = "superseded by a waiting job with its unique key"
                elif held.given_back is not None:
                    detail = held.given_back
                elif held.cancel_reason == "pause":
                    detail = "given back unrun: its queue was paused"
                elif outcome.snooze:
                    detail = snooze_detail(outcome.delay or 0.0, held.job.snoozes + 1)
                    snoozed = True
                elif outcome.refund and outcome.state is JobState.AVAILABLE:
                    detail = "given back at shutdown"
                core.emit(held.job, ended, detail, snoozed=snoozed)

    async def _write(
        self, batch: list[Item]
    ) -> tuple[dict[int, JobState], list[Item], StoreError | None]:
        """Record ``batch``; returns what was recorded, the items still to write
        and the error that stopped them. An outage fails the whole batch (it is
        retried). Any other refusal is taken to be about one result: the batch is
        split so the others are recorded, and a result the store refuses alone is
        recorded without its error text (which is then what was wrong with it)."""
        outcomes = [o for _, o in batch if o is not None]
        try:
            return await self._finish(outcomes), [], None
        except StoreUnavailable as exc:
            return {}, batch, exc
        except StoreError as exc:
            refused = exc
        if len(batch) > 1:
            done: dict[int, JobState] = {}
            failed: list[Item] = []
            error: StoreError | None = None
            for item in batch:
                got, left, why = await self._write([item])
                done.update(got)
                failed += left
                error = why or error
            return done, failed, error
        held, outcome = batch[0]
        assert outcome is not None
        if outcome.error is None:
            return {}, batch, refused
        log.error(
            "the store refused a job's outcome: recording it without its error text",
            job_id=held.job.id,
            kind=held.job.kind,
            error=str(refused),
        )
        plain = msgspec.structs.replace(
            outcome,
            error=note(
                outcome.error.attempt,
                outcome.error.at,
                outcome.error.type,
                f"the error text of this attempt could not be stored ({refused})",
            ),
        )
        try:
            return await self._finish([plain]), [], None
        except StoreError as exc:
            return {}, batch, exc

    async def _finish(self, outcomes: list[Outcome]) -> dict[int, JobState]:
        # Shielded: an outcome write in progress is waited for, so a cancelled
        # engine knows what was recorded.
        done: dict[int, JobState] = {}
        began = time.perf_counter()
        with anyio.CancelScope(shield=True):
            done = await self.core.queries.finish(outcomes)
        self.core.finish_times.observe(time.perf_counter() - began)
        return done
