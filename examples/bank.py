"""The bank from the design sketch: one Account actor per account id."""

from __future__ import annotations

import anyio
import msgspec

import fiefdom


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


async def main() -> dict[str, int]:
    async with fiefdom.ActorSystem(name="bank") as system:
        accounts = system.domain("accounts", Account, idle_timeout=60.0, max_active=10_000)
        await accounts.tell("alice", Deposit(10))
        await accounts.tell("bob", Deposit(5))
        await accounts.tell("alice", Deposit(32))
        balances = {
            name: await accounts.ask(name, Balance(), timeout=1.0) for name in ("alice", "bob")
        }
        assert balances["alice"] == 42
        return balances


if __name__ == "__main__":
    for name, total in anyio.run(main).items():
        print(f"{name}: {total}")
