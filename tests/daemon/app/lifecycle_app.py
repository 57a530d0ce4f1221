"""A user module for the daemons that the lifecycle tests run in-process: an exposed
actor whose handler blocks until it is cancelled, recording that it started and that
it was cancelled (its shutdown deadline is an hour: only a cancel ends it)."""

from __future__ import annotations

from typing import Any

import anyio

import fiefdom


class Block(fiefdom.Request[None]):
    pass


class Probe:
    """What the running daemon's blocker has done; a new one per daemon (setup)."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.cancelled = anyio.Event()


PROBE = Probe()


class Blocker(fiefdom.Actor[Block]):
    async def receive(self, msg: Block) -> None:
        probe = PROBE
        probe.entered.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            probe.cancelled.set()
            raise


async def setup(daemon: Any) -> None:
    global PROBE
    PROBE = Probe()
    blocker = await daemon.system.spawn(Blocker, name="blocker", shutdown=3600.0)
    daemon.expose("blocker", blocker, [Block])
