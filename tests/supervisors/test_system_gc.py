"""A running actor system raises the garbage collector's youngest threshold
(``fiefdom._gc``): raised while any system runs, put back after the last one, never
lowered, an application's own change kept, and left alone when opted out."""

from __future__ import annotations

import gc

import pytest

import fiefdom
from fiefdom._gc import THRESHOLD

DEFAULT = (700, 10, 10)


pytestmark = pytest.mark.usefixtures("interpreter_gc_thresholds")


async def test_raised_while_running_and_put_back() -> None:
    async with fiefdom.ActorSystem(name="a"):
        assert gc.get_threshold() == (THRESHOLD, 10, 10)
    assert gc.get_threshold() == DEFAULT


async def test_held_until_the_last_system_stops() -> None:
    first = fiefdom.ActorSystem(name="first")
    second = fiefdom.ActorSystem(name="second")
    await first.start()
    await second.start()
    await first.stop()
    assert gc.get_threshold()[0] == THRESHOLD  # the second still runs
    await second.stop()
    assert gc.get_threshold() == DEFAULT


async def test_opted_out_by_argument_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    async with fiefdom.ActorSystem(name="a", tune_gc=False):
        assert gc.get_threshold() == DEFAULT
    monkeypatch.setenv("FIEFDOM_GC", "default")
    async with fiefdom.ActorSystem(name="b"):
        assert gc.get_threshold() == DEFAULT
    monkeypatch.setenv("FIEFDOM_GC", "2500")
    async with fiefdom.ActorSystem(name="c"):
        assert gc.get_threshold() == (2500, 10, 10)
    assert gc.get_threshold() == DEFAULT


async def test_an_applications_higher_threshold_is_never_lowered() -> None:
    gc.set_threshold(50_000, 20, 20)
    async with fiefdom.ActorSystem(name="a"):
        assert gc.get_threshold() == (50_000, 20, 20)
    assert gc.get_threshold() == (50_000, 20, 20)


async def test_an_applications_change_while_running_is_kept() -> None:
    async with fiefdom.ActorSystem(name="a"):
        gc.set_threshold(3000, 10, 10)
    assert gc.get_threshold() == (3000, 10, 10)


async def test_put_back_when_the_root_gives_up() -> None:
    class Boom(fiefdom.Actor[str]):
        async def receive(self, msg: str) -> None:
            raise RuntimeError(msg)

    system = fiefdom.ActorSystem(name="a", max_restarts=0)
    await system.start()
    assert gc.get_threshold()[0] == THRESHOLD
    ref = await system.spawn(Boom, name="boom")
    await ref.tell("boom")
    await system.wait_stopped()
    assert gc.get_threshold() == DEFAULT
    with pytest.raises(fiefdom.RestartIntensityExceeded):
        await system.stop()
