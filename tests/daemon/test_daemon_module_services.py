"""``await daemon.run_service(name, service)`` through real daemon subprocesses: a
module's aiohttp servers (an async function, an object with start and stop) serve
beside the daemon, stop after the job engine on SIGTERM (their ports close) and the
daemon exits 0; a service that crashes is restarted, and one that keeps crashing
escalates past its supervisor's intensity until the daemon stops with the error."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon_harness import DaemonProcess, write_config

import fiefdom

DEADLINE = 30.0


def wait_for(condition: Callable[[], bool], what: str, daemon: DaemonProcess) -> None:
    """Poll ``condition`` under a hang guard (the interval only bounds the cost)."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {DEADLINE}s:\n{daemon.log()}"
        time.sleep(0.02)


def read_port(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def refuses(port: int) -> bool:
    """Whether nothing listens on the port any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    except ConnectionRefusedError:
        return True
    return False


def service_stats(tree: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The statistics of the child at ``path`` in a status reply's tree."""
    if tree.get("path") == path:
        return tree
    for child in tree.get("children", []):
        found = service_stats(child, path)
        if found is not None:
            return found
    return None


def test_services_serve_and_stop_in_order_on_sigterm(tmp_path: Path) -> None:
    """Both servers answer (through the module's actor); SIGTERM stops the job engine
    and the control server first, then the object server, then the function server
    (reverse order of their start), both ports close, and the daemon exits 0."""
    daemon = DaemonProcess(write_config(tmp_path, modules=("http_service_app",)))
    with daemon:
        ports: dict[str, int] = {}
        for name in ("function", "object"):
            port_file = daemon.data / f"{name}.port"
            wait_for(lambda: read_port(port_file) is not None, f"the {name} port", daemon)  # noqa: B023 (called at once)
            port = read_port(port_file)
            assert port is not None
            ports[name] = port
        assert get(ports["function"], "/count") == "1"
        assert get(ports["object"], "/count") == "2"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.log()
        assert refuses(ports["function"])
        assert refuses(ports["object"])
        log = daemon.log()
        order = [
            log.index("job engine stopped"),
            log.index("control channel stopped"),
            log.index("object server closed"),
            log.index("function server closed"),
            log.index("store closed"),
        ]
        assert order == sorted(order), log


async def test_a_crashed_service_is_restarted(tmp_path: Path) -> None:
    """A service that crashes on its first run runs again, the daemon stays ready, and
    the tree counts the restart; SIGTERM still exits 0."""
    extra = "[app.crashing_service_app]\ncrash_runs = 1\n"
    config = write_config(tmp_path, modules=("crashing_service_app",), extra=extra)
    with DaemonProcess(config) as daemon:
        runs = daemon.data / "service-runs"
        wait_for(
            lambda: runs.exists() and len(runs.read_text().splitlines()) >= 2, "a rerun", daemon
        )
        async with fiefdom.connect(daemon.url, token=daemon.token) as client:
            status = await client.status()
        stats = service_stats(status.tree, "test-daemon/consumer/service")
        assert stats is not None, status.tree
        assert (stats["running"], stats["restarts"]) == (True, 1)
        assert status.ready
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.log()
    assert len(runs.read_text().splitlines()) == 2


def test_a_service_that_keeps_crashing_escalates(tmp_path: Path) -> None:
    """Past max_restarts its supervisor gives up and escalates to the daemon's root,
    which restarts it until its own intensity is exceeded: the daemon then stops with
    that error (exit status 1) instead of running on without the service."""
    extra = "[app.crashing_service_app]\ncrash_runs = 1000000\nmax_restarts = 1\n"
    config = write_config(tmp_path, modules=("crashing_service_app",), extra=extra)
    daemon = DaemonProcess(config)
    daemon.launch()
    try:
        code = daemon.wait()
    finally:
        daemon.stop()
    log = daemon.log_path.read_text(errors="replace")  # the whole log, not its tail
    assert code == 1, log[-6000:]
    assert "supervisor test-daemon/consumer exceeded its restart intensity" in log
    assert "fiefdom: error: supervisor test-daemon exceeded its restart intensity" in log
    runs = (daemon.data / "service-runs").read_text().splitlines()
    # Two runs per life of its supervisor (max_restarts = 1), more than one life.
    assert len(runs) > 2
