"""A user module the test daemons host: a counter actor, a domain of accounts and a
job kind, registered through the setup hook as a real deployment would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec

import fiefdom
from fiefdom.jobs import JobContext
from fiefdom.storage import Job, JobOptions

# Set by setup(): where naps leave a marker, so that a nap given back at shutdown
# finishes at once when it runs again after a restart.
MARKERS: Path | None = None


class Increment(msgspec.Struct):
    by: int = 1


class GetCount(fiefdom.Request[int]):
    pass


class Crash(fiefdom.Request[None]):
    pass


class Counter(fiefdom.Actor[Increment | GetCount | Crash]):
    def __init__(self) -> None:
        self.count = 0

    async def receive(self, msg: Increment | GetCount | Crash) -> int | None:
        match msg:
            case Increment(by=by):
                self.count += by
            case GetCount():
                return self.count
            case Crash():
                raise RuntimeError("asked to crash")
        return None


class Deposit(msgspec.Struct):
    amount: int


class Balance(fiefdom.Request[int]):
    pass


class Account(fiefdom.Actor[Deposit | Balance | Crash]):
    def __init__(self, key: str) -> None:
        self.total = 0

    async def receive(self, msg: Deposit | Balance | Crash) -> int | None:
        match msg:
            case Deposit(amount=n):
                self.total += n
            case Balance():
                return self.total
            case Crash():
                raise RuntimeError("asked to crash")
        return None


class Echo(fiefdom.Request[dict[str, Any]]):
    payload: dict[str, Any] = msgspec.field(default_factory=dict)


class Echoer(fiefdom.Actor[Echo]):
    async def receive(self, msg: Echo) -> dict[str, Any]:
        return msg.payload


class Nap(Job):
    """Sleeps ``seconds`` on its first run, and returns at once on any later run."""

    options = JobOptions(kind="nap", max_attempts=3)
    seconds: float = 0.0


class Fail(Job):
    """Always fails: ends discarded after its attempts."""

    options = JobOptions(kind="fail", max_attempts=1)
    reason: str = "asked to fail"


async def run_nap(job: Nap, ctx: JobContext[Any]) -> None:
    assert MARKERS is not None
    marker = MARKERS / f"nap-{ctx.id}"
    if marker.exists():
        return
    marker.touch()
    await anyio.sleep(job.seconds)


async def run_fail(job: Fail, ctx: JobContext[Any]) -> None:
    raise RuntimeError(job.reason)


async def setup(daemon: Any) -> None:
    global MARKERS
    MARKERS = daemon.data_dir / "markers"
    MARKERS.mkdir(exist_ok=True)
    daemon.jobs.register(Nap, run_nap)
    daemon.jobs.register(Fail, run_fail)
    counter = await daemon.system.spawn(Counter, name="counter")
    daemon.expose("counter", counter, [Increment, GetCount, Crash])
    accounts = daemon.system.domain("accounts", Account, idle_timeout=60.0)
    daemon.expose("accounts", accounts, [Deposit, Balance, Crash])
    echo = await daemon.system.spawn(Echoer, name="echo")
    daemon.expose("echo", echo, [Echo])
    # A second counter, for tests that stop an actor for good.
    scratch = await daemon.system.spawn(Counter, name="scratch")
    daemon.expose("scratch", scratch, [Increment, GetCount])
