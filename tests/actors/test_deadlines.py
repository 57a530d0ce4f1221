"""Deadlines and cancellation by ownership (DESIGN rule 3, GUARANTEES 000/1a, 002/4 L-3):
a queued ask past its deadline never runs, a running one is cancelled, a cancelled
caller cancels its handler, and the actor takes no next message until it has returned."""

from __future__ import annotations

import contextlib
import threading

import anyio
import pytest

import fiefdom


class Block(fiefdom.Request[str]):
    """Runs until cancelled; on cancellation waits for ``cleanup`` (shielded) first."""

    tag: str
    cleanup: bool = False


class Echo(fiefdom.Request[str]):
    tag: str


class InThread(fiefdom.Request[str]):
    """Blocks a worker thread until the test releases it (ignores cancellation)."""


class Shielded(fiefdom.Request[str]):
    """Waits in a shielded scope: its cancellation is ignored until released."""


class Probe(fiefdom.Actor[Block | Echo | InThread | Shielded]):
    """Records every handler start, end and cancellation in a shared log."""

    def __init__(self, world: World) -> None:
        self.world = world

    async def receive(self, msg: Block | Echo | InThread | Shielded) -> str:
        world = self.world
        match msg:
            case Block(tag=tag, cleanup=cleanup):
                world.log.append(f"start {tag}")
                world.started.set()
                try:
                    await anyio.sleep_forever()
                except anyio.get_cancelled_exc_class():
                    world.log.append(f"cancelled {tag}")
                    if cleanup:
                        with anyio.CancelScope(shield=True):
                            world.in_cleanup.set()
                            await world.release.wait()
                    world.log.append(f"end {tag}")
                    raise
                raise AssertionError("unreachable")
            case Echo(tag=tag):
                world.log.append(f"echo {tag}")
                return tag
            case InThread():
                world.log.append("thread start")
                world.started.set()
                await anyio.to_thread.run_sync(world.thread_release.wait)
                world.log.append("thread end")
                return "thread"
            case Shielded():
                world.log.append("shielded start")
                world.started.set()
                with anyio.CancelScope(shield=True):
                    await world.release.wait()
                world.log.append("shielded end")
                return "shielded"
        raise AssertionError(msg)


class World:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.started = anyio.Event()
        self.in_cleanup = anyio.Event()
        self.release = anyio.Event()
        self.thread_release = threading.Event()


async def wait_until(predicate: object, timeout: float = 10.0) -> None:
    """Poll a condition (never a fixed sleep): fail loudly if it does not come true."""
    assert callable(predicate)
    with anyio.fail_after(timeout):
        # Statistics are computed on demand: there is no event to wait on.
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.005)


# A hang guard, never a speed requirement.
GUARD = 30.0


async def expired_while_running(
    ref: fiefdom.ActorRef[object], world: World, msg: fiefdom.Request[str]
) -> fiefdom.AskTimeout:
    """Ask ``msg`` with a 50 ms deadline, again until its handler has started before
    that deadline, and return that ask's AskTimeout.

    The deadline starts as the ask is queued, and the idle actor takes it on its next
    turn: an event loop held up past the deadline in between (a loaded machine, a
    garbage collection) has it removed unrun as a queued timeout (rule 3), which is not
    the case under test. Such an attempt must have run nothing."""
    with anyio.fail_after(GUARD):
        while True:
            with pytest.raises(fiefdom.AskTimeout) as info:
                await ref.ask(msg, timeout=0.05)
            if world.started.is_set():
                return info.value
            assert info.value.phase == "queued"
            assert world.log == []


async def test_queued_expiry_never_runs() -> None:
    """An ask whose deadline passes while queued is removed and never runs (rule 3)."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Probe(world), name="p")
        async with anyio.create_task_group() as tg:
            tg.start_soon(_ask_quietly, ref, Block("first"))
            await world.started.wait()
            with pytest.raises(fiefdom.AskTimeout) as info:
                await ref.ask(Echo("never"), timeout=0.05)
            assert info.value.phase == "queued"
            assert ref.statistics().mailbox_depth == 0
            tg.cancel_scope.cancel()
        assert await ref.ask(Echo("later")) == "later"
    assert "echo never" not in world.log
    assert world.log == ["start first", "cancelled first", "end first", "echo later"]


async def _ask_quietly(ref: fiefdom.ActorRef[object], msg: fiefdom.Request[str]) -> None:
    with contextlib.suppress(fiefdom.AskTimeout):
        await ref.ask(msg, timeout=None)


async def test_running_expiry_cancels_the_handler() -> None:
    """An ask whose deadline passes while it runs cancels its handler: AskTimeout(running)."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Probe(world), name="p")
        error = await expired_while_running(ref, world, Block("slow"))
        assert error.phase == "running"
        assert error.handler_exited
        assert isinstance(error, TimeoutError)
        assert world.log == ["start slow", "cancelled slow", "end slow"]
        assert ref.statistics().stuck is False


async def test_caller_cancellation_cancels_the_handler() -> None:
    """A caller that is itself cancelled cancels the handler it is waiting on (rule 3)."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Probe(world), name="p")
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_ask_quietly, ref, Block("waited-on"))
                await world.started.wait()
                scope.cancel()
        assert scope.cancelled_caught
        await wait_until(lambda: "end waited-on" in world.log)
        assert await ref.ask(Echo("next")) == "next"
    assert world.log == ["start waited-on", "cancelled waited-on", "end waited-on", "echo next"]


async def test_no_next_message_until_the_cancelled_handler_returned() -> None:
    """After a deadline cancels a handler, the next message waits until it has returned."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Probe(world), name="p")
        async with anyio.create_task_group() as tg:
            outcome: list[BaseException] = []

            async def slow() -> None:
                outcome.append(await expired_while_running(ref, world, Block("slow", cleanup=True)))

            tg.start_soon(slow)
            await world.started.wait()
            replies: list[str] = []

            async def echo() -> None:
                replies.append(await ref.ask(Echo("second"), timeout=None))

            tg.start_soon(echo)
            await world.in_cleanup.wait()  # the deadline passed; the handler is still cleaning up
            await anyio.wait_all_tasks_blocked()
            assert "echo second" not in world.log
            assert outcome == []  # the caller hears of it only once the handler has returned
            world.release.set()
        assert replies == ["second"]
        assert isinstance(outcome[0], fiefdom.AskTimeout)
        assert outcome[0].phase == "running"
        assert outcome[0].handler_exited
    assert world.log == ["start slow", "cancelled slow", "end slow", "echo second"]


@pytest.mark.parametrize("kind", ["thread", "shielded"])
async def test_a_handler_ignoring_cancellation_is_reported_stuck(kind: str) -> None:
    """A handler that ignores its cancellation (a thread, a shield) shows stuck=True after
    the grace period, and the ask still ends with handler_exited=False (002/4 L-3)."""
    world = World()
    msg: fiefdom.Request[str] = InThread() if kind == "thread" else Shielded()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Probe(world), name="p", cancel_grace=0.05)
        try:
            error = await expired_while_running(ref, world, msg)
            assert error.phase == "running"
            assert error.handler_exited is False
            await wait_until(lambda: ref.statistics().stuck)
            stats = ref.statistics()
            assert stats.current_message == type(msg).__name__
            assert stats.state == fiefdom.ActorState.RUNNING
        finally:
            world.thread_release.set()
            world.release.set()
        # Never abandoned: once it returns, the actor goes on and is no longer stuck.
        assert await ref.ask(Echo("after")) == "after"
        assert ref.statistics().stuck is False
    assert world.log[-1] == "echo after"


async def test_shutdown_cancellation_fails_the_running_ask() -> None:
    """A handler cancelled at its actor's shutdown deadline ends its ask with ActorStopped
    (never a caller waiting forever)."""
    world = World()
    outcome: list[BaseException] = []

    async def asker(ref: fiefdom.ActorRef[object]) -> None:
        try:
            await ref.ask(Block("forever"), timeout=None)
        except fiefdom.FiefdomError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        async with fiefdom.ActorSystem(name="t") as system:
            ref = await system.spawn(lambda: Probe(world), name="p", shutdown=0.05)
            tg.start_soon(asker, ref)
            await world.started.wait()
        with anyio.fail_after(10):
            await wait_until(lambda: bool(outcome))
    assert isinstance(outcome[0], fiefdom.ActorStopped)
    assert world.log == ["start forever", "cancelled forever", "end forever"]


async def test_zero_and_negative_timeouts_are_queued_timeouts() -> None:
    """An ask with a deadline already passed never runs."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Probe(world), name="p")
        for timeout in (0.0, -1.0):
            with pytest.raises(fiefdom.AskTimeout) as info:
                await ref.ask(Echo("late"), timeout=timeout)
            assert info.value.phase == "queued"
        assert await ref.ask(Echo("ok")) == "ok"
    assert world.log == ["echo ok"]


class SlowRestart(fiefdom.Actor[Echo]):
    """Its second start waits for the test's gate."""

    def __init__(self, world: World) -> None:
        self.world = world

    async def on_start(self) -> None:
        self.world.log.append("start")
        if self.world.log.count("start") > 1:
            await self.world.release.wait()

    async def receive(self, msg: Echo) -> str:
        return msg.tag


async def test_an_ask_taken_by_no_incarnation_still_ends_at_its_deadline() -> None:
    """An ask sent to an idle actor that stops before taking it (here: a restart whose
    on_start is slow) still ends at its deadline, as a queued timeout."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: SlowRestart(world), name="s")
        cell = ref._cell()  # type: ignore[attr-defined]
        # What ref.ask does before it waits, then the stop, with no await in between:
        # the actor cannot have run, so the ask is queued and untaken when it stops.
        ask = cell.new_ask(Echo("x"), 0.05)
        assert cell.queue_ask(ask)
        assert cell.mailbox.depth == 1
        cell.request_stop("restart")  # what a supervisor does to restart an actor
        try:
            with anyio.fail_after(10), pytest.raises(fiefdom.AskTimeout) as info:
                await ask.future
            assert info.value.phase == "queued"
        finally:
            world.release.set()
        assert await ref.ask(Echo("after")) == "after"


class CleansUpSlowly(fiefdom.Actor[Block]):
    """A handler whose cleanup after cancellation takes a while (a process reaped)."""

    def __init__(self, log: list[str], entered: anyio.Event) -> None:
        self.log = log
        self.entered = entered

    async def receive(self, msg: Block) -> None:
        self.log.append("enter")
        self.entered.set()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.2)  # the cleanup itself, not a wait in the test
            self.log.append("exit")


async def test_a_cancelled_caller_goes_on_only_after_the_handler_returned() -> None:
    """000/1a: a caller cancelled while its handler runs resumes only once that handler
    has returned, so it can never hand the resource on while the work still runs."""
    log: list[str] = []
    entered = anyio.Event()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: CleansUpSlowly(log, entered), name="slow")
        async with anyio.create_task_group() as tg:
            tg.start_soon(ref.ask, Block("x"))
            await entered.wait()
            tg.cancel_scope.cancel()
        assert log == ["enter", "exit"]
