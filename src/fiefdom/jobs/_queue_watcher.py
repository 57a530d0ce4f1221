"""The queue watcher: learns which queues are paused. Pauses live in the store so
that every engine on it honours them; without notifications across processes
(SQLite) they are read every poll interval, otherwise after each reconnect."""

from __future__ import annotations

import anyio

from .._log import get_logger
from ..storage import StoreError
from ._service import Service

log = get_logger("fiefdom.jobs")


class QueueWatcher(Service):
    name = "queue watcher"

    async def run(self) -> None:
        core = self.core
        while True:
            if core.queue_state_stale or not core.store.notifies_processes:
                try:
                    await self.refresh()
                except StoreError as exc:
                    core.throttle.warning(log, "reading paused queues failed", error=str(exc))
            await anyio.sleep(core.timing.poll)

    async def refresh(self) -> None:
        """Read which queues are paused; a notification that arrives during the read
        is newer than what it returns, so then the read is repeated next round."""
        core = self.core
        seen = core.queue_changes
        core.queue_state_stale = False
        try:
            paused = await core.store.paused_queues()
        except BaseException:
            core.queue_state_stale = True
            raise
        if core.queue_changes != seen:
            core.queue_state_stale = True
        else:
            core.apply_paused(paused)
