"""The listener: receives other processes' wake-ups (new jobs, cancels, pauses)
from the store, and reconnects with backoff when the connection is lost."""

from __future__ import annotations

from ..storage import Notifications, StoreError
from ._core import Core
from ._service import Service


class Listener(Service):
    name = "listener"

    def __init__(self, core: Core, subscriber: Notifications) -> None:
        super().__init__(core)
        self._subscriber = subscriber

    async def run(self) -> None:
        core = self.core
        failures = 0
        while True:

            def ready() -> None:
                nonlocal failures
                failures = 0
                # Notifications may have been missed meanwhile.
                core.queue_state_stale = True
                core.wake_all()

            try:
                await core.queries.listen(self._subscriber, ready)
            except StoreError as exc:
                failures += 1
                await core.backoff("listen", exc, failures)
