"""A module the call tests' daemon hosts: a spawned actor (not a domain, so that a call
to it starts without a task) whose asks wait for a pass, and a keeper that hands out
passes, reports which asks started, were cancelled and finished, and answers with
replies of any size, noting the calls it got (as does a domain's key)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

import fiefdom


class Passes:
    """What the waiter and the keeper share (one per daemon process)."""

    def __init__(self) -> None:
        self.passes = asyncio.Semaphore(0)
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.finished: list[int] = []
        self.noted: list[int] = []


PASSES = Passes()


class Wait(fiefdom.Request[int]):
    """Waits until a pass is released; returns ``n``."""

    n: int


class Release(fiefdom.Request[int]):
    count: int = 1


class Counts(msgspec.Struct):
    started: list[int]
    cancelled: list[int]
    finished: list[int]
    noted: list[int]


class GetCounts(fiefdom.Request[Counts]):
    pass


class Note(fiefdom.Request[str]):
    """Noted (``n``), and answered with ``size`` bytes of text."""

    n: int
    size: int = 0


class Waiter(fiefdom.Actor[Wait]):
    async def receive(self, msg: Wait) -> int:
        PASSES.started.append(msg.n)
        try:
            await PASSES.passes.acquire()
        except asyncio.CancelledError:
            PASSES.cancelled.append(msg.n)
            raise
        PASSES.finished.append(msg.n)
        return msg.n


class Keeper(fiefdom.Actor[Release | GetCounts | Note]):
    async def receive(self, msg: Release | GetCounts | Note) -> int | Counts | str:
        if isinstance(msg, Release):
            for _ in range(msg.count):
                PASSES.passes.release()
            return msg.count
        if isinstance(msg, Note):
            PASSES.noted.append(msg.n)
            return "x" * msg.size
        return Counts(
            started=list(PASSES.started),
            cancelled=list(PASSES.cancelled),
            finished=list(PASSES.finished),
            noted=list(PASSES.noted),
        )


class Counter(fiefdom.Actor[GetCounts]):
    """The counts, from an actor of their own: asking them never queues behind (or
    ahead of) a call to the keeper, which would change how that call is run."""

    async def receive(self, msg: GetCounts) -> Counts:
        return Counts(
            started=list(PASSES.started),
            cancelled=list(PASSES.cancelled),
            finished=list(PASSES.finished),
            noted=list(PASSES.noted),
        )


class Noter(fiefdom.Actor[Note]):
    """The keeper's notes, from a domain's key (a call to a domain runs in a task)."""

    def __init__(self, key: str) -> None:
        self.key = key

    async def receive(self, msg: Note) -> str:
        PASSES.noted.append(msg.n)
        return "x" * msg.size


async def setup(daemon: Any) -> None:
    waiter = await daemon.system.spawn(Waiter, name="waiter")
    daemon.expose("waiter", waiter, [Wait])
    keeper = await daemon.system.spawn(Keeper, name="keeper")
    daemon.expose("keeper", keeper, [Release, GetCounts, Note])
    tally = await daemon.system.spawn(Counter, name="tally")
    daemon.expose("tally", tally, [GetCounts])
    notes = daemon.system.domain("notes", Noter, idle_timeout=600.0)
    daemon.expose("notes", notes, [Note])
