"""The rescuer: takes back jobs whose lease expired (their worker died, hung or
lost the database), every ``rescue_interval`` seconds, and cancels this engine's own
run of any job it took back."""

from __future__ import annotations

import time

import anyio

from .._log import get_logger
from ..storage import JobEvent, JobState, StoreError
from ._service import Service

log = get_logger("fiefdom.jobs")


class Rescuer(Service):
    name = "rescuer"

    async def run(self) -> None:
        core = self.core
        while True:
            try:
                # A job this engine held as the rescue began, rescued, is one whose
                # lease lapsed while it was still here: the loop held up past the
                # lease (a long pause, a blocking call, a stopped process) before the
                # lease keeper could renew it. Its run is stale: it is cancelled now,
                # before the job can be claimed again (here or elsewhere), not at the
                # lease keeper's next heartbeat. A job claimed again since the rescue
                # began is held anew and left alone.
                held_before = dict(core.held)
                for job_id, kind, queue, state in await core.queries.rescue():
                    core.rescued += 1
                    log.warning(
                        "rescued a job whose lease expired", job_id=job_id, state=state.value
                    )
                    stale = held_before.get(job_id)
                    if stale is not None and not stale.finished:
                        log.warning(
                            "lease lapsed while its handler ran here: cancelling it",
                            job_id=job_id,
                        )
                        core.cancel(stale, "lease")
                    if core.subscribers:
                        core.publish(
                            JobEvent(
                                job_id=job_id,
                                kind=kind,
                                queue=queue,
                                state=state,
                                attempt=0,
                                at=time.time(),
                                detail=(
                                    "lease expired on its last attempt: its worker died"
                                    if state is JobState.DISCARDED
                                    else "lease expired"
                                ),
                            )
                        )
            except StoreError as exc:
                core.throttle.warning(log, "rescue failed", error=str(exc))
            await anyio.sleep(core.timing.rescue_every)
