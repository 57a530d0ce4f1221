"""An ask given a responder (``Ask.respond``, what the control channel uses to
write a call's reply) has it called exactly once whatever the outcome: from the
actor's own task when the handler returns a result, as a done callback of the ask's
future otherwise (the handler raised, the deadline passed while queued, the caller
gave up); and no ask keeps its responder once it has ended."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio

import fiefdom
from fiefdom.actors._cell import Cell
from fiefdom.actors._envelope import Ask

GUARD = 30.0  # a hang guard, never a speed requirement


class Echo(fiefdom.Request[str]):
    text: str


class Fail(fiefdom.Request[str]):
    pass


class Hold(fiefdom.Request[str]):
    """Runs until the test lets it go."""


class Subject(fiefdom.Actor[Echo | Fail | Hold]):
    def __init__(self, held: anyio.Event, release: anyio.Event) -> None:
        self.held = held
        self.release = release

    async def receive(self, msg: Echo | Fail | Hold) -> str:
        if isinstance(msg, Fail):
            raise ValueError("failed on purpose")
        if isinstance(msg, Hold):
            self.held.set()
            await self.release.wait()
            return "held"
        return msg.text


class Recorder:
    """A responder as the control channel's: it clears itself from its ask, then
    records who called it (the task running then, None for a done callback) and the
    outcome."""

    def __init__(self, ask: Ask) -> None:
        self.ask = ask
        self.calls: list[tuple[asyncio.Task[Any] | None, str]] = []
        self.called = anyio.Event()

    def __call__(self, future: asyncio.Future[object]) -> None:
        self.ask.respond = None
        if future.cancelled():
            outcome = "cancelled"
        elif future.exception() is not None:
            outcome = type(future.exception()).__name__
        else:
            outcome = f"result {future.result()}"
        self.calls.append((asyncio.current_task(), outcome))
        self.called.set()


async def _callbacks_scheduled_so_far() -> None:
    """Return once every callback the event loop had scheduled has run."""
    loop = asyncio.get_running_loop()
    marker = loop.create_future()
    loop.call_soon(marker.set_result, None)
    await marker


def _send(cell: Cell[Any], msg: object, timeout: float | None) -> Recorder:
    """Ask ``msg`` the way the control channel starts a call: no task waits on it."""
    ask = cell.new_ask(msg, timeout)
    recorder = Recorder(ask)
    ask.future.add_done_callback(recorder)
    ask.respond = recorder
    assert cell.queue_ask(ask)
    return recorder


async def test_a_responder_is_called_once_for_every_outcome() -> None:
    """A result calls the responder from the actor's task (not as a later done
    callback); a handler's error, a deadline passed while queued and an abandoned
    queued ask call it once as a done callback (no task running). No responder is
    left behind."""
    held, release = anyio.Event(), anyio.Event()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Subject(held, release), name="subject")
        cell = ref._cell()
        with anyio.fail_after(GUARD):
            answered = _send(cell, Echo(text="hi"), 30.0)
            await answered.called.wait()
            failed = _send(cell, Fail(), 30.0)
            await failed.called.wait()
            # Behind a held handler: one queued ask expires, one is abandoned.
            holding = _send(cell, Hold(), None)
            await held.wait()
            expiring = _send(cell, Echo(text="late"), 0.05)
            abandoned = _send(cell, Echo(text="gone"), 30.0)
            abandoned.ask.abandon()
            await expiring.called.wait()
            await abandoned.called.wait()
            release.set()
            await holding.called.wait()
            # A done callback is scheduled when its future is done, before the responder
            # of `holding` woke this task: once a callback scheduled now has run, every
            # one still due has run too (the loop runs them in the order scheduled).
            await _callbacks_scheduled_so_far()
    # Called from the actor's task: a task was running.
    assert [(by is not None, outcome) for by, outcome in answered.calls] == [(True, "result hi")]
    assert [(by is not None, outcome) for by, outcome in holding.calls] == [(True, "result held")]
    assert failed.calls == [(None, "ValueError")]
    assert expiring.calls == [(None, "AskTimeout")]
    assert abandoned.calls == [(None, "cancelled")]
    for recorder in (answered, holding, failed, expiring, abandoned):
        assert recorder.ask.respond is None


async def test_an_ask_without_a_responder_is_answered_as_before() -> None:
    """Asks awaited by their callers (no responder) get their results, next to an ask
    with one: a responder belongs to its ask alone."""
    held, release = anyio.Event(), anyio.Event()
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Subject(held, release), name="subject")
        cell = ref._cell()
        with anyio.fail_after(GUARD):
            recorder = _send(cell, Echo(text="a"), 30.0)
            assert await ref.ask(Echo(text="b")) == "b"
            await recorder.called.wait()
    assert [outcome for _, outcome in recorder.calls] == ["result a"]
    assert recorder.ask.respond is None
