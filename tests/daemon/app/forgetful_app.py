"""A user module whose setup forgets to await ``daemon.system.spawn``: nothing is
spawned, and the daemon must not come up "ready" as if it were."""

from __future__ import annotations

import fiefdom


class Idle(fiefdom.Actor[None]):
    async def receive(self, msg: None) -> None:
        return None


async def setup(daemon: fiefdom.ModuleHost) -> None:
    daemon.system.spawn(Idle, name="idle")  # the await forgotten
