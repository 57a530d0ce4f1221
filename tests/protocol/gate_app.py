"""A module the fairness tests' daemons host: a domain whose asks wait at a gate
(one key per request, so they run at once), and a gatekeeper that lets them through
one at a time and reports how many were inside at most."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

import fiefdom


class Gate:
    """What the holders share (one per daemon process)."""

    def __init__(self) -> None:
        self.passes = asyncio.Semaphore(0)
        self.inside = 0
        self.peak = 0
        self.entered: list[str] = []


GATE = Gate()


class Hold(fiefdom.Request[str]):
    """Waits at the gate until a pass is released; returns its key."""


class Release(fiefdom.Request[int]):
    """Lets ``count`` holders through (now, or as they arrive)."""

    count: int = 1


class Report(msgspec.Struct):
    inside: int
    peak: int
    entered: list[str]


class GetReport(fiefdom.Request[Report]):
    pass


class Holder(fiefdom.Actor[Hold]):
    def __init__(self, key: str) -> None:
        self.key = key

    async def receive(self, msg: Hold) -> str:
        GATE.entered.append(self.key)
        GATE.inside += 1
        GATE.peak = max(GATE.peak, GATE.inside)
        try:
            await GATE.passes.acquire()
        finally:
            GATE.inside -= 1
        return self.key


class Gatekeeper(fiefdom.Actor[Release | GetReport]):
    async def receive(self, msg: Release | GetReport) -> int | Report:
        if isinstance(msg, Release):
            for _ in range(msg.count):
                GATE.passes.release()
            return msg.count
        return Report(inside=GATE.inside, peak=GATE.peak, entered=list(GATE.entered))


async def setup(daemon: Any) -> None:
    holders = daemon.system.domain("gate", Holder, idle_timeout=600.0)
    daemon.expose("gate", holders, [Hold])
    keeper = await daemon.system.spawn(Gatekeeper, name="gatekeeper")
    daemon.expose("gatekeeper", keeper, [Release, GetReport])
