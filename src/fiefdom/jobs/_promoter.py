"""The promoter: makes scheduled and retryable jobs available once their time has
come, every poll interval (the store wakes this process's fetchers)."""

from __future__ import annotations

import anyio

from .._log import get_logger
from ..storage import StoreError
from ._service import Service

log = get_logger("fiefdom.jobs")


class Promoter(Service):
    name = "promoter"

    async def run(self) -> None:
        core = self.core
        while True:
            try:
                await core.queries.promote()
            except StoreError as exc:
                core.throttle.warning(log, "promoting due jobs failed", error=str(exc))
            await anyio.sleep(core.timing.poll)
