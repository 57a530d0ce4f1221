"""Ctrl-C ends the commands that follow a real daemon subprocess (``jobs watch``,
``logs -f``): a real ``fiefdom`` subprocess gets SIGINT at points found by waiting on
what it prints or does (connecting, subscribed, its first event printed, mid-stream),
while jobs are enqueued and run so that events stream, and must exit with 130 and
no traceback; also when the daemon stops answering (SIGSTOP) and when the follower
was started with SIGINT ignored, as a shell without job control starts a command in
the background (the CLI's Ctrl-C handling is its own: such a follower used to go on
until killed). A second Ctrl-C ends it at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

import fiefdom as fiefdom_client
from fiefdom import ControlError

sys.path.insert(0, str(Path(__file__).parent / "daemon"))

from daemon_harness import DaemonProcess, write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

FIEFDOM = str(Path(sys.executable).parent / "fiefdom")
# How long a follower may take to exit after its Ctrl-C, and to print what is waited
# for, before the test fails (generous: the point is whether it exits at all).
EXIT_LIMIT = 30.0
OUTPUT_LIMIT = 30.0
# Starts ``argv[2:]`` with SIGINT's disposition set to ``argv[1]`` (SIG_DFL: as from a
# terminal; SIG_IGN: as a shell without job control starts a background command). An
# ignored signal stays ignored across exec, a default one stays default.
LAUNCH = (
    "import os, signal, sys; "
    "signal.signal(signal.SIGINT, getattr(signal, sys.argv[1])); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)
DISPOSITIONS = ["SIG_DFL", "SIG_IGN"]


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FIEFDOM_")}


class Follower:
    """A ``fiefdom`` command started as a subprocess, its stdout and stderr read line
    by line by two threads (a pipe nobody reads would block its writes)."""

    def __init__(self, args: list[str], sigint: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, sigint, FIEFDOM, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_environ(),
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        """Wait until ``condition`` holds (checked as output comes, and at least every
        50 ms for conditions outside the output), failing past OUTPUT_LIMIT or if the
        command exits first."""
        deadline = time.monotonic() + OUTPUT_LIMIT
        with self._changed:
            while not condition():
                assert self.proc.poll() is None, (
                    f"the command exited ({self.proc.returncode}) before {what}:\n"
                    + "".join(self.err)
                )
                left = deadline - time.monotonic()
                assert left > 0, f"no {what} within {OUTPUT_LIMIT:g}s:\n" + "".join(self.err)
                self._changed.wait(min(left, 0.05))

    def stderr_says(self, text: str) -> None:
        self.wait_for(f"{text!r} on stderr", lambda: any(text in line for line in self.err))

    def lines_out(self, count: int) -> None:
        self.wait_for(f"{count} lines on stdout", lambda: len(self.out) >= count)

    def connected_to(self, port: int) -> None:
        """Wait until the command holds an established TCP connection to ``port``."""
        self.wait_for(f"a connection to port {port}", lambda: _connected(self.proc.pid, port))

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def exit_status(self) -> int:
        """Its exit status, once it has exited (at most EXIT_LIMIT seconds after its
        Ctrl-C); the test fails, saying so, if it is still running then."""
        try:
            status = self.proc.wait(timeout=EXIT_LIMIT)
        except subprocess.TimeoutExpired:
            self.close()
            pytest.fail(
                f"the command did not exit within {EXIT_LIMIT:g}s of its Ctrl-C:\n"
                + "".join(self.err)
            )
        for reader in self._readers:
            reader.join(EXIT_LIMIT)
        return status

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for reader in self._readers:
            reader.join(EXIT_LIMIT)
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()


def _connected(pid: int, port: int) -> bool:
    """Whether process ``pid`` has an established TCP connection to ``port``."""
    inodes: set[str] = set()
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{name}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    except OSError:
        return False
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as rows:
                lines = rows.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[3] == "01" and remote_port == port and fields[9] in inodes:
                return True
    return False


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon hosting the test app (its ``nap`` jobs stream two events each)."""
    config = write_config(
        tmp_path_factory.mktemp("interrupt"),
        extra="[jobs.retention]\nenabled = false\n[jobs.queues.default]\nconcurrency = 20\n",
    )
    with DaemonProcess(config) as proc:
        yield proc


@pytest.fixture
def stream(daemon: DaemonProcess) -> Iterator[None]:
    """Jobs enqueued without pause while the test runs, so that job events stream."""
    done = threading.Event()

    async def feed() -> None:
        async with fiefdom_client.connect(daemon.url, token=daemon.token) as client:
            while not done.is_set():
                await asyncio.gather(*(client.enqueue("nap", {"seconds": 0}) for _ in range(20)))

    def run() -> None:
        # ControlError: the daemon stopped answering (a test stops it); nothing more
        # to feed.
        with contextlib.suppress(ControlError):
            asyncio.run(feed())

    feeder = threading.Thread(target=run, name="enqueue nap jobs")
    feeder.start()
    try:
        yield
    finally:
        done.set()
        feeder.join(60)


@pytest.fixture
def stalled(daemon: DaemonProcess) -> Iterator[Callable[[], None]]:
    """Stops the daemon (SIGSTOP) when called: it neither reads nor answers; it is
    continued (SIGCONT) when the test ends."""
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        daemon.signal(signal.SIGSTOP)

    try:
        yield stop
    finally:
        if stopped:
            daemon.signal(signal.SIGCONT)


def _port(daemon: DaemonProcess) -> int:
    return int(daemon.url.rsplit(":", 1)[1].rstrip("/"))


def _assert_interrupted(follower: Follower) -> None:
    status = follower.exit_status()
    err = "".join(follower.err)
    assert status == 130, f"exit {status}:\n{err}"
    assert "Traceback" not in err, err


WATCH_INSTANTS = ["subscribed", "first event printed", "mid-stream"]


@pytest.mark.parametrize("sigint", DISPOSITIONS)
@pytest.mark.parametrize("instant", WATCH_INSTANTS)
def test_jobs_watch_ends_on_ctrl_c_under_a_stream_of_events(
    daemon: DaemonProcess, stream: None, instant: str, sigint: str
) -> None:
    """jobs watch, with job events streaming, exits 130 without a traceback on a
    Ctrl-C once subscribed, after its first event line, or after a few hundred; also
    when started with SIGINT ignored (a background command of a script)."""
    follower = Follower(["jobs", "watch", "--config", str(daemon.config)], sigint)
    try:
        follower.stderr_says("watching job events")
        if instant == "first event printed":
            follower.lines_out(1)
        elif instant == "mid-stream":
            follower.lines_out(300)
        follower.interrupt()
        _assert_interrupted(follower)
    finally:
        follower.close()


@pytest.mark.parametrize("sigint", DISPOSITIONS)
def test_jobs_watch_ends_on_ctrl_c_before_it_is_subscribed(
    daemon: DaemonProcess, stalled: Callable[[], None], sigint: str
) -> None:
    """A Ctrl-C while jobs watch waits for the daemon's answer to its connection (the
    daemon is stopped: nothing will come) ends it with 130, no traceback."""
    stalled()
    follower = Follower(["jobs", "watch", "--config", str(daemon.config)], sigint)
    try:
        follower.connected_to(_port(daemon))
        follower.interrupt()
        _assert_interrupted(follower)
        assert not follower.out
    finally:
        follower.close()


@pytest.mark.parametrize("sigint", DISPOSITIONS)
def test_jobs_watch_ends_on_ctrl_c_when_the_daemon_stops_answering(
    daemon: DaemonProcess, stream: None, stalled: Callable[[], None], sigint: str
) -> None:
    """Mid-stream, the daemon stops (SIGSTOP): it will neither acknowledge the
    unsubscription nor answer the websocket's close. A Ctrl-C still ends jobs watch
    with 130 and no traceback: nothing on its way out waits on the daemon for long."""
    follower = Follower(["jobs", "watch", "--config", str(daemon.config)], sigint)
    try:
        follower.stderr_says("watching job events")
        follower.lines_out(10)
        stalled()
        follower.interrupt()
        _assert_interrupted(follower)
    finally:
        follower.close()


def test_a_second_ctrl_c_ends_jobs_watch_at_once(
    daemon: DaemonProcess, stalled: Callable[[], None]
) -> None:
    """After a first Ctrl-C, jobs watch says it is closing and that a second one quits
    at once; the second ends it with 130 (the daemon is stopped: its close would wait)."""
    stalled()
    follower = Follower(["jobs", "watch", "--config", str(daemon.config)], "SIG_DFL")
    try:
        follower.connected_to(_port(daemon))
        follower.interrupt()
        follower.stderr_says("Ctrl-C again")
        follower.interrupt()
        _assert_interrupted(follower)
    finally:
        follower.close()


@pytest.mark.parametrize("sigint", DISPOSITIONS)
def test_logs_follow_ends_on_ctrl_c(daemon: DaemonProcess, stream: None, sigint: str) -> None:
    """logs -f exits 130 without a traceback on a Ctrl-C once it follows the log, also
    when started with SIGINT ignored."""
    follower = Follower(["logs", "-f", "--config", str(daemon.config)], sigint)
    try:
        follower.stderr_says("following the daemon's log")
        follower.interrupt()
        _assert_interrupted(follower)
    finally:
        follower.close()
