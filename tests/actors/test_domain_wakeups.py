"""Wake-ups of a domain's waiting senders and activations that race with the
cancellation of their waiter: the cancelled one gets its cancellation, nothing else."""

from __future__ import annotations

import asyncio

import anyio
import msgspec
import pytest

import fiefdom


class Note(msgspec.Struct):
    pass


class Hold(fiefdom.Request[str]):
    pass


class Gated(fiefdom.Actor[Note | Hold]):
    gate: anyio.Event

    def __init__(self, key: str) -> None:
        self.key = key

    async def receive(self, msg: Note | Hold) -> str | None:
        if type(msg) is Hold:
            await Gated.gate.wait()
            return self.key
        return None


async def test_a_cancelled_sender_popped_by_a_wake_up_gets_its_cancellation() -> None:
    """A sender waiting for room is cancelled, and in the same turn a wake-up pops its
    (already cancelled) future: the sender ends cancelled and later sends still work."""
    Gated.gate = anyio.Event()
    async with fiefdom.ActorSystem(name="t") as system:
        domain = system.domain("keys", Gated, max_active=1, idle_timeout=None)
        busy = asyncio.ensure_future(domain.ask("a", Hold(), timeout=10))
        with anyio.fail_after(10):
            # "a" holds the only slot once its handler runs (no event to wait on).
            while (stats := domain.key_statistics("a")) is None or not stats.current_message:  # noqa: ASYNC110
                await anyio.sleep(0.001)
        await domain.tell("b", Note())  # "b" waits for a slot: max_active activations wait
        sender = asyncio.ensure_future(domain.tell("c", Note()))
        with anyio.fail_after(10):
            while not domain._room:  # noqa: ASYNC110  # the sender queues for room
                await anyio.sleep(0.001)
        assert not sender.done()  # waiting for room
        sender.cancel()  # cancels the future it waits on, at once
        domain._wake_room()  # what a freed slot does before the sender runs
        with pytest.raises(asyncio.CancelledError):
            await sender
        Gated.gate.set()
        assert await busy == "a"
        with anyio.fail_after(10):
            assert await domain.ask("c", Hold(), timeout=10) == "c"
