"""An exception raised in the body of ``async with ActorSystem()`` comes out of the
block as itself: never wrapped in an exception group, whatever the tree was doing
when the body raised (a handler running, a domain's actor busy, an actor whose
``on_stop`` fails while the tree is cancelled), and a group the body raised itself
comes out as that same group, neither unwrapped nor wrapped again."""

from __future__ import annotations

import anyio
import pytest

import fiefdom


class Hold(fiefdom.Request[None]):
    """Blocks its handler until cancelled."""


class Busy(fiefdom.Actor[Hold]):
    def __init__(self, entered: anyio.Event) -> None:
        self.entered = entered

    async def receive(self, msg: Hold) -> None:
        self.entered.set()
        await anyio.sleep_forever()


class FailingStop(fiefdom.Actor[Hold]):
    async def receive(self, msg: Hold) -> None:
        return None

    async def on_stop(self) -> None:
        raise RuntimeError("on_stop fails on purpose")


class BodyError(Exception):
    """What the body raises."""


async def test_a_body_error_comes_out_as_itself_while_handlers_run() -> None:
    """With an actor's handler and a domain actor's handler running, the body's
    error is the exception the caller catches (the tree is cancelled on the way out)."""
    actor_entered, domain_entered = anyio.Event(), anyio.Event()
    raised = BodyError("raised in the body")
    system = fiefdom.ActorSystem(shutdown=5.0)

    async def run() -> None:
        async with system:
            busy = await system.spawn(lambda: Busy(actor_entered), name="busy")
            domain = system.domain("busy-domain", lambda key: Busy(domain_entered))
            await busy.tell(Hold())
            await domain.tell("k", Hold())
            await actor_entered.wait()
            await domain_entered.wait()
            raise raised

    with anyio.fail_after(30), pytest.raises(BodyError) as info:  # a hang guard
        await run()
    assert info.value is raised
    assert system.state is fiefdom.State.STOPPED


async def test_a_body_error_survives_an_on_stop_that_fails() -> None:
    """An actor whose on_stop raises while the tree stops does not replace, nor
    wrap, the body's error."""
    raised = BodyError("raised in the body")

    async def run() -> None:
        async with fiefdom.ActorSystem() as system:
            await system.spawn(FailingStop, name="failing-stop")
            raise raised

    with anyio.fail_after(30), pytest.raises(BodyError) as info:
        await run()
    assert info.value is raised


async def test_a_base_exception_of_the_body_comes_out_as_itself() -> None:
    """A BaseException that is not an Exception (KeyboardInterrupt-like) comes out as
    itself too, and the tree is stopped."""

    class Interrupt(BaseException):
        pass

    raised = Interrupt()
    system = fiefdom.ActorSystem()

    async def run() -> None:
        async with system:
            await system.spawn(FailingStop, name="idle")
            raise raised

    with anyio.fail_after(30), pytest.raises(Interrupt) as info:
        await run()
    assert info.value is raised
    assert system.state is fiefdom.State.STOPPED


async def test_a_group_raised_by_the_body_is_that_same_group() -> None:
    """A group the body raised (from a task group of its own) is neither unwrapped nor
    wrapped in another group."""
    group = ExceptionGroup("the body's own", [BodyError("one")])

    async def run() -> None:
        async with fiefdom.ActorSystem():
            raise group

    with anyio.fail_after(30), pytest.raises(ExceptionGroup) as info:
        await run()
    assert info.value is group
