"""First checks of the runtime: the example runs, tell/ask, deadlines."""

from __future__ import annotations

import importlib.util
import pathlib

import anyio
import msgspec
import pytest

import fiefdom

ROOT = pathlib.Path(__file__).resolve().parents[2]


async def test_bank_example_runs() -> None:
    """examples/bank.py, the DESIGN sketch made real, runs and returns the balances."""
    spec = importlib.util.spec_from_file_location("bank_example", ROOT / "examples" / "bank.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert await module.main() == {"alice": 42, "bob": 5}


class Sleep(fiefdom.Request[str]):
    seconds: float


class Echo(fiefdom.Request[str]):
    text: str


class Sleeper(fiefdom.Actor[Sleep | Echo]):
    def __init__(self) -> None:
        self.log: list[str] = []

    async def receive(self, msg: Sleep | Echo) -> str:
        match msg:
            case Sleep(seconds=s):
                self.log.append("sleep-start")
                try:
                    await anyio.sleep(s)
                finally:
                    self.log.append("sleep-end")
                return "slept"
            case Echo(text=t):
                self.log.append(t)
                return t
        raise AssertionError(msg)


async def test_ask_deadline_while_running_cancels_handler() -> None:
    """An ask whose deadline passes while it runs cancels the handler (phase running)."""
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(Sleeper, name="s")
        with anyio.fail_after(10):  # a hang guard
            while True:
                with pytest.raises(fiefdom.AskTimeout) as info:
                    await ref.ask(Sleep(30), timeout=0.05)
                # The deadline starts as the ask is queued: an event loop held up past
                # it before the idle actor took the ask has it removed unrun (a queued
                # timeout, never handled), and it is asked again.
                if ref.statistics().messages_handled:
                    break
                assert info.value.phase == "queued"
        assert info.value.phase == "running"
        assert info.value.handler_exited
        assert await ref.ask(Echo("after")) == "after"


async def test_ask_deadline_while_queued_never_runs() -> None:
    """An ask whose deadline passes while queued is removed and never runs."""
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(Sleeper, name="s")
        async with anyio.create_task_group() as tg:
            # Ahead of it, a handler that runs until its caller gives up: the ask can
            # only expire while queued, however long anything takes.
            tg.start_soon(lambda: ref.ask(Sleep(3600), timeout=None))
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(10), pytest.raises(fiefdom.AskTimeout) as info:
                await ref.ask(Echo("never"), timeout=0.05)
            tg.cancel_scope.cancel()  # the caller gives up: the handler is cancelled
        assert info.value.phase == "queued"
        assert await ref.ask(Echo("later")) == "later"
        stats = ref.statistics()
        assert stats.messages_handled == 2


class Bad(msgspec.Struct):
    pass


async def test_domain_call_runs_inside_the_key_actor() -> None:
    """domain.call runs a function with the key's actor instance, in its turn."""
    async with fiefdom.ActorSystem(name="t") as system:
        domain = system.domain("d", lambda key: Sleeper())

        async def peek(actor: Sleeper) -> list[str]:
            return list(actor.log)

        await domain.ask("k", Echo("one"))
        assert await domain.call("k", peek) == ["one"]
