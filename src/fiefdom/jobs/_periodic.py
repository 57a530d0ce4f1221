"""The periodic enqueuer: inserts each periodic job once per period, aligned to the
clock. With several engines on one database, a unique key per (name, slot) makes
exactly one of them insert it."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import anyio

from .._log import get_logger
from ..storage import Job, StoreError, periodic_row
from ._core import Core
from ._service import Service

log = get_logger("fiefdom.jobs")


@dataclasses.dataclass(slots=True)
class Periodic:
    name: str
    factory: Callable[[], Job]
    every: float
    run_on_start: bool


class PeriodicEnqueuer(Service):
    name = "periodic enqueuer"

    def __init__(self, core: Core, schedule: list[Periodic]) -> None:
        super().__init__(core)
        self.schedule = schedule

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for spec in self.schedule:
                tg.start_soon(self._every, spec, name=f"{self.core.path}/every/{spec.name}")

    async def _every(self, spec: Periodic) -> None:
        slot = math.floor(time.time() / spec.every)
        if spec.run_on_start:
            await self._insert(spec, slot)
        while True:
            slot += 1
            await anyio.sleep(max(0.0, slot * spec.every - time.time()))
            await self._insert(spec, slot)

    async def _insert(self, spec: Periodic, slot: int) -> None:
        try:
            row = periodic_row(spec.factory(), spec.name, slot, now=time.time())
            if await self.core.queries.insert_periodic(row):
                log.info("enqueued a periodic job", name=spec.name, slot=slot)
        except StoreError as exc:
            log.warning("could not enqueue a periodic job", name=spec.name, error=str(exc))
