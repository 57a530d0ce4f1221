"""The lease keeper: renews the lease of every job the engine holds, and cancels
the handler of a job whose lease was lost or whose cancel was asked."""

from __future__ import annotations

import anyio

from .._log import get_logger
from ..storage import Lease, StoreError
from ._service import Service

log = get_logger("fiefdom.jobs")


class LeaseKeeper(Service):
    name = "lease keeper"

    async def run(self) -> None:
        core = self.core
        while True:
            await anyio.sleep(core.timing.heartbeat)
            # Finished jobs too: their outcome may wait for the finisher (a slow or
            # failing write), and a lease that lapsed meanwhile would let another
            # engine run the job again.
            leases = [Lease(h.job.id, h.job.lease_token) for h in core.held.values()]
            if not leases:
                continue
            try:
                alive, cancel = await core.queries.heartbeat(leases, lease=core.timing.lease)
            except StoreError as exc:
                core.throttle.warning(log, "heartbeat failed", error=str(exc), jobs=len(leases))
                continue
            for lease in leases:
                if lease.job_id not in alive:
                    held = core.held.get(lease.job_id)
                    if held is not None and not held.finished:
                        log.warning("lease lost: cancelling the handler", job_id=lease.job_id)
                        core.cancel_held(lease.job_id, "lease")
            for job_id in cancel:
                core.cancel_held(job_id, "cancel")
