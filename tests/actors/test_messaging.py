"""Mailboxes and messages: back-pressure, MailboxFull, ActorStopped (never a silent loss),
call cycles failing at once (GUARANTEES 001/7, 004/1), statistics and structured logs."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import msgspec
import pytest
import structlog

import fiefdom


class Note(msgspec.Struct):
    text: str


class Hold(fiefdom.Request[str]):
    """Waits for the gate before replying."""


class Get(fiefdom.Request[list[str]]):
    pass


class Forward(fiefdom.Request[str]):
    """Ask ``target`` for a Forward (or a Get when ``target`` is None) from the handler."""

    hops: list[str]


class Boom(fiefdom.Request[str]):
    pass


class Gate:
    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.opened = anyio.Event()


class Recorder(fiefdom.Actor[Note | Hold | Get | Forward | Boom]):
    """Keeps what it was told; Hold blocks on a gate; Forward asks the next hop."""

    refs: dict[str, fiefdom.ActorRef[Any]] = {}

    def __init__(self, gate: Gate | None = None) -> None:
        self.notes: list[str] = []
        self.gate = gate

    async def receive(self, msg: Note | Hold | Get | Forward | Boom) -> object:
        match msg:
            case Note(text=text):
                self.notes.append(text)
            case Hold():
                assert self.gate is not None
                self.gate.entered.set()
                await self.gate.opened.wait()
                return "held"
            case Get():
                return list(self.notes)
            case Forward(hops=[]):
                return self.context.path
            case Forward(hops=[first, *rest]):
                return await self.refs[first].ask(Forward(rest), timeout=5)
            case Boom():
                raise ValueError("boom")
        return None


async def test_tell_awaits_when_the_mailbox_is_full() -> None:
    """tell waits while the mailbox is at capacity (back-pressure) and goes on once it drains."""
    gate = Gate()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Recorder(gate), name="r", mailbox_capacity=2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(ref.ask, Hold())
            await gate.entered.wait()
            await ref.tell(Note("1"))
            await ref.tell(Note("2"))
            assert ref.statistics().mailbox_depth == 2
            third_sent = anyio.Event()

            async def third() -> None:
                await ref.tell(Note("3"))
                third_sent.set()

            tg.start_soon(third)
            await anyio.wait_all_tasks_blocked()
            assert not third_sent.is_set()  # waiting for space, not dropped, not raised
            gate.opened.set()
            await third_sent.wait()
        assert await ref.ask(Get()) == ["1", "2", "3"]


async def test_tell_nowait_raises_mailbox_full() -> None:
    """tell_nowait on a full mailbox raises MailboxFull (a BufferError) saying what to use."""
    gate = Gate()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Recorder(gate), name="r", mailbox_capacity=1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(ref.ask, Hold())
            await gate.entered.wait()
            ref.tell_nowait(Note("fits"))
            with pytest.raises(fiefdom.MailboxFull) as info:
                ref.tell_nowait(Note("does not fit"))
            assert isinstance(info.value, BufferError)
            assert "await ref.tell" in str(info.value)
            gate.opened.set()
        assert await ref.ask(Get()) == ["fits"]


async def test_asks_wait_for_space_within_their_deadline() -> None:
    """An ask on a full mailbox waits for space; past its deadline it is a queued timeout."""
    gate = Gate()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Recorder(gate), name="r", mailbox_capacity=1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(ref.ask, Hold())
            await gate.entered.wait()
            await ref.tell(Note("fills"))
            with pytest.raises(fiefdom.AskTimeout) as info:
                await ref.ask(Get(), timeout=0.05)
            assert info.value.phase == "queued"
            gate.opened.set()
        assert await ref.ask(Get()) == ["fills"]


async def test_messages_to_a_stopped_actor_raise_actor_stopped() -> None:
    """After ref.stop() returns, tell, tell_nowait and ask raise ActorStopped (never vanish)."""
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(Recorder, name="r")
        await ref.tell(Note("before"))
        await ref.stop()
        assert ref.statistics().state == fiefdom.ActorState.STOPPED
        assert ref.statistics().messages_handled == 1
        with pytest.raises(fiefdom.ActorStopped):
            await ref.tell(Note("after"))
        with pytest.raises(fiefdom.ActorStopped):
            ref.tell_nowait(Note("after"))
        with pytest.raises(fiefdom.ActorStopped):
            await ref.ask(Get())
        assert "r" not in system.root.which_children()
        # The name is free again.
        again = await system.spawn(Recorder, name="r")
        assert await again.ask(Get()) == []


async def test_ref_stop_drains_what_was_queued() -> None:
    """ref.stop() handles what is already in the mailbox before stopping."""
    gate = Gate()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Recorder(gate), name="r")
        async with anyio.create_task_group() as tg:
            replies: list[str] = []

            async def hold() -> None:
                replies.append(await ref.ask(Hold()))

            tg.start_soon(hold)
            await gate.entered.wait()
            await ref.tell(Note("queued"))
            tg.start_soon(ref.stop)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(fiefdom.ActorStopped):
                await ref.tell(Note("refused"))
            gate.opened.set()
        assert replies == ["held"]
        assert ref.statistics().messages_handled == 2


async def test_queued_asks_of_an_actor_that_exits_fail_with_actor_stopped() -> None:
    """A temporary actor that crashes is not restarted: its queued asks fail with ActorStopped."""
    gate = Gate()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(
            lambda: Recorder(gate), name="r", restart=fiefdom.Restart.TEMPORARY
        )
        async with anyio.create_task_group() as tg:
            outcomes: list[object] = []

            async def ask(msg: fiefdom.Request[Any]) -> None:
                try:
                    outcomes.append(await ref.ask(msg))
                except Exception as exc:
                    outcomes.append(type(exc))

            tg.start_soon(ask, Hold())
            await gate.entered.wait()
            tg.start_soon(ask, Boom())
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(ask, Get())
            await anyio.wait_all_tasks_blocked()
            gate.opened.set()
        assert outcomes == ["held", ValueError, fiefdom.ActorStopped]


async def test_call_cycle_fails_at_once_naming_the_cycle() -> None:
    """A asks B asks A fails at once with CallCycleError naming A -> B -> A (001/7, 004/1)."""
    async with fiefdom.ActorSystem(name="t") as system:
        a = await system.spawn(Recorder, name="a")
        b = await system.spawn(Recorder, name="b")
        Recorder.refs = {"a": a, "b": b}
        try:
            with anyio.fail_after(2):  # "at once": far below the 5 s ask deadlines
                with pytest.raises(fiefdom.CallCycleError) as info:
                    await a.ask(Forward(["b", "a"]), timeout=None)
            assert info.value.cycle == ("t/a", "t/b", "t/a")
            assert "t/a -> t/b -> t/a" in str(info.value)
            # Both actors are still usable: the error ended the inner ask, not the actors.
            assert await a.ask(Forward(["b"])) == "t/b"
        finally:
            Recorder.refs = {}


async def test_self_ask_fails_at_once() -> None:
    """An actor asking itself fails at once with CallCycleError (a -> a)."""
    async with fiefdom.ActorSystem(name="t") as system:
        a = await system.spawn(Recorder, name="a")
        Recorder.refs = {"a": a}
        try:
            with anyio.fail_after(2), pytest.raises(fiefdom.CallCycleError) as info:
                await a.ask(Forward(["a"]), timeout=None)
            assert info.value.cycle == ("t/a", "t/a")
        finally:
            Recorder.refs = {}


class Kick(fiefdom.Request[None]):
    key: str


class Hello(fiefdom.Request[str]):
    pass


class Pinger(fiefdom.Actor[Kick | Hello]):
    """Tells a domain key to ask this actor back once the telling handler has returned."""

    domain: fiefdom.Domain[str, Any]
    replies: list[object] = []
    done = anyio.Event()

    async def receive(self, msg: Kick | Hello) -> object:
        match msg:
            case Kick(key=key):
                await self.domain.tell(key, Note(self.context.path))
                return None
            case Hello():
                return "hello"
        return None


class Caller(fiefdom.Actor[Note]):
    def __init__(self, key: str) -> None:
        pass

    async def receive(self, msg: Note) -> None:
        try:
            Pinger.replies.append(await Pinger.target.ask(Hello()))
        except Exception as exc:
            Pinger.replies.append(exc)
        finally:
            Pinger.done.set()


async def test_a_tell_does_not_make_a_call_chain() -> None:
    """An actor activated by a tell from a handler may ask that actor later: no false cycle."""
    Pinger.replies = []
    Pinger.done = anyio.Event()
    async with fiefdom.ActorSystem(name="t") as system:
        Pinger.domain = system.domain("callers", Caller)
        pinger = await system.spawn(Pinger, name="pinger")
        Pinger.target = pinger  # type: ignore[attr-defined]
        await pinger.ask(Kick("k"))
        await Pinger.done.wait()
    assert Pinger.replies == ["hello"]


async def test_statistics_fields() -> None:
    """statistics() reports depth, capacity, handled count, the current message and since
    when, restarts and state."""
    gate = Gate()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Recorder(gate), name="r", mailbox_capacity=7)
        stats = ref.statistics()
        assert (stats.path, stats.key, stats.state) == ("t/r", None, fiefdom.ActorState.RUNNING)
        assert (stats.mailbox_depth, stats.mailbox_capacity) == (0, 7)
        assert (stats.messages_handled, stats.restarts) == (0, 0)
        assert (stats.current_message, stats.current_for, stats.stuck) == (None, None, False)
        await ref.tell(Note("x"))
        with pytest.raises(ValueError, match="boom"):
            await ref.ask(Boom())
        async with anyio.create_task_group() as tg:
            tg.start_soon(ref.ask, Hold())
            await gate.entered.wait()
            await ref.tell(Note("queued"))
            stats = ref.statistics()
            assert stats.current_message == "Hold"
            assert stats.current_for is not None
            assert stats.current_for >= 0
            assert stats.mailbox_depth == 1
            assert stats.restarts == 1  # the Boom crash restarted it
            gate.opened.set()
        assert ref.statistics().messages_handled == 4
        # Statistics are immutable records that encode for the wire.
        assert msgspec.json.decode(msgspec.json.encode(stats))["kind"] == "actor"
        with pytest.raises(AttributeError):
            stats.restarts = 5  # type: ignore[misc]
        tree = system.statistics()
        assert [c.path for c in tree.children] == ["t/r"]


class Talker(fiefdom.Actor[Note | Boom]):
    def __init__(self, key: str = "") -> None:
        pass

    async def receive(self, msg: Note | Boom) -> None:
        if isinstance(msg, Boom):
            raise ValueError("boom")
        self.context.log.info("note", text=msg.text)


async def test_log_events_carry_the_actor_path_and_key() -> None:
    """structlog events from an actor carry its path and, in a domain, its key."""
    with structlog.testing.capture_logs() as logs:
        async with fiefdom.ActorSystem(name="t") as system:
            ref = await system.spawn(Talker, name="solo")
            await ref.tell(Note("plain"))
            domain = system.domain("talkers", Talker)
            await domain.tell("k1", Note("keyed"))
            with pytest.raises(ValueError, match="boom"):
                await domain.ask("k2", Boom())
            await ref.stop()
    notes = [e for e in logs if e["event"] == "note"]
    assert {"actor": "t/solo", "text": "plain"}.items() <= notes[0].items()
    assert "key" not in notes[0]
    assert {"actor": "t/talkers/k1", "key": "k1", "text": "keyed"}.items() <= notes[1].items()
    crash = next(e for e in logs if e["event"] == "actor crashed")
    assert (crash["actor"], crash["key"], crash["log_level"]) == ("t/talkers/k2", "k2", "error")


class PingB(fiefdom.Request[str]):
    pass


class GoB(fiefdom.Request[str]):
    pass


async def test_a_task_started_in_on_start_is_not_part_of_a_call_chain() -> None:
    """DESIGN rule 6 without false alarms: a background task an actor started in
    on_start may ask B while the actor is handling an ask from B (nobody waits on it)."""
    refs: dict[str, fiefdom.ActorRef[Any]] = {}
    answers: list[str] = []
    asked = anyio.Event()

    class B(fiefdom.Actor[PingB | GoB]):
        async def receive(self, msg: PingB | GoB) -> str:
            if isinstance(msg, GoB):
                return await refs["a"].ask(PingB())  # B waits on A
            return "b-pong"

    class A(fiefdom.Actor[PingB]):
        async def on_start(self) -> None:
            self.go = anyio.Event()
            self.helper = asyncio.get_running_loop().create_task(self.background())

        async def background(self) -> None:
            await self.go.wait()
            answers.append(await refs["b"].ask(PingB()))
            asked.set()

        async def receive(self, msg: PingB) -> str:
            self.go.set()
            # While B's ask runs here, the helper's ask must be queued at B (a false
            # cycle error would refuse it instead, and this wait would never end).
            while refs["b"].statistics().mailbox_depth == 0:  # noqa: ASYNC110
                await anyio.sleep(0.001)
            return "a-pong"

        async def on_stop(self) -> None:
            self.helper.cancel()

    async with fiefdom.ActorSystem(name="t") as system:
        refs["a"] = await system.spawn(A, name="a")
        refs["b"] = await system.spawn(B, name="b")
        with anyio.fail_after(10):
            assert await refs["b"].ask(GoB()) == "a-pong"
            await asked.wait()
    assert answers == ["b-pong"]


async def test_a_task_started_inside_a_handler_still_detects_the_cycle() -> None:
    """DESIGN rule 6: a task a handler starts and awaits belongs to the handler's call
    chain, so its ask back to the waiting caller fails at once with CallCycleError."""
    refs: dict[str, fiefdom.ActorRef[Any]] = {}

    class B(fiefdom.Actor[PingB | GoB]):
        async def receive(self, msg: PingB | GoB) -> str:
            if isinstance(msg, GoB):
                return await refs["a"].ask(PingB())
            return "b-pong"

    class A(fiefdom.Actor[PingB]):
        async def receive(self, msg: PingB) -> str:
            async def ask_back() -> str:
                return await refs["b"].ask(PingB())

            task = asyncio.get_running_loop().create_task(ask_back())
            try:
                return await task
            except fiefdom.CallCycleError as exc:
                return " -> ".join(exc.cycle)

    async with fiefdom.ActorSystem(name="t") as system:
        refs["a"] = await system.spawn(A, name="a")
        refs["b"] = await system.spawn(B, name="b")
        with anyio.fail_after(10):
            assert await refs["b"].ask(GoB()) == "t/b -> t/a -> t/b"
