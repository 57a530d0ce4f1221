"""Subprocesses owned by actors (GUARANTEES 000/1a): a deadline kills and reaps the
process before the key takes its next message; stopping the actor or cancelling the
caller leaves no child process behind."""

from __future__ import annotations

import asyncio
import itertools
import os
import pathlib
import sys
import time
from typing import Any

import anyio
import pytest

import fiefdom


class RunSleep(fiefdom.Request[str]):
    """Runs ``sleep 30`` through fiefdom.run_process; with a ``pidfile``, through a shell
    that writes its pid there, then becomes the ``sleep``."""

    pidfile: str | None = None


class Echo(fiefdom.Request[str]):
    tag: str


class Run(fiefdom.Request[fiefdom.ProcessResult]):
    command: list[str]
    input: bytes | None = None
    check: bool = True


class Worker(fiefdom.Actor[RunSleep | Echo | Run]):
    """Logs handler entry and exit; exits are recorded even on cancellation."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def receive(self, msg: RunSleep | Echo | Run) -> object:
        match msg:
            case RunSleep(pidfile=pidfile):
                self.log.append("sleep enter")
                command = ["sleep", "30"]
                if pidfile is not None:
                    command = ["sh", "-c", f'echo $$ > "{pidfile}"; exec sleep 30']
                try:
                    await fiefdom.run_process(command)
                finally:
                    self.log.append("sleep exit")
                return "woke"
            case Echo(tag=tag):
                self.log.append(f"echo {tag}")
                return tag
            case Run(command=command, input=data, check=check):
                return await fiefdom.run_process(command, input=data, check=check)
        raise AssertionError(msg)


def is_gone(pid: int) -> bool:
    """True when no process (not even a zombie) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return not pathlib.Path(f"/proc/{pid}").exists()
    return False


async def wait_for_pid(stats: object) -> int:
    """Poll the actor's statistics until its process is listed."""
    assert callable(stats)

    def processes() -> tuple[int, ...]:
        current = stats()  # None while a domain key is not active yet
        return () if current is None else tuple(current.processes)

    with anyio.fail_after(10):
        # Statistics are computed on demand: there is no event to wait on.
        while not processes():  # noqa: ASYNC110
            await anyio.sleep(0.01)
    (pid,) = processes()
    assert isinstance(pid, int)
    return pid


async def _sleep_past_its_deadline(
    domain: fiefdom.Domain[str, Any], key: str, log: list[str], pidfile: pathlib.Path
) -> tuple[BaseException, list[str]]:
    """Ask ``key`` for a sleep whose shell writes ``pidfile``, with a 0.2 s deadline, and
    once its handler began (or the ask ended unrun) an Echo, queued behind it if it
    still runs; return what the sleep's ask raised and the Echo's replies."""
    outcome: list[BaseException] = []
    replies: list[str] = []

    async def first() -> None:
        try:
            await domain.ask(key, RunSleep(str(pidfile)), timeout=0.2)
        except fiefdom.AskTimeout as exc:
            outcome.append(exc)

    async def second() -> None:
        replies.append(await domain.ask(key, Echo("second"), timeout=10))

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        # The handler began, or the ask ended unrun: a condition, polled.
        while not (log or outcome):  # noqa: ASYNC110
            await anyio.sleep(0.01)
        tg.start_soon(second)
    return outcome[0], replies


async def test_deadline_kills_the_process_before_the_key_moves_on(
    tmp_path: pathlib.Path,
) -> None:
    """000/1a: a handler in `sleep 30` asked with a 0.2 s deadline: AskTimeout(running), the
    process is gone by pid, and the next message for the key starts only after the
    first handler has returned.

    The deadline starts as the ask is sent, before the key's actor is activated and the
    process started: on a loaded machine it may pass before the process ran (the ask
    expired queued, or its handler was cancelled before the process wrote its pid).
    Such an attempt is checked for what it did, and the test asks again, of a key of
    its own, until the process ran."""
    logs: dict[str, list[str]] = {}
    async with fiefdom.ActorSystem(name="t") as system:
        domain = system.domain("files", lambda key: Worker(logs.setdefault(key, [])))
        with anyio.fail_after(30):  # a hang guard
            for attempt in itertools.count():
                key, pidfile = f"f{attempt}", tmp_path / f"f{attempt}.pid"
                log = logs.setdefault(key, [])
                outcome, replies = await _sleep_past_its_deadline(domain, key, log, pidfile)
                assert isinstance(outcome, fiefdom.AskTimeout)
                assert replies == ["second"]
                if outcome.phase == "queued":
                    assert log == ["echo second"]  # it never ran
                    continue
                assert outcome.phase == "running"
                assert outcome.handler_exited
                assert log == ["sleep enter", "sleep exit", "echo second"]
                assert domain.key_statistics(key).processes == ()  # type: ignore[union-attr]
                written = pidfile.read_text() if pidfile.exists() else ""
                if written.endswith("\n"):  # the process ran: it must be gone
                    break
        assert is_gone(int(written))


async def test_stopping_the_actor_leaves_no_child_process() -> None:
    """An actor stopped at its shutdown deadline while running a process kills and reaps it."""
    log: list[str] = []
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Worker(log), name="w", shutdown=0.1)
        await ref.tell(RunSleep())
        pid = await wait_for_pid(ref.statistics)
    assert is_gone(pid)
    assert log == ["sleep enter", "sleep exit"]


async def test_caller_cancellation_leaves_no_child_process() -> None:
    """A caller that gives up cancels the handler, which kills and reaps its process."""
    log: list[str] = []
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Worker(log), name="w")
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(ref.ask, RunSleep())
                pid = await wait_for_pid(ref.statistics)
                scope.cancel()
        assert await ref.ask(Echo("after")) == "after"  # runs only once the handler returned
        assert is_gone(pid)
        assert log == ["sleep enter", "sleep exit", "echo after"]


async def test_passivation_and_domain_stop_leave_no_child_process() -> None:
    """Leaving the system while a domain key runs a process kills and reaps it."""
    log: list[str] = []
    async with fiefdom.ActorSystem(name="t") as system:
        domain = system.domain("d", lambda key: Worker(log), shutdown=0.1)
        await domain.tell("k", RunSleep())
        pid = await wait_for_pid(lambda: domain.key_statistics("k"))
    assert is_gone(pid)
    assert log == ["sleep enter", "sleep exit"]


async def test_run_process_returns_output_and_checks_the_status() -> None:
    """run_process returns the exit status and output; check=True raises ProcessFailed."""
    async with fiefdom.ActorSystem(name="t") as system:
        ref = await system.spawn(lambda: Worker([]), name="w")
        result = await ref.ask(
            Run([sys.executable, "-c", "import sys; print(sys.stdin.read())"], input=b"hello")
        )
        assert (result.returncode, result.stdout.strip()) == (0, b"hello")
        failing = [sys.executable, "-c", "import sys; sys.stderr.write('bad'); sys.exit(3)"]
        with pytest.raises(fiefdom.ProcessFailed) as info:
            await ref.ask(Run(failing))
        assert (info.value.returncode, info.value.stderr) == (3, b"bad")
        assert "status 3" in str(info.value)
        unchecked = await ref.ask(Run(failing, check=False))
        assert unchecked.returncode == 3


def is_dead(pid: int) -> bool:
    """True when the process has exited (gone, or a zombie its new parent has not reaped)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def carrying(variable: str) -> list[int]:
    """The live (not zombie) processes whose environment holds ``variable``."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # gone meanwhile, or not ours
        if variable.encode() in environ and not is_dead(int(entry.name)):
            found.append(int(entry.name))
    return found


async def test_a_background_child_left_by_the_command_is_killed_on_cancellation(
    tmp_path: pathlib.Path,
) -> None:
    """A command whose shell exits at once but leaves a background child holding the
    pipes: cancelling the handler kills that child too (the whole process group).

    The 1 s deadline starts as the ask is queued: on a loaded machine it may pass
    before the shell wrote the child's pid (the ask expired queued, or its handler
    was cancelled while the process started or before the shell got that far). Such
    an attempt must leave no process of its command behind (each attempt's command
    carries a variable of its own in its environment, inherited by the child), and
    the test asks again until the command ran."""
    async with fiefdom.ActorSystem(name="proc") as system:
        ref = await system.spawn(lambda: Worker([]), name="w")
        with anyio.fail_after(60):  # a hang guard
            for attempt in itertools.count():
                pidfile = tmp_path / f"child{attempt}.pid"
                variable = f"FIEFDOM_TEST_ATTEMPT={tmp_path}/{attempt}"
                command = ["env", variable, "sh", "-c", f"sleep 30 & echo $! > {pidfile}"]
                with pytest.raises(fiefdom.AskTimeout) as info:
                    await ref.ask(Run(command), timeout=1.0)
                written = pidfile.read_text() if pidfile.exists() else ""
                if written.endswith("\n"):  # the command ran
                    break
                # An orphan is init's to reap: poll the /proc entries, for less
                # than the sleep's 30 s, so that a surviving child fails the test.
                with anyio.fail_after(10):
                    while carrying(variable):  # noqa: ASYNC110
                        await anyio.sleep(0.01)
        assert info.value.phase == "running"
        child = int(written)
        with anyio.fail_after(10):
            # The orphan is reaped by init, asynchronously: poll its /proc entry.
            while not is_dead(child):  # noqa: ASYNC110
                await anyio.sleep(0.01)


def children() -> set[int]:
    """This process's child processes."""
    return {
        int(pid)
        for task in pathlib.Path("/proc/self/task").iterdir()
        for pid in (task / "children").read_text().split()
    }


async def test_a_cancellation_while_the_process_starts_leaves_no_child_process(
    tmp_path: pathlib.Path,
) -> None:
    """Cancelled while run_process is still starting the process (forked, its pipes
    not yet connected), the call still terminates the whole group and reaps the
    leader before the cancellation goes on: a start cancelled half way is not left
    to the event loop's clean-up, which kills the leader alone."""
    leader_file, child_file = tmp_path / "leader", tmp_path / "child"
    script = f"sleep 30 & echo $! > {child_file}; echo $$ > {leader_file}; wait"
    before = children()
    task = asyncio.ensure_future(fiefdom.run_process(["sh", "-c", script]))
    # The start forks the process, then connects its pipes, which takes several more
    # turns of the event loop: it is seen forked a turn after it forked, still
    # starting, and cannot go on while this test holds the loop.
    with anyio.fail_after(10):
        while not children() - before:  # noqa: ASYNC110 (no event: /proc tells)
            await asyncio.sleep(0)
    # Hold the loop until the shell has started its background child and written
    # both pids (a condition polled without yielding: the start cannot finish).
    deadline = time.monotonic() + 10
    while not leader_file.exists() or not leader_file.read_text().endswith("\n"):
        assert time.monotonic() < deadline, "the shell never wrote its pid"
        time.sleep(0.005)  # noqa: ASYNC251 (holds the loop on purpose)
    task.cancel()
    # (A start cancelled half way and left to the event loop's clean-up would wait
    # here for the background child, which holds the pipes, to exit on its own.)
    with anyio.fail_after(10), pytest.raises(asyncio.CancelledError):
        await task
    leader, child = int(leader_file.read_text()), int(child_file.read_text())
    assert is_gone(leader)  # killed and reaped before the cancellation went on
    with anyio.fail_after(10):
        # The background child is init's to reap, asynchronously: poll its /proc entry.
        while not is_dead(child):  # noqa: ASYNC110
            await anyio.sleep(0.01)
