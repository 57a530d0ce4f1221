"""Domains, one actor per resource id (DESIGN rule 2, GUARANTEES 000/1a, 000/3a, 002/4 M-4):
a crash stays inside its key, activation waits at the cap, a passivating key's next
activation waits for the old one to stop, and idle actors are passivated (LRU first)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import msgspec
import pytest

import fiefdom


class Add(msgspec.Struct):
    n: int


class Total(fiefdom.Request[int]):
    pass


class Crash(fiefdom.Request[int]):
    pass


class Hold(fiefdom.Request[str]):
    """Blocks until the world's gate for this key opens."""


Msg = Add | Total | Crash | Hold


class World:
    """Shared instrumentation: lifecycle events per key, and gates to block handlers."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.live: Counter[str] = Counter()
        self.max_live = 0
        self.gates: dict[str, anyio.Event] = {}
        self.entered: dict[str, anyio.Event] = {}
        self.stop_gate: anyio.Event | None = None
        self.stopping = anyio.Event()
        self.fail_start: set[str] = set()

    def gate(self, key: str) -> anyio.Event:
        return self.gates.setdefault(key, anyio.Event())

    def entered_event(self, key: str) -> anyio.Event:
        return self.entered.setdefault(key, anyio.Event())


class Account(fiefdom.Actor[Msg]):
    def __init__(self, key: str, world: World) -> None:
        self.key = key
        self.world = world
        self.total = 0

    async def on_start(self) -> None:
        world = self.world
        if self.key in world.fail_start:
            raise RuntimeError(f"cannot open {self.key}")
        world.events.append(("start", self.key))
        world.live[self.key] += 1
        world.max_live = max(world.max_live, sum(world.live.values()))
        assert world.live[self.key] == 1

    async def on_stop(self) -> None:
        world = self.world
        world.events.append(("stop-begin", self.key))
        if world.stop_gate is not None:
            world.stopping.set()
            await world.stop_gate.wait()
        world.live[self.key] -= 1
        world.events.append(("stop", self.key))

    async def receive(self, msg: Msg) -> object:
        match msg:
            case Add(n=n):
                self.total += n
            case Total():
                return self.total
            case Crash():
                raise ZeroDivisionError(f"crash in {self.key}")
            case Hold():
                self.world.entered_event(self.key).set()
                await self.world.gate(self.key).wait()
                return self.key
        return None


def make(world: World) -> Any:
    return lambda key: Account(key, world)


async def test_crash_fails_only_that_ask_and_the_next_message_reactivates() -> None:
    """A crash in one key fails that ask with the error; other keys keep their state, and
    the next message for the crashed key reactivates it (002/4 M-4)."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        accounts = system.domain("acc", make(world))
        await accounts.tell("a", Add(5))
        await accounts.tell("b", Add(7))
        assert await accounts.ask("a", Total()) == 5
        with pytest.raises(ZeroDivisionError, match="crash in a"):
            await accounts.ask("a", Crash())
        assert await accounts.ask("b", Total()) == 7  # untouched
        assert await accounts.ask("a", Total()) == 0  # a fresh activation
        stats = accounts.statistics()
        assert stats.crashes == 1
        assert stats.activations == 3
        assert system.statistics().restarts == 0  # the domain itself did not restart
    assert world.events.count(("start", "a")) == 2
    assert world.events.count(("start", "b")) == 1


async def test_crash_restarts_in_place_when_messages_are_waiting() -> None:
    """Messages queued behind a crashing one are handled by a fresh instance, in order."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        accounts = system.domain("acc", make(world))
        async with anyio.create_task_group() as tg:
            tg.start_soon(accounts.ask, "a", Hold())
            await world.entered_event("a").wait()
            results: list[object] = []

            async def crash() -> None:
                try:
                    await accounts.ask("a", Crash())
                except ZeroDivisionError as exc:
                    results.append(type(exc))

            tg.start_soon(crash)
            await anyio.wait_all_tasks_blocked()
            await accounts.tell("a", Add(3))
            world.gate("a").set()
        assert results == [ZeroDivisionError]
        assert await accounts.ask("a", Total()) == 3
        assert accounts.key_statistics("a").restarts == 1  # type: ignore[union-attr]


async def test_activation_waits_at_the_cap() -> None:
    """With every live actor busy at max_active, a new key's activation waits (the cap is
    never exceeded) and starts once a slot frees (000/3a)."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        accounts = system.domain("acc", make(world), max_active=2)
        async with anyio.create_task_group() as tg:
            for key in ("a", "b"):
                tg.start_soon(accounts.ask, key, Hold())
                await world.entered_event(key).wait()
            replies: list[int] = []

            async def third() -> None:
                replies.append(await accounts.ask("c", Total()))

            tg.start_soon(third)
            await anyio.wait_all_tasks_blocked()
            stats = accounts.statistics()
            assert (stats.live, stats.waiting, stats.idle) == (2, 1, 0)
            assert ("start", "c") not in world.events
            world.gate("a").set()  # a goes idle and is evicted for c
            with anyio.fail_after(10):
                await _wait_started(world, "c")
            assert accounts.statistics().live == 2
            world.gate("b").set()
        assert replies == [0]
        assert world.max_live == 2
        assert world.events.index(("stop", "a")) < world.events.index(("start", "c"))


async def test_senders_wait_when_as_many_activations_wait_as_the_cap() -> None:
    """With max_active actors live and as many activations waiting for a slot, a message
    for yet another key waits (back-pressure), so memory stays bounded however many keys
    are touched (000/3a); tell_nowait raises MailboxFull instead."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        accounts = system.domain("acc", make(world), max_active=1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(accounts.ask, "a", Hold())
            await world.entered_event("a").wait()
            await accounts.tell("b", Add(1))  # an activation waiting for a's slot
            sent = anyio.Event()

            async def tell_c() -> None:
                await accounts.tell("c", Add(1))
                sent.set()

            tg.start_soon(tell_c)
            await anyio.wait_all_tasks_blocked()
            assert not sent.is_set()
            stats = accounts.statistics()
            assert (stats.live, stats.waiting) == (1, 1)
            with pytest.raises(fiefdom.MailboxFull):
                accounts.tell_nowait("d", Add(1))
            accounts.tell_nowait("b", Add(1))  # a key with an activation takes messages
            world.gate("a").set()
            await sent.wait()
        assert await accounts.ask("c", Total()) == 1
    assert world.events.index(("start", "b")) < world.events.index(("start", "c"))
    assert world.max_live == 1


async def test_eviction_takes_the_least_recently_used_idle_actor() -> None:
    """Past max_active the least recently used idle actor is passivated first."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        accounts = system.domain("acc", make(world), max_active=2)
        await accounts.tell("a", Add(1))
        assert await accounts.ask("a", Total()) == 1
        assert await accounts.ask("b", Total()) == 0
        assert await accounts.ask("a", Total()) == 1  # a is now more recently used than b
        assert await accounts.ask("c", Total()) == 0
        assert accounts.is_active("a")
        assert not accounts.is_active("b")
        assert accounts.statistics().passivations == 1
    assert world.max_live == 2


async def test_a_message_for_a_passivating_key_waits_for_the_old_activation() -> None:
    """A message for a key whose actor is passivating goes to a new activation that starts
    only after the old one has stopped: never two activations (000/1a)."""
    world = World()
    world.stop_gate = anyio.Event()
    async with fiefdom.ActorSystem(name="t") as system:
        accounts = system.domain("acc", make(world))
        await accounts.tell("a", Add(4))
        async with anyio.create_task_group() as tg:
            tg.start_soon(accounts.passivate, "a")
            await world.stopping.wait()  # the old activation is in on_stop
            replies: list[int] = []

            async def ask() -> None:
                replies.append(await accounts.ask("a", Total()))

            tg.start_soon(ask)
            await anyio.wait_all_tasks_blocked()
            assert world.events == [("start", "a"), ("stop-begin", "a")]
            assert accounts.statistics().live == 1
            world.stop_gate.set()
        assert replies == [0]
    assert world.events[:4] == [("start", "a"), ("stop-begin", "a"), ("stop", "a"), ("start", "a")]


async def test_idle_actors_are_passivated_after_the_idle_timeout() -> None:
    """An actor idle for idle_timeout is passivated; its next message reactivates it."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        accounts = system.domain("acc", make(world), idle_timeout=0.05)
        await accounts.tell("a", Add(2))
        assert await accounts.ask("a", Total()) == 2
        with anyio.fail_after(10):
            await _wait_stopped(world, "a")
        assert not accounts.is_active("a")
        assert accounts.statistics().live == 0
        assert await accounts.ask("a", Total()) == 0
    assert world.events.count(("start", "a")) == 2


async def _wait_started(world: World, key: str) -> None:
    # Lifecycle events are appended by the actor; polling them is waiting on a condition.
    while ("start", key) not in world.events:  # noqa: ASYNC110
        await anyio.sleep(0.01)


async def _wait_stopped(world: World, key: str) -> None:
    # Lifecycle events are appended by the actor; polling them is waiting on a condition.
    while ("stop", key) not in world.events:  # noqa: ASYNC110
        await anyio.sleep(0.01)


async def test_crash_while_passivating_keeps_the_queued_messages() -> None:
    """A crash while a key drains for passivation fails only that message: the ones queued
    behind it still run (they were sent before the passivation began)."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        accounts = system.domain("acc", make(world))
        outcomes: list[object] = []

        async def ask(msg: fiefdom.Request[Any]) -> None:
            try:
                outcomes.append(await accounts.ask("a", msg))
            except Exception as exc:
                outcomes.append(type(exc))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, Hold())
            await world.entered_event("a").wait()
            tg.start_soon(ask, Crash())
            await anyio.wait_all_tasks_blocked()
            await accounts.tell("a", Add(9))
            tg.start_soon(ask, Total())
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(accounts.passivate, "a")
            await anyio.wait_all_tasks_blocked()
            world.gate("a").set()
        assert outcomes == ["a", ZeroDivisionError, 9]


async def test_a_sender_waiting_on_a_passivated_key_goes_to_its_next_activation() -> None:
    """A tell waiting for space when its key is passivated is delivered to the key's next
    activation, never lost and never an ActorStopped while the domain runs."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        accounts = system.domain("acc", make(world), mailbox_capacity=1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(accounts.ask, "a", Hold())
            await world.entered_event("a").wait()
            await accounts.tell("a", Add(1))  # fills the mailbox
            tg.start_soon(accounts.tell, "a", Add(10))  # waits for space
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(accounts.passivate, "a")
            await anyio.wait_all_tasks_blocked()
            world.gate("a").set()
        assert await accounts.ask("a", Total()) == 10
    assert world.events.count(("start", "a")) == 2


async def test_activation_failure_fails_queued_asks_and_leaves_the_key_usable() -> None:
    """An actor whose on_start raises fails the queued asks with ActivationFailed naming the
    cause; other keys are untouched and the key is tried again on its next message."""
    world = World()
    world.fail_start.add("bad")
    async with fiefdom.ActorSystem(name="t") as system:
        accounts = system.domain("acc", make(world))
        with pytest.raises(fiefdom.ActivationFailed) as info:
            await accounts.ask("bad", Total())
        assert isinstance(info.value.__cause__, RuntimeError)
        assert await accounts.ask("good", Total()) == 0
        world.fail_start.clear()
        assert await accounts.ask("bad", Total()) == 0


async def test_domain_statistics_and_key_refs() -> None:
    """domain.statistics() and ref(key) report the live actors; a key ref routes each message
    to the key's current activation."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        accounts = system.domain("acc", make(world), max_active=5, idle_timeout=30)
        ref = accounts.ref("a")
        assert ref.path == "t/acc/a"
        await ref.tell(Add(1))
        assert await ref.ask(Total()) == 1
        assert ref.statistics().key == "a"
        await ref.stop()
        with pytest.raises(LookupError):
            ref.statistics()
        assert await ref.ask(Total()) == 0  # reactivated
        stats = accounts.statistics()
        assert (stats.path, stats.live, stats.idle, stats.waiting) == ("t/acc", 1, 1, 0)
        assert (stats.max_active, stats.idle_timeout) == (5, 30)
        assert (stats.activations, stats.passivations, stats.crashes) == (2, 1, 0)
        assert ref == accounts.ref("a")
        assert len({ref, accounts.ref("a"), accounts.ref("b")}) == 2


async def test_a_domain_is_bounded_by_default_and_unbounded_only_by_choice() -> None:
    """000/3a: a domain created without max_active is capped at DEFAULT_MAX_ACTIVE (a finite
    number, the same for DomainSpec); max_active=None is still accepted, meaning no cap."""
    world = World()
    assert isinstance(fiefdom.actors.DEFAULT_MAX_ACTIVE, int)
    assert fiefdom.actors.DEFAULT_MAX_ACTIVE == 100_000
    assert fiefdom.DomainSpec("d", make(world)).max_active == fiefdom.actors.DEFAULT_MAX_ACTIVE
    async with fiefdom.ActorSystem(name="t") as system:
        bounded = system.domain("bounded", make(world))
        unbounded = system.domain("unbounded", make(World()), max_active=None)
        await bounded.tell("a", Add(1))
        await unbounded.tell("a", Add(1))
        assert await unbounded.ask("a", Total()) == 1
        assert bounded.statistics().max_active == fiefdom.actors.DEFAULT_MAX_ACTIVE
        assert unbounded.statistics().max_active is None


async def test_messages_after_the_system_stopped_raise_actor_stopped() -> None:
    """A domain whose system has stopped refuses messages with ActorStopped."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        accounts = system.domain("acc", make(world))
        await accounts.tell("a", Add(1))
    with pytest.raises(fiefdom.ActorStopped):
        await accounts.tell("a", Add(1))
    with pytest.raises(fiefdom.ActorStopped):
        await accounts.ask("b", Total())
    assert world.events == [("start", "a"), ("stop-begin", "a"), ("stop", "a")]
