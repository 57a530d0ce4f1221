"""Glue between the job engine (storage) and the control channel: the engine's
operations as the ``JobService`` the server calls, and its job events fed to the
event hub and the metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from .._errors import FiefdomError
from ..protocol import ControlMetrics, EventHub, JobService
from ..supervisors import ActorSystem
from ._config import Config

if TYPE_CHECKING:
    from ._storage import Store


class JobsAdapter:
    def __init__(self, config: Config, hub: EventHub, metrics: ControlMetrics) -> None:
        self.config = config
        self.hub = hub
        self.metrics = metrics
        self.service: JobService | None = None
        self.running = False

    def attach(self, store: Store, system: ActorSystem) -> None:
        self.store = store
        self.system = system

    def engine_for_setup(self) -> Any:
        raise FiefdomError("the job engine is not available in this build")

    @asynccontextmanager
    async def running_engine(self) -> AsyncIterator[None]:
        self.running = True
        try:
            yield
        finally:
            self.running = False

    async def drain(self, queue: str | None, timeout: float | None) -> None:
        return None

    def cancel_running(self) -> None:
        return None
