"""Asks queued behind a busy actor keep their deadlines (DESIGN rule 3) with no timer of
their own: the cell's one deadline timer removes each at its deadline, whatever the
order of the deadlines, and leaves alone those still to come."""

from __future__ import annotations

import anyio

import fiefdom


class Block(fiefdom.Request[str]):
    """Runs until cancelled."""


class Echo(fiefdom.Request[str]):
    tag: str


class Busy(fiefdom.Actor[Block | Echo]):
    def __init__(self, log: list[str], started: anyio.Event) -> None:
        self.log = log
        self.started = started

    async def receive(self, msg: Block | Echo) -> str:
        if isinstance(msg, Block):
            self.started.set()
            await anyio.sleep_forever()
        assert isinstance(msg, Echo)
        self.log.append(msg.tag)
        return msg.tag


async def test_asks_queued_behind_a_busy_actor_expire_each_at_its_deadline() -> None:
    """Behind a handler that runs with no deadline, asks queued with deadlines out of
    order (and the earliest sent last) are each removed unrun as a queued timeout; one
    with a later deadline stays queued, and runs once the actor is free."""
    log: list[str] = []
    started = anyio.Event()
    outcomes: dict[str, str] = {}
    four_expired = anyio.Event()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Busy(log, started), name="busy")
        blocking = anyio.CancelScope()

        async def block() -> None:
            with blocking:
                await ref.ask(Block(), timeout=None)

        async def ask(tag: str, timeout: float) -> None:
            try:
                outcomes[tag] = await ref.ask(Echo(tag), timeout=timeout)
            except fiefdom.AskTimeout as exc:
                outcomes[tag] = exc.phase
                if len(outcomes) == 4:
                    four_expired.set()

        with anyio.fail_after(30):  # a hang guard, not a speed requirement
            async with anyio.create_task_group() as tg:
                tg.start_soon(block)
                await started.wait()
                tg.start_soon(ask, "later", 60.0)
                for tag, timeout in (("c", 0.3), ("a", 0.1), ("b", 0.2), ("first", 0.05)):
                    tg.start_soon(ask, tag, timeout)
                await four_expired.wait()
                assert outcomes == {"a": "queued", "b": "queued", "c": "queued", "first": "queued"}
                assert ref.statistics().mailbox_depth == 1  # "later", still queued
                blocking.cancel()
    assert outcomes["later"] == "later"
    assert log == ["later"]
