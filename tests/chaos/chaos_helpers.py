"""Helpers of the chaos suite: waiting on conditions under a hang guard, a daemon
configuration on either dialect, a bare websocket client that can vanish at any byte,
and a private PostgreSQL instance the tests may stop and start."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import math
import os
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import anyio
import pytest
from daemon_harness import DaemonProcess, write_config
from raw_websocket import open_websocket, read_frame, ws_frame

# How long a condition may take before the test calls it a hang. Generous on purpose:
# the suite asserts that progress happens, never how fast.
HANG_GUARD = 60.0


async def wait_until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = HANG_GUARD,
    what: str = "the condition",
    poll: float = 0.01,
) -> float:
    """Poll ``condition`` until true and return how long that took; fail naming
    ``what`` after ``timeout`` seconds."""
    start = time.monotonic()
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        await anyio.sleep(poll)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` percentile (0-100) of ``values`` by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def daemon_config(folder: Path, store_url: str | None, *, concurrency: int = 10) -> Path:
    """A test daemon's configuration on ``store_url`` (None: SQLite in its data folder)
    hosting the test app, polling its queue often."""
    store = "" if store_url is None else f"[store]\nurl = {json.dumps(store_url)}\n"
    return write_config(
        folder,
        extra=f"{store}\n[jobs]\npoll_interval = 0.1\n"
        f"[jobs.queues.default]\nconcurrency = {concurrency}\n",
    )


def logged_errors(daemon: DaemonProcess) -> list[str]:
    """The lines of the daemon's log at level error or above, and tracebacks."""
    text = daemon.log_path.read_text(errors="replace")
    marks = ("[error", "[critical", "Traceback")
    return [line for line in text.splitlines() if any(m in line for m in marks)]


# -- a websocket client that can disappear at any instant -----------------------------


class RawWebSocket:
    """A websocket spoken by hand over a TCP stream, so that a test can send half a
    frame, or leave without a closing handshake (with a FIN, or a RST)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, url: str, token: str) -> RawWebSocket:
        return cls(*await open_websocket(url, token))

    def send(self, frame: dict[str, object]) -> None:
        self.writer.write(ws_frame(json.dumps(frame).encode()))

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_frame(self) -> bytes:
        """The payload of the next server frame."""
        return await read_frame(self.reader)

    def vanish(self, *, reset: bool) -> None:
        """Leave at once: no closing handshake; ``reset`` sends a RST instead of a FIN."""
        sock = self.writer.get_extra_info("socket")
        if reset and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


# -- a private PostgreSQL instance ---------------------------------------------------


def postgres_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: ``pg_config --bindir``, else the newest
    ``/usr/lib/postgresql/*/bin``."""
    candidates: list[str] = []
    if shutil.which("pg_config"):
        found = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if found:
            candidates.append(found)
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda p: int(Path(p).parent.name), reverse=True)
    for folder in candidates:
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivatePostgres:
    """A PostgreSQL server of the test's own (``initdb`` in a temporary folder, trust
    authentication, a free port), which the test may stop and start at will. PostgreSQL
    refuses to run as root: as root, every command runs as the ``postgres`` user."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        # Not under pytest's tmp_path: that folder is private to the user running the
        # tests, and the server's user must reach its data.
        self.folder = Path(tempfile.mkdtemp(prefix="fiefdom-chaos-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self.prefix, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n"
                f"{result.stderr}\n{log}"
            )

    def init(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )

    def start(self) -> None:
        """Start the server and return once it accepts connections (``pg_ctl -w``)."""
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=50"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends sessions politely, ``immediate`` as a crash."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            # Already stopped (or never started): nothing to stop, only to remove.
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


# -- a well-behaved control client ---------------------------------------------------


class Control:
    """A control-channel client over aiohttp's websocket: one request at a time, its
    reply found by id (JSON text frames)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._next = 1

    async def request(self, frame_type: str, /, **fields: object) -> dict[str, Any]:
        frame_id = self._next
        self._next += 1
        await self.ws.send_json({"type": frame_type, "id": frame_id, **fields})
        while True:
            reply: dict[str, Any] = await self.ws.receive_json()
            if reply.get("id") == frame_id:
                return reply


@contextlib.asynccontextmanager
async def control(url: str, token: str) -> AsyncIterator[Control]:
    """A websocket to the daemon at ``url``, authenticated by its upgrade request."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.ws_connect(url.replace("http://", "ws://") + "/ws") as ws,
    ):
        yield Control(ws)


async def http_get(url: str, token: str) -> tuple[int, bytes]:
    """GET ``url`` with the token; (status, body)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session, session.get(url) as response:
        return response.status, await response.read()


def _unavailable(message: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(message + "; CI requires it")
    pytest.skip(message)


def running_private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the test's own, running; removed afterwards (a test
    module makes it its fixture: ``private_postgres = pytest.fixture(...)``). Missing
    server binaries skip the test, and fail it under CI."""
    bindir = postgres_bindir()
    if bindir is None:
        _unavailable(
            "initdb and pg_ctl were not found (pg_config --bindir, /usr/lib/postgresql/*/bin):"
            " install the PostgreSQL server package"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root without a 'postgres' user to run PostgreSQL as")
    server = PrivatePostgres(bindir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()
