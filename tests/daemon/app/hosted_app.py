"""A user module the test daemons host: a counter actor, a domain of accounts and a
job kind, registered through the setup hook as a real deployment would."""

from __future__ import annotations

from typing import Any

import msgspec

import fiefdom


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


class Account(fiefdom.Actor[Deposit | Balance]):
    def __init__(self, key: str) -> None:
        self.total = 0

    async def receive(self, msg: Deposit | Balance) -> int | None:
        match msg:
            case Deposit(amount=n):
                self.total += n
            case Balance():
                return self.total
        return None


class Echo(fiefdom.Request[dict[str, Any]]):
    payload: dict[str, Any] = msgspec.field(default_factory=dict)


class Echoer(fiefdom.Actor[Echo]):
    async def receive(self, msg: Echo) -> dict[str, Any]:
        return msg.payload


async def setup(daemon: Any) -> None:
    counter = await daemon.system.spawn(Counter, name="counter")
    daemon.expose("counter", counter, [Increment, GetCount, Crash])
    accounts = daemon.system.domain("accounts", Account, idle_timeout=60.0)
    daemon.expose("accounts", accounts, [Deposit, Balance])
    echo = await daemon.system.spawn(Echoer, name="echo")
    daemon.expose("echo", echo, [Echo])
