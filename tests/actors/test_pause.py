"""Pausing and resuming actors and domains: a paused actor finishes its current
message and takes no next one, its mailbox keeps accepting until full, queued asks
keep their deadlines, and a stop drains it instead of waiting for a resume."""

from __future__ import annotations

import anyio
import msgspec
import pytest

import fiefdom


class Note(msgspec.Struct):
    text: str


class Mark(fiefdom.Request[None]):
    text: str


class Hold(fiefdom.Request[str]):
    pass


class Get(fiefdom.Request[list[str]]):
    pass


Msg = Note | Mark | Hold | Get


class Log(fiefdom.Actor[Msg]):
    """Appends what it is told to a list that outlives it; Hold waits on a gate."""

    def __init__(self, seen: list[str], entered: anyio.Event, opened: anyio.Event) -> None:
        self.seen = seen
        self.entered = entered
        self.opened = opened

    async def receive(self, msg: Msg) -> object:
        match msg:
            case Note(text=text) | Mark(text=text):
                self.seen.append(text)
            case Hold():
                self.entered.set()
                await self.opened.wait()
                return "held"
            case Get():
                return list(self.seen)
        return None


class Fixture:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.entered = anyio.Event()
        self.opened = anyio.Event()

    def make(self, key: object = None) -> Log:
        return Log(self.seen, self.entered, self.opened)


async def test_paused_actor_finishes_its_message_then_holds_the_next() -> None:
    """The running message completes; later ones wait while paused, then run in order."""
    box = Fixture()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(box.make, name="log")
        async with anyio.create_task_group() as tg:
            replies: list[str] = []

            async def hold() -> None:
                replies.append(await ref.ask(Hold()))

            tg.start_soon(hold)
            await box.entered.wait()
            ref.pause()
            await ref.tell(Note("a"))
            await ref.tell(Note("b"))
            box.opened.set()
        assert replies == ["held"]
        await anyio.wait_all_tasks_blocked()
        assert box.seen == []
        stats = ref.statistics()
        assert stats.paused
        assert stats.mailbox_depth == 2
        assert stats.current_message is None
        ref.resume()
        assert await ref.ask(Get()) == ["a", "b"]
        assert not ref.statistics().paused


async def test_paused_mailbox_accepts_until_full() -> None:
    """A paused actor's mailbox takes messages up to its capacity, then refuses."""
    box = Fixture()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(box.make, name="log", mailbox_capacity=2)
        ref.pause()
        ref.tell_nowait(Note("a"))
        ref.tell_nowait(Note("b"))
        with pytest.raises(fiefdom.MailboxFull):
            ref.tell_nowait(Note("c"))
        ref.resume()
        assert await ref.ask(Get()) == ["a", "b"]


async def test_ask_deadline_passes_while_paused() -> None:
    """An ask whose deadline passes while its actor is paused is removed and never runs."""
    box = Fixture()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(box.make, name="log")
        await anyio.wait_all_tasks_blocked()  # idle in its loop: an ask would start at once
        ref.pause()
        with pytest.raises(fiefdom.AskTimeout) as info:
            await ref.ask(Mark("late"), timeout=0.05)
        assert info.value.phase == "queued"
        assert ref.statistics().mailbox_depth == 0
        ref.resume()
        await ref.tell(Note("after"))
        assert await ref.ask(Get()) == ["after"]


async def test_stop_drains_a_paused_actor() -> None:
    """Stopping a paused actor does not wait for a resume: it handles what is queued."""
    box = Fixture()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(box.make, name="log")
        ref.pause()
        await ref.tell(Note("a"))
        await ref.tell(Note("b"))
        await ref.stop()
        assert box.seen == ["a", "b"]
        with pytest.raises(fiefdom.ActorStopped):
            await ref.tell(Note("c"))


async def test_system_shutdown_with_a_paused_actor() -> None:
    """Leaving the system with a paused actor holding messages returns (it drains)."""
    box = Fixture()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(box.make, name="log")
        ref.pause()
        await ref.tell(Note("a"))
    assert box.seen == ["a"]


async def test_domain_pause_holds_live_and_future_activations() -> None:
    """A paused domain holds its live keys and starts new activations paused."""
    box = Fixture()
    async with fiefdom.ActorSystem(name="t") as system:
        domain = system.domain("d", box.make, idle_timeout=None)
        await domain.tell("live", Note("live-1"))
        assert await domain.ask("live", Get()) == ["live-1"]
        domain.pause()
        assert domain.statistics().paused
        await domain.tell("live", Note("live-2"))
        await domain.tell("new", Note("new-1"))
        with pytest.raises(fiefdom.AskTimeout) as info:
            await domain.ask("new", Mark("late"), timeout=0.05)
        assert info.value.phase == "queued"
        await anyio.wait_all_tasks_blocked()
        assert box.seen == ["live-1"]
        for key in ("live", "new"):
            stats = domain.key_statistics(key)
            assert stats is not None
            assert stats.paused
            assert stats.mailbox_depth == 1
        domain.resume()
        assert not domain.statistics().paused
        await domain.ask("new", Get())
        await domain.ask("live", Get())
        assert sorted(box.seen) == ["live-1", "live-2", "new-1"]


async def test_key_pause_outlives_its_activation() -> None:
    """A paused key that is passivated drains, and its next activation starts paused."""
    box = Fixture()
    async with fiefdom.ActorSystem(name="t") as system:
        domain = system.domain("d", box.make, idle_timeout=None)
        ref = domain.ref("k")
        await ref.tell(Note("a"))
        ref.pause()
        await ref.tell(Note("b"))
        await ref.stop()  # passivates: drains "b" although paused
        assert box.seen == ["a", "b"]
        assert domain.statistics().paused_keys == ("k",)
        await ref.tell(Note("c"))
        await domain.tell("other", Note("x"))
        assert await domain.ask("other", Get()) == ["a", "b", "x"]
        assert ref.statistics().paused
        ref.resume()
        assert await ref.ask(Get()) == ["a", "b", "x", "c"]
        assert domain.statistics().paused_keys == ()


async def test_key_resumed_within_a_paused_domain() -> None:
    """One key can be resumed while the rest of its domain stays paused."""
    box = Fixture()
    async with fiefdom.ActorSystem(name="t") as system:
        domain = system.domain("d", box.make, idle_timeout=None)
        domain.pause()
        domain.ref("free").resume()
        assert domain.statistics().resumed_keys == ("free",)
        await domain.tell("held", Note("held"))
        assert await domain.ask("free", Get()) == []
        assert domain.is_paused("held")
        assert not domain.is_paused("free")
        domain.resume()
        assert await domain.ask("held", Get()) == ["held"]


async def test_paused_idle_key_is_passivated_and_comes_back_paused() -> None:
    """A paused key with nothing queued still passivates when idle; its pause stays."""
    box = Fixture()
    async with fiefdom.ActorSystem(name="t") as system:
        domain = system.domain("d", box.make, idle_timeout=None, max_active=1)
        await domain.ask("a", Get())
        domain.ref("a").pause()
        # A second key needs the only slot: the paused, idle "a" is evicted for it.
        assert await domain.ask("b", Get()) == []
        assert domain.key_statistics("a") is None
        assert domain.is_paused("a")


async def test_a_paused_key_whose_queued_asks_expired_can_be_evicted() -> None:
    """A paused key whose queued ask expired unrun has nothing queued again: it counts
    as idle, so a key needing its slot evicts it (it would otherwise hold the slot)."""
    box = Fixture()
    async with fiefdom.ActorSystem(name="t") as system:
        domain = system.domain("d", box.make, idle_timeout=None, max_active=1)
        await domain.ask("a", Get())
        domain.ref("a").pause()
        with pytest.raises(fiefdom.AskTimeout) as info:
            await domain.ask("a", Note("never"), timeout=0.05)  # type: ignore[arg-type]
        assert info.value.phase == "queued"
        with anyio.fail_after(10):
            assert await domain.ask("b", Get()) == []
        assert domain.key_statistics("a") is None
        assert domain.is_paused("a")
    assert "never" not in box.seen
