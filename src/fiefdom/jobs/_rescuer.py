"""The rescuer: takes back jobs whose lease expired (their worker died, hung or
lost the database), every ``rescue_interval`` seconds."""

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
                for job_id, kind, queue, state in await core.queries.rescue():
                    core.rescued += 1
                    log.warning(
                        "rescued a job whose lease expired", job_id=job_id, state=state.value
                    )
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
