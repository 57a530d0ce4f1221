"""Type checked by ``mypy --strict`` from tests/test_typing.py, never run: ``ask`` returns
the reply type of its ``Request[R]``, and wrong messages are rejected. Each
``type: ignore`` marks an error mypy must report (strict mode flags an unused one)."""

from __future__ import annotations

from typing import assert_type

import msgspec

import fiefdom


class Deposit(msgspec.Struct):
    amount: int


class Balance(fiefdom.Request[int]):
    pass


class History(fiefdom.Request[list[int]]):
    pass


class Unrelated(msgspec.Struct):
    pass


Msg = Deposit | Balance | History


class Account(fiefdom.Actor[Msg]):
    def __init__(self, key: str) -> None:
        self.total = 0

    async def receive(self, msg: Msg) -> object:
        return None


class Counter(fiefdom.Actor[Deposit | Balance]):
    async def receive(self, msg: Deposit | Balance) -> int:
        return 0


async def check(system: fiefdom.ActorSystem) -> None:
    accounts = system.domain("accounts", Account)
    assert_type(accounts, fiefdom.Domain[str, Msg])
    assert_type(await accounts.ask("alice", Balance()), int)
    assert_type(await accounts.ask("alice", History()), list[int])
    await accounts.tell("alice", Deposit(10))

    ref = await system.spawn(Counter, name="counter")
    assert_type(ref, fiefdom.ActorRef[Deposit | Balance])
    assert_type(await ref.ask(Balance()), int)
    await ref.tell(Deposit(1))
    ref.tell_nowait(Deposit(1))

    # Rejected: a message of the wrong type, a message with no reply type, a reply
    # used as the wrong type, a key of the wrong type.
    await ref.tell(Unrelated())  # type: ignore[arg-type]
    ref.tell_nowait(Balance)  # type: ignore[arg-type]
    await ref.ask(Deposit(1))  # type: ignore[arg-type]
    text: str = await ref.ask(Balance())  # type: ignore[arg-type]
    await accounts.tell(42, Deposit(1))  # type: ignore[arg-type]
    await accounts.tell("alice", Unrelated())  # type: ignore[arg-type]
    del text
