"""An embedded program prints nothing of fiefdom's logs until it configures logging
(the library never configures structlog or the standard library's logging itself);
once it does, the same events reach the destination it chose.

Each test runs the same real program in a child process: an actor system whose
actor crashes (the supervisor logs it at error) and a job engine on a SQLite file
whose job is discarded (logged at warning). Only the logging set-up differs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROGRAM = """
import logging
import sys

import anyio

import fiefdom
from fiefdom.jobs import JobContext, JobEngine
from fiefdom.storage import Job, JobOptions, JobState, open_store

mode = sys.argv[2]
if mode == "stdlib":
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )
elif mode == "structlog":
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


class Fail(Job):
    options = JobOptions(kind="logging.fail", max_attempts=1)


async def fail(job: Fail, ctx: JobContext[None]) -> None:
    raise RuntimeError("handler failed on purpose")


class Crasher(fiefdom.Actor[str]):
    async def receive(self, msg: str) -> None:
        raise RuntimeError("actor crashed on purpose")


async def main() -> None:
    async with fiefdom.ActorSystem(name="quiet") as system:
        crashed = anyio.Event()
        starts = 0

        class Counted(Crasher):
            async def on_start(self) -> None:
                nonlocal starts
                starts += 1
                if starts == 2:
                    crashed.set()

        ref = await system.spawn(Counted, name="crasher")
        await ref.tell("boom")
        with anyio.fail_after(30):
            await crashed.wait()
        store = open_store(f"sqlite:///{sys.argv[1]}")
        await store.open(migrate=True)
        async with store:
            engine = JobEngine(store, queues={"default": 1}, poll_interval=0.05)
            engine.register(Fail, fail)
            async with engine:
                result = await store.enqueue(Fail())
                with anyio.fail_after(30):
                    while True:
                        info = await store.get_job(result.id)
                        if info is not None and info.state is JobState.DISCARDED:
                            break
                        await anyio.sleep(0.02)


anyio.run(main)
"""


def _run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    program = tmp_path / "embedded.py"
    program.write_text(PROGRAM)
    return subprocess.run(
        [sys.executable, str(program), str(tmp_path / "jobs.db"), mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_an_embedded_program_prints_nothing_by_default(tmp_path: Path) -> None:
    """With no logging configured, an actor crash and a discarded job (both logged by
    the library) print nothing on stdout or stderr."""
    done = _run(tmp_path, "none")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == ""


def test_the_standard_librarys_logging_shows_the_same_events(tmp_path: Path) -> None:
    """The same program after ``logging.basicConfig()``: the events the previous test
    kept quiet appear under fiefdom's logger names, as ``event key=value`` lines with
    the traceback (so that test's silence is not for want of events)."""
    done = _run(tmp_path, "stdlib")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "ERROR fiefdom.supervisor child crashed" in done.stderr
    assert "RuntimeError: actor crashed on purpose" in done.stderr
    assert "fiefdom.jobs" in done.stderr
    assert "handler failed on purpose" in done.stderr
    assert "INFO fiefdom.system actor system started system='quiet'" in done.stderr


def test_a_structlog_configuration_of_the_application_is_used(tmp_path: Path) -> None:
    """Once the application configures structlog, the library's events go through that
    configuration (here: structlog's default renderer, to stderr), not through the
    standard library's logging."""
    done = _run(tmp_path, "structlog")
    assert done.returncode == 0, done.stderr
    assert "child crashed" in done.stderr
    assert "handler failed on purpose" in done.stderr
    assert "ERROR fiefdom.supervisor" not in done.stderr
