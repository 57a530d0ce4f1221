"""Data is hostile (GUARANTEES "error text"): an actor whose handler raises with a NUL
and a lone surrogate in its message, in a program whose logs go to a pipe (a strict
UTF-8 stream), crashes and restarts like any actor: the log line of the crash is
written (escaped) and the runtime goes on. The control case proves the stream
really refuses such text, so the test would catch a crash log written as is."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent(
    """
    import sys
    import anyio, fiefdom

    class Boom(fiefdom.Request[None]):
        pass

    class Ping(fiefdom.Request[str]):
        pass

    class A(fiefdom.Actor[Boom | Ping]):
        def __init__(self, key):
            pass

        async def receive(self, msg):
            if isinstance(msg, Boom):
                raise ValueError("bad \\x00 \\ud800 text")
            return "pong"

    async def main():
        async with fiefdom.ActorSystem(name="hostile") as system:
            domain = system.domain("d", A)
            for _ in range(3):
                try:
                    await domain.ask("k", Boom())
                except ValueError:
                    pass
            print(await domain.ask("k", Ping()), flush=True)

    if sys.argv[1:] == ["control"]:
        print("bad \\ud800 text", flush=True)
    else:
        if sys.argv[1:] == ["stdlib"]:
            import logging

            logging.basicConfig(stream=sys.stdout, level=logging.INFO)
        else:
            import structlog

            structlog.configure()  # its default: print to stdout
        anyio.run(main)
    """
)


def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {"PYTHONIOENCODING": "utf-8", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, *args], capture_output=True, env=env, timeout=60
    )


@pytest.mark.parametrize("logging_to", ["structlog", "stdlib"])
def test_a_crash_with_a_lone_surrogate_in_its_message_is_logged_and_the_runtime_goes_on(
    logging_to: str,
) -> None:
    """Three crashes with a hostile message, then a normal ask answers; exit 0. The
    program's logs go to stdout through structlog or through the standard library's
    logging (the library prints nothing until one is configured)."""
    done = _run(logging_to)
    out = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, (out, done.stderr.decode("utf-8", "replace"))
    assert out.count("actor crashed") == 3, out
    assert "\\ud800" in out  # escaped, not dropped
    assert "\npong\n" in out, out


def test_the_stream_of_the_program_really_refuses_a_lone_surrogate() -> None:
    """The control case: printing the text as is fails with UnicodeEncodeError."""
    done = _run("control")
    assert done.returncode != 0
    assert b"UnicodeEncodeError" in done.stderr
