"""``ActorSystem.stop("cancel")``: a stop that does not wait out shutdown deadlines
(the daemon's second signal). Children still stop in reverse order, each through its
own cancel; the deadlines here are an hour, so only the cancel can end these tests
within the per-test timeout."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

import fiefdom
from fiefdom.actors import StopMode

HOUR = 3600.0


class Hang(fiefdom.Request[None]):
    pass


class Hanger(fiefdom.Actor[Hang]):
    """Its handler waits forever; it records that it was cancelled."""

    def __init__(self, log: list[str], name: str, entered: anyio.Event) -> None:
        self.log = log
        self.name = name
        self.entered = entered

    async def receive(self, msg: Hang) -> None:
        self.entered.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.log.append(f"cancelled {self.name}")
            raise


class Service:
    """A service that never stops on request: only its cancel() ends it."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self._scope = anyio.CancelScope()

    async def serve(self, started: Callable[[], None] | None = None) -> None:
        if started is not None:
            started()
        with self._scope:
            await anyio.sleep_forever()

    def request_stop(self, mode: StopMode) -> None:
        self.log.append("service asked to stop")

    def cancel(self) -> None:
        self.log.append("service cancelled")
        self._scope.cancel()

    def close(self, reason: str) -> None:
        pass

    def reset(self) -> None:
        self._scope = anyio.CancelScope()


async def test_cancel_stops_at_once_in_reverse_order() -> None:
    """stop("cancel") cancels running handlers in reverse start order and fails queued
    asks with ActorStopped, without waiting out hour-long shutdown deadlines."""
    log: list[str] = []
    first, second = anyio.Event(), anyio.Event()
    outcomes: list[str] = []

    async def ask_queued(ref: fiefdom.ActorRef[Hang]) -> None:
        try:
            await ref.ask(Hang(), timeout=None)
        except fiefdom.ActorStopped:
            outcomes.append("queued ask stopped")

    async with fiefdom.ActorSystem(name="c") as system:
        a = await system.spawn(lambda: Hanger(log, "a", first), name="a", shutdown=HOUR)
        b = await system.spawn(lambda: Hanger(log, "b", second), name="b", shutdown=HOUR)
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.tell, Hang())
            tg.start_soon(b.tell, Hang())
            await first.wait()
            await second.wait()
            tg.start_soon(ask_queued, b)
            await anyio.wait_all_tasks_blocked()
            await system.stop("cancel")
    assert log == ["cancelled b", "cancelled a"]
    assert outcomes == ["queued ask stopped"]


async def test_cancel_cuts_short_a_stop_under_way_and_reaches_nested_supervisors() -> None:
    """A graceful stop already waiting on a deadline is cut short by stop("cancel"),
    also inside a nested supervisor, and a service is ended through its own cancel()."""
    log: list[str] = []
    entered = anyio.Event()
    spec = fiefdom.SupervisorSpec(
        name="inner",
        children=[
            fiefdom.ServiceSpec("svc", lambda: Service(log), shutdown=HOUR),
            fiefdom.ActorSpec("hanger", lambda: Hanger(log, "inner", entered), shutdown=HOUR),
        ],
        shutdown=HOUR,
    )
    async with fiefdom.ActorSystem(name="c") as system:
        inner = await system.start_supervisor(spec)
        await inner.ref("hanger").tell(Hang())
        await entered.wait()
        async with anyio.create_task_group() as tg:
            tg.start_soon(system.stop)
            await anyio.wait_all_tasks_blocked()
            assert log == []  # the drain is waiting on the hanging handler's deadline
            await system.stop("cancel")
    assert log == ["cancelled inner", "service asked to stop", "service cancelled"]


async def test_leaving_async_with_after_cancel_returns_with_no_task_left() -> None:
    """After request_stop("cancel") (a callback's stop: it does not wait), leaving the
    async with returns and leaves no task running."""
    entered = anyio.Event()
    async with fiefdom.ActorSystem(name="c") as system:
        ref = await system.spawn(lambda: Hanger([], "x", entered), name="x", shutdown=HOUR)
        await ref.tell(Hang())
        await entered.wait()
        system.request_stop("cancel")
    assert system.state is fiefdom.State.STOPPED


class Crash(fiefdom.Request[None]):
    pass


class HangsOnRestart(fiefdom.Actor[Crash]):
    """Starts fine the first time; every later on_start hangs."""

    def __init__(self, starts: list[int], hanging: anyio.Event) -> None:
        self.starts = starts
        self.hanging = hanging

    async def on_start(self) -> None:
        self.starts.append(1)
        if len(self.starts) > 1:
            self.hanging.set()
            await anyio.sleep_forever()

    async def receive(self, msg: Crash) -> None:
        raise RuntimeError("crash")


async def test_a_restart_whose_on_start_hangs_does_not_hold_up_shutdown() -> None:
    """Leaving the system while a restarted child hangs in on_start returns: the
    restart is cut short and the child is cancelled at its shutdown deadline."""
    starts: list[int] = []
    hanging = anyio.Event()
    async with fiefdom.ActorSystem(name="c") as system:
        ref = await system.spawn(lambda: HangsOnRestart(starts, hanging), name="h", shutdown=0.1)
        with pytest.raises(RuntimeError):
            await ref.ask(Crash())
        await hanging.wait()
    assert len(starts) == 2


async def test_shutdown_does_not_wait_out_a_restart_backoff() -> None:
    """A supervisor sleeping an hour-long backoff before a restart stops at once."""
    starts: list[int] = []
    spec = fiefdom.SupervisorSpec(
        name="slow",
        children=[fiefdom.ActorSpec("h", lambda: HangsOnRestart(starts, anyio.Event()))],
        backoff=fiefdom.Backoff(initial=HOUR, maximum=HOUR),
    )
    async with fiefdom.ActorSystem(name="c") as system:
        sup = await system.start_supervisor(spec)
        with pytest.raises(RuntimeError):
            await sup.ref("h").ask(Crash())
        await anyio.wait_all_tasks_blocked()
    assert starts == [1]


class StartsSlowly(fiefdom.Actor[Crash]):
    """on_start waits until released; it records that it was cancelled."""

    def __init__(self, log: list[str], entered: anyio.Event) -> None:
        self.log = log
        self.entered = entered

    async def on_start(self) -> None:
        self.entered.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.log.append("start cancelled")
            raise

    async def receive(self, msg: Crash) -> None:
        return None


async def test_a_spawn_given_up_during_on_start_leaves_no_orphan() -> None:
    """000/1e: a spawn whose caller gives up while on_start runs cancels that start;
    the name is free again and leaving the system returns with no task left."""
    log: list[str] = []
    entered = anyio.Event()
    async with fiefdom.ActorSystem(name="c") as system:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def spawn() -> None:
                    await system.spawn(lambda: StartsSlowly(log, entered), name="s", shutdown=HOUR)

                tg.start_soon(spawn)
                await entered.wait()
                scope.cancel()
        assert log == ["start cancelled"]
        assert "s" not in system.root.which_children()


async def test_leaving_async_with_by_an_exception_cancels_instead_of_draining() -> None:
    """An exception out of the async with body stops the system with stop("cancel"): a
    handler blocked behind an hour-long deadline is cancelled, and the error is raised."""
    log: list[str] = []
    entered = anyio.Event()
    system = fiefdom.ActorSystem(name="c")

    async def run() -> None:
        async with system:
            ref = await system.spawn(lambda: Hanger(log, "x", entered), name="x", shutdown=HOUR)
            await ref.tell(Hang())
            await entered.wait()
            raise LookupError("the body failed")

    with pytest.raises(LookupError, match="the body failed"):
        await run()
    assert log == ["cancelled x"]
    assert system.state is fiefdom.State.STOPPED


async def test_a_drain_whose_caller_is_cancelled_becomes_a_cancel_and_is_waited_for() -> None:
    """stop() cancelled while it drains turns into a cancel and still waits for the tree,
    so that no task outlives it; stop() may be called from any task."""
    log: list[str] = []
    entered = anyio.Event()
    system = fiefdom.ActorSystem(name="c")
    await system.start()
    ref = await system.spawn(lambda: Hanger(log, "x", entered), name="x", shutdown=HOUR)
    await ref.tell(Hang())
    await entered.wait()
    async with anyio.create_task_group() as tg:
        tg.start_soon(system.stop)  # a drain: it would wait an hour for x
        await anyio.wait_all_tasks_blocked()
        assert system.state is fiefdom.State.STOPPING
        tg.cancel_scope.cancel()
    assert log == ["cancelled x"]
    assert system.state is fiefdom.State.STOPPED
