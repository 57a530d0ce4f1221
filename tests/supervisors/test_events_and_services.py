"""Runtime events reach subscribers of ``system.events`` (every event type is
emitted: GUARANTEES 002/3 "events defined but never emitted"), and a supervisor
hosts services beside actors, restarting and stopping them in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import anyio
import pytest

import fiefdom
from fiefdom.actors import StopMode

E = TypeVar("E")


class Watch:
    """Collects runtime events and lets a test wait for the first of a type."""

    def __init__(self) -> None:
        self.seen: list[fiefdom.RuntimeEvent] = []
        self._arrived = anyio.Event()

    def __call__(self, event: fiefdom.RuntimeEvent) -> None:
        self.seen.append(event)
        self._arrived.set()

    async def first(self, kind: type[E], timeout: float = 10.0) -> E:
        with anyio.fail_after(timeout):
            while True:
                for event in self.seen:
                    if isinstance(event, kind):
                        return event
                self._arrived = anyio.Event()
                await self._arrived.wait()

    async def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``condition()`` holds, looking again at each event."""
        with anyio.fail_after(timeout):
            while not condition():
                self._arrived = anyio.Event()
                await self._arrived.wait()

    def all(self, kind: type[E]) -> list[E]:
        return [e for e in self.seen if isinstance(e, kind)]


class Boom(fiefdom.Request[None]):
    pass


class Fragile(fiefdom.Actor[Boom]):
    async def receive(self, msg: Boom) -> None:
        raise RuntimeError("boom")


class Quits(fiefdom.Actor[Boom]):
    async def receive(self, msg: Boom) -> None:
        self.context.stop()


async def test_crash_and_restart_of_a_spawned_actor_are_emitted() -> None:
    """A crashing supervised actor emits ActorCrashed, then ActorRestarted."""
    watch = Watch()
    async with fiefdom.ActorSystem(name="ev") as system:
        system.events.subscribe(watch)
        ref = await system.spawn(Fragile, name="fragile")
        with pytest.raises(RuntimeError, match="boom"):
            await ref.ask(Boom())
        restarted = await watch.first(fiefdom.ActorRestarted)
    crashed = watch.all(fiefdom.ActorCrashed)
    assert crashed[0].path == "ev/fragile"
    assert crashed[0].error_type == "RuntimeError"
    assert crashed[0].error == "boom"
    assert restarted.path == "ev/fragile"
    assert restarted.restarts == 1


async def test_domain_key_crash_is_emitted_with_its_key() -> None:
    """A crash of a domain key's actor emits ActorCrashed naming the key."""
    seen: list[fiefdom.RuntimeEvent] = []
    async with fiefdom.ActorSystem(name="ev") as system:
        system.events.subscribe(seen.append)
        domain = system.domain("d", lambda key: Fragile())
        with pytest.raises(RuntimeError):
            await domain.ask("k1", Boom())
    crashed = [e for e in seen if isinstance(e, fiefdom.ActorCrashed)]
    assert [(e.path, e.key) for e in crashed] == [("ev/d/k1", "k1")]


async def test_exit_of_a_transient_child_is_emitted() -> None:
    """A transient child's normal exit emits ChildExited (it is not restarted)."""
    watch = Watch()
    async with fiefdom.ActorSystem(name="ev") as system:
        system.events.subscribe(watch)
        ref = await system.spawn(Quits, name="quits", restart=fiefdom.Restart.TRANSIENT)
        await ref.ask(Boom())
        exited = await watch.first(fiefdom.ChildExited)
    assert exited.path == "ev/quits"
    assert "transient" in exited.reason


async def test_escalation_is_emitted() -> None:
    """Exceeding a supervisor's restart intensity emits SupervisorEscalated."""
    watch = Watch()
    spec = fiefdom.SupervisorSpec(
        name="workers",
        children=[fiefdom.ActorSpec("fragile", Fragile)],
        max_restarts=1,
        within=60.0,
        restart=fiefdom.Restart.TEMPORARY,
    )
    async with fiefdom.ActorSystem(name="ev") as system:
        system.events.subscribe(watch)
        sup = await system.start_supervisor(spec)
        ref = sup.ref("fragile")
        with pytest.raises(RuntimeError):
            await ref.ask(Boom())
        await watch.first(fiefdom.ActorRestarted)
        with pytest.raises(RuntimeError):
            await ref.ask(Boom())
        escalated = await watch.first(fiefdom.SupervisorEscalated)
    assert escalated.path == "ev/workers"


async def test_a_raising_subscriber_does_not_break_the_runtime() -> None:
    """A subscriber that raises is logged and skipped; other subscribers still get events."""
    seen: list[fiefdom.RuntimeEvent] = []

    def broken(event: fiefdom.RuntimeEvent) -> None:
        raise ValueError("subscriber bug")

    async with fiefdom.ActorSystem(name="ev") as system:
        system.events.subscribe(broken)
        unsubscribe = system.events.subscribe(seen.append)
        domain = system.domain("d", lambda key: Fragile())
        with pytest.raises(RuntimeError):
            await domain.ask("k", Boom())
        unsubscribe()
        with pytest.raises(RuntimeError):
            await domain.ask("k", Boom())
    assert len([e for e in seen if isinstance(e, fiefdom.ActorCrashed)]) == 1


class Recorder:
    """A service that records its lifecycle into a shared log."""

    def __init__(self, name: str, log: list[str], fail_first: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail_first = fail_first
        self._stop = anyio.Event()
        self.crash = anyio.Event()

    async def serve(self, started: Callable[[], None] | None = None) -> None:
        self.log.append(f"start {self.name}")
        if started is not None:
            started()
        with anyio.CancelScope() as self._scope:
            async with anyio.create_task_group() as tg:

                async def crash_on_request() -> None:
                    await self.crash.wait()
                    raise RuntimeError(f"{self.name} failed")

                tg.start_soon(crash_on_request)
                await self._stop.wait()
                tg.cancel_scope.cancel()
        self.log.append(f"stop {self.name}")

    def request_stop(self, mode: StopMode) -> None:
        self._stop.set()

    def cancel(self) -> None:
        self._scope.cancel()

    def close(self, reason: str) -> None:
        self.log.append(f"close {self.name}")

    def reset(self) -> None:
        self._stop = anyio.Event()
        self.crash = anyio.Event()
        self.log.append(f"reset {self.name}")


async def test_services_start_in_order_and_stop_in_reverse() -> None:
    """Services in a supervisor start in order, and stop in reverse order on shutdown."""
    log: list[str] = []
    spec = fiefdom.SupervisorSpec(
        name="services",
        children=[
            fiefdom.ServiceSpec("store", lambda: Recorder("store", log)),
            fiefdom.ServiceSpec("engine", lambda: Recorder("engine", log)),
            fiefdom.ServiceSpec("server", lambda: Recorder("server", log)),
        ],
    )
    async with fiefdom.ActorSystem(name="svc") as system:
        sup = await system.start_supervisor(spec)
        assert isinstance(sup.service("engine"), Recorder)
        stats = sup.statistics()
        assert [c.path for c in stats.children] == [
            "svc/services/store",
            "svc/services/engine",
            "svc/services/server",
        ]
    assert log[:3] == ["start store", "start engine", "start server"]
    assert [e for e in log if e.startswith("stop")] == ["stop server", "stop engine", "stop store"]


async def test_a_crashing_service_is_restarted_with_its_restarts_counted() -> None:
    """A service whose serve raises is reset and served again; statistics count it."""
    log: list[str] = []
    watch = Watch()
    spec = fiefdom.SupervisorSpec(
        name="services", children=[fiefdom.ServiceSpec("poller", lambda: Recorder("poller", log))]
    )
    async with fiefdom.ActorSystem(name="svc") as system:
        system.events.subscribe(watch)
        sup = await system.start_supervisor(spec)
        service = sup.service("poller")
        assert isinstance(service, Recorder)
        service.crash.set()
        restarted = await watch.first(fiefdom.ActorRestarted)
        assert restarted.path == "svc/services/poller"
        assert log.count("start poller") == 2
        child = sup.statistics().children[0]
        assert isinstance(child, fiefdom.ServiceStatistics)
        assert child.restarts == 1
        assert child.running
    assert "reset poller" in log
    assert [e.path for e in watch.all(fiefdom.ActorCrashed)] == ["svc/services/poller"]


def test_a_service_factory_must_return_a_service() -> None:
    """A ServiceSpec whose factory returns something without the protocol is refused clearly."""
    spec = fiefdom.SupervisorSpec(
        name="s",
        children=[fiefdom.ServiceSpec("bad", lambda: object())],  # type: ignore[arg-type,return-value]
    )
    from fiefdom.supervisors._supervisor import Supervisor

    with pytest.raises(TypeError, match="lacks serve/request_stop"):
        Supervisor(spec, "sys/s")


class SlowToStop(Recorder):
    """A service whose stop waits for ``release`` once ``stopping`` is set: a test
    acts while its supervisor is in the middle of stopping its children."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__(name, log)
        self.stopping = anyio.Event()
        self.release = anyio.Event()

    def request_stop(self, mode: StopMode) -> None:
        self.stopping.set()

        async def later() -> None:
            await self.release.wait()
            super(SlowToStop, self).request_stop(mode)

        self._later = asyncio.ensure_future(later())


async def test_a_child_added_while_its_supervisor_stops_its_children_is_refused() -> None:
    """A supervisor that escalates stops its children; a child added meanwhile (as a
    program still starting its tree would) is refused with SupervisorError, since
    nothing would ever stop it, rather than left running with the supervisor's task
    group waiting on it for ever; the escalation then completes."""
    log: list[str] = []
    slow = SlowToStop("slow", log)
    fragile = Recorder("fragile", log)
    spec = fiefdom.SupervisorSpec(
        name="services",
        max_restarts=0,
        restart=fiefdom.Restart.TEMPORARY,
        children=[
            fiefdom.ServiceSpec("slow", lambda: slow),
            fiefdom.ServiceSpec("fragile", lambda: fragile),
        ],
    )
    watch = Watch()
    async with fiefdom.ActorSystem(name="svc") as system:
        system.events.subscribe(watch)
        sup = await system.start_supervisor(spec)
        fragile.crash.set()
        with anyio.fail_after(10):
            await slow.stopping.wait()
        with pytest.raises(fiefdom.SupervisorError, match="is stopping: cannot add 'late'"):
            await sup.start_child(fiefdom.ServiceSpec("late", lambda: Recorder("late", log)))
        slow.release.set()
        escalated = await watch.first(fiefdom.SupervisorEscalated)
        assert escalated.path == "svc/services"
        await watch.until(
            lambda: any(e.path == "svc/services" for e in watch.all(fiefdom.ChildExited))
        )
        assert "stop slow" in log
    assert "start late" not in log
