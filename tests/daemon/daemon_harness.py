"""Runs the real daemon as a subprocess from a temporary configuration: the OS picks
its port (it writes the address to ``control.json`` in its data folder), and the
harness waits on ``/readyz`` with a deadline instead of sleeping. A daemon serving
TLS is probed over https, trusting ``ssl_context``."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).parent / "app"
READY_DEADLINE = 30.0


def write_config(
    folder: Path,
    *,
    modules: tuple[str, ...] = ("hosted_app",),
    extra: str = "",
    control: str = "",
    shutdown_timeout: float = 10.0,
    listen: str = "127.0.0.1:0",
    loop: str = "auto",
    log_format: str = "console",
) -> Path:
    """A configuration for a test daemon in ``folder`` (data under ``folder/data``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(
        f"""
[daemon]
name = "test-daemon"
data_dir = "data"
shutdown_timeout = {shutdown_timeout}
log_level = "info"
log_format = "{log_format}"
loop = "{loop}"
modules = {json.dumps(list(modules))}
python_path = [{json.dumps(str(APP_DIR))}]

[control]
listen = "{listen}"
messages_per_second = 100000.0
burst = 100000
{control}

{extra}
""",
        encoding="utf-8",
    )
    return path


_LIMITED = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[3:]])"
)


def with_open_files(command: list[str], soft: int, hard: int) -> list[str]:
    """``command`` (a Python one, ``sys.executable`` first) run with its limit on open
    files set to ``soft`` and ``hard`` (a process may lower its hard limit, not raise it)."""
    assert command[0] == sys.executable
    return [sys.executable, "-c", _LIMITED, str(soft), str(hard), *command[1:]]


class DaemonProcess:
    """One daemon subprocess; ``start()`` returns once ``/readyz`` answers 200."""

    def __init__(
        self, config: Path, env: Mapping[str, str] | None = None, token: str | None = None
    ) -> None:
        self.config = config
        self.folder = config.parent
        self.data = self.folder / "data"
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.folder / f"daemon-{time.monotonic_ns()}.log"
        self.url = ""
        self.token = token or ""
        self.cwd: Path | None = None
        # What the probes (``http``) verify a TLS daemon's certificate with.
        self.ssl_context: ssl.SSLContext | None = None

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/ws"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "fiefdom.cli", "serve", "--config", str(self.config)]

    def start(self) -> DaemonProcess:
        self.launch()
        try:
            self.wait_ready()
        except BaseException:
            # Callers stop() only a daemon start() returned: one that never came up must not
            # be left running, nor its log file open.
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        """Wait until the launched process has published its own address (a killed
        daemon's control.json may still be there until then) and answers /readyz."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_DEADLINE
        while (published := self._published()) is None or published.get("pid") != self.proc.pid:
            self._check_alive(deadline, "write its control.json")
        self.url = str(published["url"])
        if not self.token:
            self.token = (self.data / "admin.token").read_text().strip()
        while self.http("/readyz")[0] != 200:
            self._check_alive(deadline, "answer /readyz")

    def _published(self) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = json.loads((self.data / "control.json").read_text())
        except (OSError, ValueError):
            return None  # not written yet, or being replaced
        return info

    def launch(self) -> None:
        """Start the process without waiting for anything."""
        env = {**os.environ, **self.env}
        if self.proc is not None:
            assert self.proc.poll() is not None, "the daemon is still running"
            self.log_file.close()
        # Appending: a restarted daemon's log follows the previous run's.
        self.log_file = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(), stdout=self.log_file, stderr=subprocess.STDOUT, env=env, cwd=self.cwd
        )

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _check_alive(self, deadline: float, what: str) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"daemon exited with {self.proc.returncode} before it could {what}:\n{self.log()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"daemon did not {what} within {READY_DEADLINE}s:\n{self.log()}")
        # Polling a condition under a deadline: the interval only bounds the cost.
        time.sleep(0.02)

    def http(self, path: str, token: str | None = "default") -> tuple[int, bytes]:
        """GET ``path`` with the admin token (or ``token``; None sends no header)."""
        request = urllib.request.Request(self.url + path)
        presented = self.token if token == "default" else token
        if presented is not None:
            request.add_header("Authorization", f"Bearer {presented}")
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.ssl_context) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError):
            return 0, b""

    def json(self, path: str) -> Any:
        status, body = self.http(path)
        assert status == 200, (status, body)
        return json.loads(body)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Terminate (then kill) the process if it still runs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self.log_file.close()


TOKENS = {
    "read": "read-token-0123456789",
    "operate": "operate-token-0123456789",
    "admin": "admin-token-0123456789",
}
TOKENS_TOML = "\n".join(
    f'[[control.tokens]]\nrole = "{role}"\ntoken = "{token}"\n' for role, token in TOKENS.items()
)
