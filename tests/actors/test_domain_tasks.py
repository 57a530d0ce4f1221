"""A domain runs each activation in a task of its own and does a task group's work
for them: ``serve`` returns only once every actor task has ended, a failed task stops
every other actor and ``serve`` raises its error, and a cancellation (``cancel()`` or
from outside) reaches every actor wherever it is: running a handler (whose ask fails
ActorStopped, and whose on_stop still runs), waiting for a slot or for its key's
previous activation to stop (never started)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

import fiefdom
from fiefdom.actors import Domain


class Hold(fiefdom.Request[str]):
    pass


class Ping(fiefdom.Request[str]):
    pass


class Fatal(BaseException):
    """Not an Exception: no actor catches it, so it ends the actor's task."""


class Die(fiefdom.Request[str]):
    pass


class World:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.entered: dict[str, anyio.Event] = {}
        self.stop_gates: dict[str, anyio.Event] = {}
        self.stopping: dict[str, anyio.Event] = {}

    def entered_event(self, key: str) -> anyio.Event:
        return self.entered.setdefault(key, anyio.Event())

    def stopping_event(self, key: str) -> anyio.Event:
        return self.stopping.setdefault(key, anyio.Event())


class Keeper(fiefdom.Actor[Hold | Ping | Die]):
    def __init__(self, key: str, world: World) -> None:
        self.key = key
        self.world = world

    async def on_start(self) -> None:
        self.world.events.append(("start", self.key))

    async def on_stop(self) -> None:
        self.world.stopping_event(self.key).set()
        gate = self.world.stop_gates.get(self.key)
        if gate is not None:
            await gate.wait()
        await anyio.lowlevel.checkpoint()  # on_stop may await, also when it was cancelled
        self.world.events.append(("stop", self.key))

    async def receive(self, msg: Hold | Ping | Die) -> str:
        if type(msg) is Hold:
            self.world.entered_event(self.key).set()
            await anyio.sleep_forever()
        if type(msg) is Die:
            raise Fatal(self.key)
        return self.key


async def open_when_all_wait(gate: anyio.Event) -> None:
    """Opened once the cancellation has run its course as far as it can: an on_stop
    that awaits is shielded, and finishes its work."""
    await anyio.wait_all_tasks_blocked()
    gate.set()


def domain_of(world: World, **kw: object) -> Domain[str, Hold | Ping | Die]:
    return Domain("d", lambda key: Keeper(key, world), **kw)  # type: ignore[arg-type]


async def outcome(ask: Callable[[], Awaitable[object]], into: dict[str, object], key: str) -> None:
    try:
        into[key] = await ask()
    except fiefdom.ActorStopped as exc:
        into[key] = exc


async def test_a_failed_actor_task_stops_every_actor_and_serve_raises_it() -> None:
    world = World()
    domain = domain_of(world)
    failures: list[BaseExceptionGroup[BaseException]] = []
    results: dict[str, object] = {}

    async def serve(task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            await domain.serve(task_status.started)
        except BaseExceptionGroup as group:
            failures.append(group)

    async with anyio.create_task_group() as tg:
        await tg.start(serve)
        tg.start_soon(outcome, lambda: domain.ask("a", Hold(), timeout=None), results, "a")
        await world.entered_event("a").wait()
        assert await domain.ask("b", Ping(), timeout=None) == "b"  # b idles in its loop
        await outcome(lambda: domain.ask("c", Die(), timeout=None), results, "c")
    # The error is raised by serve, as a task group raises its tasks' errors.
    assert len(failures) == 1
    assert [type(e) for e in failures[0].exceptions] == [Fatal]
    assert isinstance(results["c"], fiefdom.ActorStopped)
    # The others were cancelled: the running handler's ask failed, every on_stop ran.
    assert isinstance(results["a"], fiefdom.ActorStopped)
    assert sorted(e for e in world.events if e[0] == "stop") == [
        ("stop", "a"),
        ("stop", "b"),
        ("stop", "c"),
    ]
    stats = domain.statistics()
    assert (stats.live, stats.idle, stats.waiting) == (0, 0, 0)
    with pytest.raises(fiefdom.ActorStopped):
        await domain.ask("a", Ping())


@pytest.mark.parametrize("how", ["cancel()", "outer scope"])
async def test_a_cancellation_reaches_every_actor_wherever_it_is(how: str) -> None:
    """One actor runs a handler, one waits for the only slot, one key's next activation
    waits for the previous one to stop: a cancellation ends them all."""
    world = World()
    domain = domain_of(world, max_active=2)
    results: dict[str, object] = {}
    world.stop_gates["p"] = anyio.Event()

    async def serve(task_status: anyio.abc.TaskStatus[None]) -> None:
        await domain.serve(task_status.started)

    async with anyio.create_task_group() as tg:  # the senders, outside the cancelled scope
        with anyio.CancelScope() as outer:
            async with anyio.create_task_group() as inner:
                await inner.start(serve)
                tg.start_soon(outcome, lambda: domain.ask("a", Hold(), timeout=None), results, "a")
                await world.entered_event("a").wait()
                # p is passivating (its on_stop waits on a gate); its next activation waits.
                assert await domain.ask("p", Ping(), timeout=None) == "p"
                tg.start_soon(domain.passivate, "p")
                await world.stopping_event("p").wait()
                tg.start_soon(outcome, lambda: domain.ask("p", Ping(), timeout=None), results, "p2")
                # b needs a slot: a and the passivating p hold both.
                tg.start_soon(outcome, lambda: domain.ask("b", Ping(), timeout=None), results, "b")
                await anyio.wait_all_tasks_blocked()
                assert domain.statistics().waiting == 2
                tg.start_soon(open_when_all_wait, world.stop_gates["p"])
                if how == "cancel()":
                    domain.cancel()
                else:
                    outer.cancel()
        await domain.stopped.wait()
    for key in ("a", "b", "p2"):
        assert isinstance(results[key], fiefdom.ActorStopped), (key, results[key])
    # b and p's next activation never started; a's and p's on_stop ran.
    assert [e for e in world.events if e[0] == "start"] == [("start", "a"), ("start", "p")]
    assert sorted(e for e in world.events if e[0] == "stop") == [("stop", "a"), ("stop", "p")]
    stats = domain.statistics()
    assert (stats.live, stats.idle, stats.waiting) == (0, 0, 0)
