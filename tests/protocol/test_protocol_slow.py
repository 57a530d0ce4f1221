"""Slow and idle HTTP connections to the control port (real sockets sending part of
a request): each is closed once control.header_timeout (or body_timeout) has passed,
hundreds of them leave /healthz and /readyz answering, and a storm of the same error
logs one line per interval with a count."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import pytest
from daemon_harness import DaemonProcess, write_config

from fiefdom.protocol._repeats import RepeatFilter
from slow_sockets import Stream, close_writers, slow_sockets

GUARD = 60.0  # a hang guard, never a speed requirement


@contextlib.contextmanager
def _open_files(soft: int) -> Iterator[None]:
    """This process's soft limit on open files set to ``soft`` (capped by the hard one)."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (before, hard))


def _slow_sockets(
    daemon: DaemonProcess, count: int, partial: bytes
) -> AbstractAsyncContextManager[list[Stream]]:
    """``count`` connections to the daemon, each having sent ``partial`` and nothing more."""
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    return slow_sockets(host, int(port), count, partial)


async def test_partial_requests_are_closed_after_the_timeouts(tmp_path: Path) -> None:
    """Sockets that send half a request line, headers without their end, or a body
    shorter than announced are closed by the daemon (EOF, waited on under a hang guard)."""
    control = "header_timeout = 0.3\nbody_timeout = 0.3"
    with DaemonProcess(write_config(tmp_path, control=control)) as daemon:
        for partial in (
            b"GET /hea",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab",
        ):
            async with _slow_sockets(daemon, 5, partial) as sockets:
                for reader, _ in sockets:
                    with anyio.fail_after(GUARD):
                        rest = await reader.read()
                        while (more := await reader.read()) != b"":
                            rest += more
                    # Only the request whose headers were whole got an answer.
                    assert (b"200 OK" in rest) is partial.endswith(b"ab"), rest


async def test_health_answers_while_hundreds_of_slow_sockets_are_open(tmp_path: Path) -> None:
    """With 300 sockets holding half a request on a daemon that may open 256 files and
    serves 50 connections, /healthz and /readyz still answer: the oldest idle socket is
    closed for each newcomer, and probes have slots of their own."""
    control = "header_timeout = 600.0\nmax_http_connections = 50\nprobe_connections = 5"
    daemon = DaemonProcess(write_config(tmp_path, control=control))
    with _open_files(256):  # the daemon inherits the limit
        daemon.start()
    try:
        with _open_files(4096):
            async with _slow_sockets(daemon, 300, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"):
                for _ in range(3):
                    status, body = await anyio.to_thread.run_sync(daemon.http, "/healthz", None)
                    assert status == 200, body
                    status, body = await anyio.to_thread.run_sync(daemon.http, "/readyz")
                    assert status == 200, body
        assert "Too many open files" not in daemon.log()
    finally:
        daemon.stop()


@pytest.mark.parametrize("loop", ["asyncio", "auto"])
async def test_a_stalled_daemon_flooded_with_connections_stays_within_its_open_files(
    tmp_path: Path, loop: str
) -> None:
    """GUARANTEES 004/7, a flood of connections: a daemon that may open 256 files is
    stopped (SIGSTOP) while 600 sockets connect and send half a request. Resumed, it
    finds a full backlog with hundreds more behind it. It accepts one connection at a
    time and admits it (closing the oldest idle one) before the next, so no accept()
    fails for want of file descriptors, and /healthz answers. (Accepted in the event
    loop's own bursts, asyncio's held ~3 backlogs of sockets at once and ran out.)"""
    control = "header_timeout = 600.0\nmax_http_connections = 50\nprobe_connections = 5"
    daemon = DaemonProcess(write_config(tmp_path, control=control, loop=loop))
    with _open_files(256):  # the daemon inherits the limit
        daemon.start()
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    writers: list[asyncio.StreamWriter] = []

    async def connect() -> None:
        _, writer = await asyncio.open_connection(host, int(port))
        writers.append(writer)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()

    try:
        with _open_files(4096):
            daemon.signal(signal.SIGSTOP)
            try:
                flood = [asyncio.create_task(connect()) for _ in range(600)]
                # The backlog is full once the kernel lists a hundred connections.
                await anyio.to_thread.run_sync(_wait_established, daemon, 100)
            finally:
                daemon.signal(signal.SIGCONT)
            with anyio.fail_after(GUARD):
                await asyncio.gather(*flood)
            status, body = await anyio.to_thread.run_sync(daemon.http, "/healthz", None)
            assert status == 200, body
            await close_writers(writers)
        assert "Too many open files" not in daemon.log()
    finally:
        daemon.stop()


async def test_a_probe_accepted_in_one_burst_behind_slow_sockets_is_answered(
    tmp_path: Path,
) -> None:
    """A probe queued behind 100 slow sockets in the listen backlog (the daemon stopped
    with SIGSTOP while they connect) is accepted right after them, when the server may
    not list the last of them yet: it still closes the oldest of them and is answered."""
    control = "header_timeout = 600.0\nmax_http_connections = 50\nprobe_connections = 5"
    partial = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    answers: list[tuple[int, bytes]] = []

    async def probe(daemon: DaemonProcess) -> None:
        answers.append(await anyio.to_thread.run_sync(daemon.http, "/healthz", None))

    with DaemonProcess(write_config(tmp_path, control=control, loop="asyncio")) as daemon:
        daemon.signal(signal.SIGSTOP)
        try:
            async with _slow_sockets(daemon, 100, partial), anyio.create_task_group() as group:
                group.start_soon(probe, daemon)
                # The probe is in the backlog once the kernel lists one more connection
                # to the daemon's port than the slow sockets.
                await anyio.to_thread.run_sync(_wait_established, daemon, 101)
                daemon.signal(signal.SIGCONT)
        finally:
            daemon.signal(signal.SIGCONT)
    assert [status for status, _ in answers] == [200], answers


def _wait_established(daemon: DaemonProcess, count: int) -> None:
    """Wait (under the hang guard) until ``count`` connections to the daemon are up."""
    deadline = time.monotonic() + GUARD
    while _established(daemon) < count:
        assert time.monotonic() < deadline, f"{count} connections never came up"
        time.sleep(0.01)  # polling a condition: the interval only bounds the cost


def _established(daemon: DaemonProcess) -> int:
    """Established TCP connections to the daemon's port, counted from /proc/net/tcp."""
    port = int(daemon.url.rsplit(":", 1)[1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":
                    count += 1
    return count


def test_a_storm_of_one_error_logs_one_line_per_interval_with_a_count() -> None:
    """10,000 records of one kind within an interval let the first through; the first
    after the interval carries the count of those suppressed; another kind is apart."""
    now = [0.0]
    logger = logging.getLogger("fiefdom.test.storm")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    repeat = RepeatFilter(interval=10.0, clock=lambda: now[0])
    logger.addHandler(handler)
    logger.addFilter(repeat)
    logger.propagate = False
    try:
        error = OSError(24, "Too many open files")
        for _ in range(10_000):
            logger.error("socket.accept() out of system resource", exc_info=error)
        logger.error("another kind")
        now[0] = 10.5
        logger.error("socket.accept() out of system resource", exc_info=error)
    finally:
        logger.removeFilter(repeat)
        logger.removeHandler(handler)
        logger.propagate = True
    assert [r.getMessage() for r in records] == [
        "socket.accept() out of system resource",
        "another kind",
        "socket.accept() out of system resource (9999 more like it in the last 10s)",
    ]
    assert records[0].exc_info is not None
    assert records[2].exc_info is None  # the repeat is one line
