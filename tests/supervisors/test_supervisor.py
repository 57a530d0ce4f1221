"""Supervisor semantics (DESIGN rules 4 and 5, GUARANTEES 002/4 M-4, 000/1e, 004/3, 001/13):
restart strategies, restart types, intensity and escalation, shutdown order and
deadlines, backoff."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
import structlog

import fiefdom
from fiefdom import ActorSpec, Restart, Strategy, SupervisorSpec


class Ping(fiefdom.Request[int]):
    """Replies with the incarnation number of the actor."""


class Crash(fiefdom.Request[None]):
    pass


class Exit(fiefdom.Request[None]):
    """A normal exit: the actor stops itself."""


class Block(fiefdom.Request[None]):
    """Never returns by itself (ignores a drain; only cancellation ends it)."""


Msg = Ping | Crash | Exit | Block


class World:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.incarnations: dict[str, int] = {}
        self.blocked = anyio.Event()
        self.fail_start: set[str] = set()


class Member(fiefdom.Actor[Msg]):
    def __init__(self, name: str, world: World) -> None:
        self.name = name
        self.world = world
        world.incarnations[name] = world.incarnations.get(name, 0) + 1
        self.incarnation = world.incarnations[name]

    async def on_start(self) -> None:
        if self.name in self.world.fail_start:
            raise RuntimeError(f"{self.name} cannot start")
        self.world.events.append(f"start {self.name}")

    async def on_stop(self) -> None:
        self.world.events.append(f"stop {self.name}")

    async def receive(self, msg: Msg) -> object:
        match msg:
            case Ping():
                return self.incarnation
            case Crash():
                raise ZeroDivisionError(f"{self.name} crashed")
            case Exit():
                self.context.stop()
            case Block():
                self.world.blocked.set()
                try:
                    await anyio.sleep_forever()
                except anyio.get_cancelled_exc_class():
                    self.world.events.append(f"cancelled {self.name}")
                    raise
        return None


def member(world: World, name: str, **kw: Any) -> ActorSpec[Msg]:
    return ActorSpec(name, lambda: Member(name, world), **kw)


async def crash(ref: fiefdom.ActorRef[Any]) -> None:
    with pytest.raises(ZeroDivisionError):
        await ref.ask(Crash())


async def start_three(
    system: fiefdom.ActorSystem, world: World, strategy: Strategy, **kw: Any
) -> tuple[fiefdom.SupervisorRef, list[fiefdom.ActorRef[Any]]]:
    spec = SupervisorSpec(
        "sup",
        children=[member(world, n) for n in ("a", "b", "c")],
        strategy=strategy,
        max_restarts=10,
        within=60,
        **kw,
    )
    sup = await system.start_supervisor(spec)
    return sup, [sup.ref(n) for n in ("a", "b", "c")]


async def test_one_for_one_restarts_only_the_failed_child() -> None:
    """one_for_one: only the crashed child restarts; its siblings keep their instance."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        sup, (a, b, c) = await start_three(system, world, Strategy.ONE_FOR_ONE)
        await crash(b)
        assert [await r.ask(Ping()) for r in (b, a, c)] == [2, 1, 1]
        assert world.events == ["start a", "start b", "start c", "stop b", "start b"]
        assert [s.restarts for s in sup.statistics().children] == [0, 1, 0]  # type: ignore[union-attr]
        assert sup.statistics().restarts == 1


async def test_one_for_all_restarts_all_children() -> None:
    """one_for_all: every child is stopped (reverse order) and restarted (start order)."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        _, (a, b, c) = await start_three(system, world, Strategy.ONE_FOR_ALL)
        await crash(b)
        # b's next message is handled once the restart is done (a restarts before b).
        assert [await r.ask(Ping()) for r in (b, a, c)] == [2, 2, 2]
    assert world.events[:9] == [
        "start a",
        "start b",
        "start c",
        "stop b",  # the crash
        "stop c",
        "stop a",
        "start a",
        "start b",
        "start c",
    ]


async def test_rest_for_one_restarts_the_failed_child_and_those_after_it() -> None:
    """rest_for_one: the crashed child and the ones started after it restart, in order."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        _, (a, b, c) = await start_three(system, world, Strategy.REST_FOR_ONE)
        await crash(b)
        assert [await r.ask(Ping()) for r in (b, a, c)] == [2, 1, 2]
        assert world.events == [
            "start a",
            "start b",
            "start c",
            "stop b",
            "stop c",
            "start b",
            "start c",
        ]


async def test_restart_keeps_the_mailbox_of_siblings() -> None:
    """Messages queued for a sibling restarted by one_for_all are handled by its new
    incarnation, not lost."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        _, (a, b, _c) = await start_three(system, world, Strategy.ONE_FOR_ALL)
        async with anyio.create_task_group() as tg:
            replies: list[int] = []

            async def ping_a() -> None:
                replies.append(await a.ask(Ping()))

            tg.start_soon(crash, b)
            tg.start_soon(ping_a)
        assert replies in ([1], [2])  # before the restart, or by the new incarnation


async def test_intensity_exceeded_escalates_to_the_parent() -> None:
    """More than max_restarts within the period: the supervisor stops its children and
    fails with RestartIntensityExceeded; its parent restarts it (002/4 M-4)."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        inner = SupervisorSpec("inner", children=[member(world, "x")], max_restarts=1, within=60)
        outer = await system.start_supervisor(SupervisorSpec("outer", children=[inner], within=60))
        x = outer.supervisor("inner").ref("x")
        with structlog.testing.capture_logs() as logs:
            await crash(x)  # restart 1: within the intensity
            assert await x.ask(Ping()) == 2
            await crash(x)  # restart 2: one too many, inner escalates
            with anyio.fail_after(10):
                await _until(lambda: outer.statistics().restarts == 1 and running(x))
            assert await x.ask(Ping()) == 3
        assert outer.statistics().restarts == 1
        assert any(e["event"] == "restart intensity exceeded" for e in logs)
        crashed = [
            e for e in logs if e["event"] == "child crashed" and e["child"] == "t/outer/inner"
        ]
        assert isinstance(crashed[0]["exc_info"], fiefdom.RestartIntensityExceeded)
        assert isinstance(crashed[0]["exc_info"].__cause__, ZeroDivisionError)


async def test_intensity_exceeded_at_the_root_leaves_the_async_with() -> None:
    """At the root, exceeding the intensity stops every actor and raises
    RestartIntensityExceeded out of 'async with ActorSystem' (not an exception group)."""
    world = World()
    refs: list[fiefdom.ActorRef[Any]] = []

    async def run() -> None:
        async with fiefdom.ActorSystem(name="t", max_restarts=1, within=60) as system:
            ref = await system.spawn(lambda: Member("x", world), name="x")
            refs.append(await system.spawn(lambda: Member("y", world), name="y"))
            await crash(ref)
            await crash(ref)
            with anyio.fail_after(10):  # the escalation cancels this body
                await anyio.sleep_forever()

    with pytest.raises(fiefdom.RestartIntensityExceeded) as info:
        await run()
    (other,) = refs
    assert "supervisor t exceeded its restart intensity" in str(info.value)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    # x's crash stopped it, then the root stopped the rest in reverse order.
    assert world.events[-2:] == ["stop x", "stop y"]
    with pytest.raises(fiefdom.ActorStopped):
        await other.ask(Ping())


async def test_restarts_outside_the_period_do_not_count() -> None:
    """The intensity counts only restarts within the period."""
    world = World()
    within = 0.01
    async with fiefdom.ActorSystem(name="t", max_restarts=1, within=within) as system:
        ref = await system.spawn(lambda: Member("x", world), name="x")
        for expected in (2, 3, 4):
            await crash(ref)
            assert await ref.ask(Ping()) == expected
            # The restart was counted before the new incarnation answered: wait until
            # the period has passed since then on the supervisor's clock, so that the
            # next restart is the only one within its period.
            restarted_by = time.monotonic()
            with anyio.fail_after(10):
                await _until(lambda by=restarted_by: time.monotonic() > by + within)


async def test_transient_child_is_not_restarted_after_a_normal_exit() -> None:
    """A transient child that stops itself is not restarted; after a crash it is."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Member("x", world), name="x", restart=Restart.TRANSIENT)
        await crash(ref)
        assert await ref.ask(Ping()) == 2  # restarted after the crash
        await ref.ask(Exit())
        with anyio.fail_after(10):
            await _until(lambda: "x" not in system.root.which_children())
        with pytest.raises(fiefdom.ActorStopped):
            await ref.ask(Ping())
        assert world.incarnations["x"] == 2


async def test_permanent_child_is_restarted_after_a_normal_exit() -> None:
    """A permanent child that stops itself is restarted."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Member("x", world), name="x")
        await ref.ask(Exit())
        with anyio.fail_after(10):
            await _until(lambda: ref.statistics().restarts == 1 and running(ref))
        assert await ref.ask(Ping()) == 2


async def test_temporary_child_is_never_restarted() -> None:
    """A temporary child is not restarted after a crash, nor by a sibling's restart."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Member("x", world), name="x", restart=Restart.TEMPORARY)
        await crash(ref)
        with anyio.fail_after(10):
            await _until(lambda: "x" not in system.root.which_children())
        with pytest.raises(fiefdom.ActorStopped):
            await ref.ask(Ping())
        spec = SupervisorSpec(
            "sup",
            children=[member(world, "t1", restart=Restart.TEMPORARY), member(world, "p")],
            strategy=Strategy.ONE_FOR_ALL,
        )
        sup = await system.start_supervisor(spec)
        await crash(sup.ref("p"))
        assert await sup.ref("p").ask(Ping()) == 2
        assert sup.which_children() == ["p"]
    assert world.incarnations == {"x": 1, "t1": 1, "p": 2}


async def test_shutdown_runs_in_reverse_start_order() -> None:
    """Leaving the system stops children in reverse start order, nested ones included
    (000/1e, 004/3)."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        await system.spawn(lambda: Member("a", world), name="a")
        nested = SupervisorSpec("sup", children=[member(world, "b1"), member(world, "b2")])
        await system.start_supervisor(nested)
        await system.spawn(lambda: Member("c", world), name="c")
    assert world.events == [
        "start a",
        "start b1",
        "start b2",
        "start c",
        "stop c",
        "stop b2",
        "stop b1",
        "stop a",
    ]


async def test_a_child_ignoring_its_drain_is_cancelled_at_its_deadline() -> None:
    """A child that does not drain within its shutdown deadline is cancelled, and the
    system waits until it has exited; the others still stop in order (001/13)."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        await system.spawn(lambda: Member("a", world), name="a")
        stubborn = await system.spawn(lambda: Member("b", world), name="b", shutdown=0.05)
        await system.spawn(lambda: Member("c", world), name="c")
        await stubborn.tell(Block())
        await world.blocked.wait()
    assert world.events[3:] == ["stop c", "cancelled b", "stop b", "stop a"]


async def test_a_nested_supervisor_past_its_deadline_cancels_its_children() -> None:
    """A supervisor cancelled at its own shutdown deadline cancels its children at once,
    even those whose own deadline is far longer."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        spec = SupervisorSpec(
            "sup", children=[member(world, "slow", shutdown=3600.0)], shutdown=0.05
        )
        sup = await system.start_supervisor(spec)
        await sup.ref("slow").tell(Block())
        await world.blocked.wait()
    assert world.events == ["start slow", "cancelled slow", "stop slow"]


async def test_backoff_delays_grow_between_restarts() -> None:
    """With a backoff, each restart within the period waits initial * multiplier**n,
    capped at maximum."""
    world = World()
    backoff = fiefdom.Backoff(initial=0.001, multiplier=2.0, maximum=0.003)
    assert [backoff.delay(n) for n in (1, 2, 3, 4)] == [0.001, 0.002, 0.003, 0.003]
    async with fiefdom.ActorSystem(name="t") as system:
        spec = SupervisorSpec(
            "sup", children=[member(world, "x")], backoff=backoff, max_restarts=10, within=60
        )
        sup = await system.start_supervisor(spec)
        with structlog.testing.capture_logs() as logs:
            for n in range(4):
                await crash(sup.ref("x"))
                assert await sup.ref("x").ask(Ping()) == n + 2
        delays = [e["delay"] for e in logs if e["event"] == "backing off before a restart"]
        assert delays == [0.001, 0.002, 0.003, 0.003]


async def test_a_child_that_cannot_start_fails_the_supervisor_start() -> None:
    """A supervisor whose child fails its first start fails to start, with the cause."""
    world = World()
    world.fail_start.add("bad")
    async with fiefdom.ActorSystem(name="t") as system:
        spec = SupervisorSpec("sup", children=[member(world, "ok"), member(world, "bad")])
        with pytest.raises(fiefdom.ActivationFailed) as info:
            await system.start_supervisor(spec)
        assert isinstance(info.value.__cause__, RuntimeError)
        assert system.root.which_children() == []
        with pytest.raises(fiefdom.ActivationFailed):
            await system.spawn(lambda: Member("bad", world), name="bad")
    assert world.events == ["start ok", "stop ok"]


async def test_a_restart_that_fails_to_start_counts_as_a_crash() -> None:
    """A child that crashes and then cannot start again exhausts the intensity and escalates."""
    world = World()

    async def run() -> None:
        async with fiefdom.ActorSystem(name="t", max_restarts=2, within=60) as system:
            ref = await system.spawn(lambda: Member("x", world), name="x")
            world.fail_start.add("x")
            await crash(ref)
            with anyio.fail_after(10):
                await anyio.sleep_forever()

    with pytest.raises(fiefdom.RestartIntensityExceeded):
        await run()
    assert world.incarnations["x"] == 3  # the first, then two failed starts


async def test_dynamic_children() -> None:
    """start_child adds a child, terminate_child drains and removes it."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        sup = await system.start_supervisor(SupervisorSpec("sup"))
        await sup.start_child(member(world, "a"))
        with pytest.raises(ValueError, match="already has a child"):
            await sup.start_child(member(world, "a"))
        assert sup.which_children() == ["a"]
        ref = sup.ref("a")
        assert await ref.ask(Ping()) == 1
        await sup.terminate_child("a")
        assert sup.which_children() == []
        with pytest.raises(fiefdom.ActorStopped):
            await ref.ask(Ping())
        with pytest.raises(LookupError):
            sup.ref("a")
    assert world.events == ["start a", "stop a"]


async def test_leaving_the_system_returns_only_when_every_task_exited() -> None:
    """After 'async with ActorSystem' no task of the system is left (004/4)."""
    world = World()
    async with fiefdom.ActorSystem(name="t") as system:
        await system.spawn(lambda: Member("a", world), name="a")
        domain = system.domain("d", lambda key: Member(key, world), idle_timeout=0.01)
        await domain.ask("k1", Ping())
        await domain.ask("k2", Ping())
    assert system.state == "stopped"
    # The conftest fixture fails this test if any task outlived it.
    with pytest.raises(fiefdom.LifecycleError, match="cannot spawn: actor system 't' is stopped"):
        await system.spawn(lambda: Member("late", world), name="late")


def running(ref: fiefdom.ActorRef[Any]) -> bool:
    return ref.statistics().state == fiefdom.ActorState.RUNNING


async def _until(predicate: Any) -> None:
    # Supervisor bookkeeping has no event to wait on; poll the condition.
    while not predicate():  # noqa: ASYNC110
        await anyio.sleep(0.005)
