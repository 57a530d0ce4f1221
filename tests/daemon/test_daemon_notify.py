"""systemd readiness: a real daemon process given ``NOTIFY_SOCKET`` (a unix datagram
socket the test binds, as systemd does for ``Type=notify``) sends ``READY=1`` once it
answers /readyz and ``STOPPING=1`` when a stop begins."""

from __future__ import annotations

import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import READY_DEADLINE, DaemonProcess, write_config

HANG_GUARD = READY_DEADLINE  # seconds a receive may block before the test fails


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound unix datagram socket and its path (short: sun_path has 108 bytes)."""
    path = Path("/tmp") / f"fiefdom-notify-{uuid.uuid4().hex[:12]}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(HANG_GUARD)
    try:
        yield sock, str(path)
    finally:
        sock.close()
        path.unlink(missing_ok=True)


def _receive(sock: socket.socket, daemon: DaemonProcess) -> bytes:
    try:
        return sock.recv(4096)
    except TimeoutError:
        raise AssertionError(f"no notification within {HANG_GUARD}s:\n{daemon.log()}") from None


def test_ready_then_stopping_are_sent(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """The first datagram is READY=1, sent when /readyz already answers 200; SIGTERM
    brings STOPPING=1, and the daemon then exits 0 having sent nothing else."""
    sock, path = notify_socket
    daemon = DaemonProcess(write_config(tmp_path), env={"NOTIFY_SOCKET": path})
    daemon.launch()
    try:
        assert _receive(sock, daemon) == b"READY=1"
        daemon.wait_ready()
        assert daemon.http("/readyz")[0] == 200
        daemon.signal(signal.SIGTERM)
        assert _receive(sock, daemon) == b"STOPPING=1"
        assert daemon.wait() == 0
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(4096)
    finally:
        daemon.stop()


def test_abstract_socket_address(tmp_path: Path) -> None:
    """``NOTIFY_SOCKET=@name`` names a socket in the abstract namespace, as systemd
    may pass it: READY=1 arrives there too."""
    name = f"fiefdom-notify-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(HANG_GUARD)
        with DaemonProcess(write_config(tmp_path), env={"NOTIFY_SOCKET": f"@{name}"}) as daemon:
            assert _receive(sock, daemon) == b"READY=1"


def test_no_notify_socket_sends_nothing_and_runs(tmp_path: Path) -> None:
    """Without NOTIFY_SOCKET (an empty one counts as unset) the daemon starts and
    stops as always: exit status 0."""
    with DaemonProcess(write_config(tmp_path), env={"NOTIFY_SOCKET": ""}) as daemon:
        assert daemon.http("/readyz")[0] == 200
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
