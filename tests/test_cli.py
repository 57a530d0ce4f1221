"""The `fiefdom` command line against a real daemon subprocess: tables by default,
JSON with --json, the address and token found from the configuration and the data
folder, and errors as one line with a non-zero exit status."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "daemon"))

from daemon_harness import DaemonProcess, write_config

FIEFDOM = str(Path(sys.executable).parent / "fiefdom")


def fiefdom(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([FIEFDOM, *args], capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon hosting the test app, found by the CLI through its configuration."""
    with DaemonProcess(write_config(tmp_path_factory.mktemp("cli"))) as proc:
        yield proc


def test_status_table_and_json(daemon: DaemonProcess) -> None:
    """status prints the tree (actors and services) as a table, and as JSON with --json."""
    table = fiefdom("status", "--config", str(daemon.config)).stdout
    assert "ready" in table.splitlines()[0]
    assert "test-daemon/counter" in table
    assert "PATH" in table
    rows = {line.split()[0]: line.split()[1:3] for line in table.splitlines() if line}
    for service in ("store", "control", "jobs"):
        assert rows[f"test-daemon/{service}"] == ["service", "running"]
    data = json.loads(fiefdom("status", "--json", "--config", str(daemon.config)).stdout)
    assert data["name"] == "test-daemon"
    assert data["ready"] is True


def test_jobs_enqueue_list_show_and_retry(daemon: DaemonProcess) -> None:
    """jobs enqueue/ls/show work; retrying a job that is not final fails in one line."""
    config = ("--config", str(daemon.config))
    job = json.loads(
        fiefdom("jobs", "enqueue", "nap", '{"seconds": 300}', "--json", *config).stdout
    )
    listed = json.loads(fiefdom("jobs", "ls", "--kind", "nap", "--json", *config).stdout)
    assert job["id"] in [j["id"] for j in listed]
    shown = fiefdom("jobs", "show", str(job["id"]), *config).stdout
    assert "nap" in shown
    table = fiefdom("jobs", "ls", *config).stdout
    assert table.splitlines()[0].split()[:4] == ["ID", "KIND", "QUEUE", "STATE"]
    refused = fiefdom("jobs", "retry", str(job["id"]), *config, check=False)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("fiefdom: error: ")
    cancelled = json.loads(fiefdom("jobs", "cancel", str(job["id"]), "--json", *config).stdout)
    assert cancelled["id"] == job["id"]


def test_queues_pause_resume(daemon: DaemonProcess) -> None:
    """queues pause/resume change the queue's state as queues ls shows it."""
    config = ("--config", str(daemon.config))
    fiefdom("queues", "pause", "default", *config)
    queues = json.loads(fiefdom("queues", "ls", "--json", *config).stdout)
    assert {q["name"]: q["paused"] for q in queues}["default"] is True
    fiefdom("queues", "resume", "default", *config)
    assert "default" in fiefdom("queues", "ls", *config).stdout


def test_dump_writes_the_flight_recorder(daemon: DaemonProcess) -> None:
    """dump writes the flight recorder and prints where."""
    out = json.loads(fiefdom("dump", "--json", "--config", str(daemon.config)).stdout)
    assert Path(out["path"]).is_file()


def test_wrong_token_is_one_line_and_exit_1(daemon: DaemonProcess) -> None:
    """A refused token is reported in one line with exit status 1."""
    result = fiefdom(
        "status", "--config", str(daemon.config), "--token", "wrong-token-0123", check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "token" in result.stderr


def test_unreachable_daemon_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """No daemon at the address: one line naming it, exit status 1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result = fiefdom("status", "--url", url, "--token", "x" * 20, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert f"127.0.0.1:{port}" in result.stderr


def test_no_token_anywhere_is_one_line(tmp_path: Path) -> None:
    """Without a token in the options, environment or data folder: a clear line."""
    config = write_config(tmp_path)
    result = fiefdom("status", "--config", str(config), check=False)
    assert result.returncode == 1
    assert "admin.token" in result.stderr


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    """migrate applies the migrations to a fresh store and prints the version."""
    config = write_config(tmp_path)
    out = json.loads(fiefdom("migrate", "--json", "--config", str(config)).stdout)
    assert out["schema_version"] >= 1
    assert "schema at version" in fiefdom("migrate", "--config", str(config)).stdout


def test_drain_then_stop(tmp_path: Path) -> None:
    """drain reports not ready and keeps serving; stop ends the daemon with exit 0."""
    with DaemonProcess(write_config(tmp_path)) as daemon:
        config = ("--config", str(daemon.config))
        fiefdom("drain", "--wait", "30", *config)
        status = json.loads(fiefdom("status", "--json", *config).stdout)
        assert status["draining"] is True
        assert status["ready"] is False
        assert daemon.http("/readyz")[0] == 503
        fiefdom("stop", *config)
        assert daemon.wait(60) == 0


def test_actors_pause_resume_and_stop(daemon: DaemonProcess) -> None:
    """actors pause/resume/stop act on an exposed actor or domain key; ls and status show it."""
    config = ("--config", str(daemon.config))
    assert fiefdom("actors", "pause", "counter", *config).stdout == "counter paused\n"
    targets = json.loads(fiefdom("actors", "ls", "--json", *config).stdout)
    assert {t["name"]: t["paused"] for t in targets}["counter"] is True
    table = fiefdom("actors", "ls", *config).stdout
    assert table.splitlines()[0].split() == ["TARGET", "KIND", "PAUSED", "MESSAGES"]
    status = fiefdom("status", *config).stdout
    assert "running (paused)" in next(line for line in status.splitlines() if "/counter" in line)
    resumed = json.loads(fiefdom("actors", "resume", "counter", "--json", *config).stdout)
    assert resumed == {"target": "counter", "key": None, "done": "resumed"}
    fiefdom("actors", "pause", "accounts", "--key", "cli", *config)
    status = fiefdom("status", *config).stdout
    assert "(paused keys: cli)" in status
    fiefdom("actors", "resume", "accounts", "--key", "cli", *config)
    stopped = fiefdom("actors", "stop", "accounts", "--key", "cli", "--wait", "30", *config)
    assert stopped.stdout == "accounts key cli stopped\n"
    whole = fiefdom("actors", "stop", "accounts", *config).stdout
    assert whole == "accounts: every live activation stopped\n"


@pytest.mark.parametrize(
    "args",
    [("pause", "nobody"), ("resume", "counter", "--key", "k"), ("stop", "nobody")],
    ids=["unknown-target", "key-on-an-actor", "stop-unknown"],
)
def test_actors_errors_are_one_line(daemon: DaemonProcess, args: tuple[str, ...]) -> None:
    """A refused actor command prints one line on stderr and exits 1."""
    result = fiefdom("actors", *args, "--config", str(daemon.config), check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("fiefdom: error: ")
