"""The README's walk-through of the command line runs as written: a daemon started
from a copy of the shipped ``config.toml`` (hosting ``examples/app.py``), then each
command of the README's list, in its order, with ``ID`` the job the ``enqueue``
printed, run with a terminal as its stdin on which "y" is typed (two commands ask
before they delete). Every command must exit 0; the two that follow events until
Ctrl-C get it once they say they are subscribed and must end with 130, as after a
Ctrl-C (also when this test runs with SIGINT ignored, as a background command of a
script is started, which they inherit); ``stop`` must end the daemon."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
FIEFDOM = str(Path(sys.executable).parent / "fiefdom")
HANG_GUARD = 60.0


def walkthrough() -> list[str]:
    """The commands of the README's walk-through block, comments removed."""
    found = re.search(r"they run as written[^\n]*\n\n```sh\n(.*?)```", README, flags=re.S)
    assert found, "the README's walk-through block is missing"
    commands = []
    for line in found[1].splitlines():
        command = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
        if command:
            assert command.startswith(".venv/bin/fiefdom "), command
            commands.append(command)
    return commands


def test_the_walkthrough_block_is_found_and_literal() -> None:
    """The block holds literal commands (no ``a|b`` alternatives a reader must expand)
    and covers the commands the README's first minutes promise."""
    commands = walkthrough()
    assert not [c for c in commands if "|" in c.split("'")[0]]
    joined = "\n".join(commands)
    for needed in ("jobs enqueue", "jobs watch", "call documents", "stop"):
        assert needed in joined


def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not path.exists():
        assert proc.poll() is None, "the daemon exited during its start"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command as a person at a terminal would: its stdin a terminal on which
    "y" is typed, for the commands that ask before they delete."""
    primary, secondary = os.openpty()
    try:
        os.write(primary, b"y\n")
        return subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            stdin=secondary,
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
        )
    finally:
        os.close(secondary)
        os.close(primary)


def _follow(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    """Run a command that follows events until Ctrl-C: SIGINT once it has said on
    stderr that it is subscribed; it must then end quietly with status 130. One
    still running a minute after its Ctrl-C fails the test (it is stopped with
    SIGTERM, then killed, only so that the test ends)."""
    with subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stderr is not None
        try:
            line = proc.stderr.readline().decode()
            assert "subscribed" in line or "watching" in line or "following" in line, line
            proc.send_signal(signal.SIGINT)
            try:
                # communicate: both pipes are read until it exits (a pipe nobody reads
                # would block its writes).
                _, err = proc.communicate(timeout=HANG_GUARD)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.communicate(timeout=HANG_GUARD)
                pytest.fail(
                    f"{argv}: still running {HANG_GUARD:g}s after its Ctrl-C; it needed SIGTERM"
                )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # 130: ended by Ctrl-C, as a shell reports it.
    assert proc.returncode == 130, f"{argv}: exit {proc.returncode}\n{err.decode()}"
    assert b"Traceback" not in err, err.decode()


@pytest.mark.slow
@pytest.mark.timeout(600)  # some 25 commands, each a new interpreter
def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """Each command of the walk-through exits 0 against a daemon of the shipped
    configuration; ``jobs ls`` says how many it shows, the ``call`` of ``Read``
    prints what ``Append`` wrote, and ``stop`` ends the daemon cleanly."""
    shutil.copy(ROOT / "config.toml", tmp_path / "config.toml")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIEFDOM_")}
    # Any free port (the shipped 8765 may be taken); the CLI finds the daemon through
    # data/control.json, as it does by default.
    env["FIEFDOM_CONTROL__LISTEN"] = "127.0.0.1:0"
    with (tmp_path / "serve.log").open("wb") as log:
        daemon = subprocess.Popen(
            [FIEFDOM, "serve"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_for(tmp_path / "data" / "control.json", daemon)
        job_id = ""
        for command in walkthrough():
            argv = [FIEFDOM, *shlex.split(command)[1:]]
            if "ID" in argv:
                assert job_id, f"{command}: no job enqueued before it"
                argv = [job_id if a == "ID" else a for a in argv]
            if argv[1:3] in (["jobs", "watch"], ["logs", "-f"]):
                # Followers until Ctrl-C: started, they must say they are subscribed,
                # then end on their Ctrl-C.
                _follow(argv, tmp_path, env)
                continue
            done = _run(argv, tmp_path, env)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            if argv[1:3] == ["jobs", "enqueue"]:
                found = re.search(r"enqueued job (\d+)", done.stdout)
                assert found, done.stdout
                job_id = found[1]
            if argv[1:3] == ["jobs", "ls"] and len(argv) == 3:
                assert "showing" in done.stdout
            if argv[1:4] == ["call", "documents", "Read"]:
                assert done.stdout.strip() == '"hello world"'
            if argv[1:2] == ["stop"]:
                assert daemon.wait(timeout=HANG_GUARD) == 0
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=HANG_GUARD)
