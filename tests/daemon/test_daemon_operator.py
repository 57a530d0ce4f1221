"""What an operator meets around a real daemon: probes without a token, /metrics
behind one off loopback (``control.metrics_auth``), no versions in the ``Server``
header, the admin token's path in the log, log lines as JSON when stderr is not a
terminal, engine and pool settings from config.toml, and one line for a bad one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from daemon_harness import DaemonProcess, write_config

from fiefdom.daemon import load_config
from fiefdom.daemon._jobs import engine_settings
from fiefdom.daemon._logging import resolve_format
from fiefdom.jobs import Retention
from fiefdom.protocol import ControlSettings


def _headers(daemon: DaemonProcess, path: str) -> tuple[int, str | None]:
    request = urllib.request.Request(daemon.url + path)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Server")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Server")


def test_probes_answer_without_a_token_and_the_server_header_hides_versions(
    daemon: DaemonProcess,
) -> None:
    """/healthz and /readyz answer 200 with no Authorization header (load balancers and
    Kubernetes probes send none); every response, a refusal and a 404 included, says
    ``Server: fiefdom`` and names no Python or aiohttp version."""
    assert daemon.http("/healthz", token=None)[0] == 200
    status, body = daemon.http("/readyz", token=None)
    assert status == 200
    assert json.loads(body)["ready"] is True
    for path, expected in [("/healthz", 200), ("/readyz", 200), ("/schema", 401), ("/nope", 404)]:
        assert _headers(daemon, path) == (expected, "fiefdom")


def test_metrics_need_no_token_on_loopback(daemon: DaemonProcess) -> None:
    """Listening on 127.0.0.1 with metrics_auth unset, /metrics answers without a token."""
    status, body = daemon.http("/metrics", token=None)
    assert status == 200
    assert b"fiefdom_ws_connections" in body


def test_metrics_need_a_token_when_metrics_auth_is_on(tmp_path: Path) -> None:
    """``metrics_auth = true`` puts /metrics behind a token even on loopback; the probes
    stay open."""
    with DaemonProcess(write_config(tmp_path, control="metrics_auth = true")) as daemon:
        assert daemon.http("/metrics", token=None)[0] == 401
        assert daemon.http("/metrics")[0] == 200
        assert daemon.http("/readyz", token=None)[0] == 200


def test_metrics_need_a_token_off_loopback_by_default(tmp_path: Path) -> None:
    """Listening on every interface with metrics_auth unset, /metrics needs a token."""
    with DaemonProcess(write_config(tmp_path, listen="0.0.0.0:0")) as daemon:
        assert daemon.http("/metrics", token=None)[0] == 401
        assert daemon.http("/metrics")[0] == 200
        assert daemon.http("/healthz", token=None)[0] == 200


@pytest.mark.parametrize(
    ("listen", "setting", "required"),
    [
        ("127.0.0.1:8765", None, False),
        ("[::1]:8765", None, False),
        ("localhost:8765", None, False),
        ("0.0.0.0:8765", None, True),
        ("10.1.2.3:8765", None, True),
        ("myhost:8765", None, True),
        ("127.0.0.1:8765", True, True),
        ("0.0.0.0:8765", False, False),
    ],
)
def test_metrics_auth_default_depends_on_the_address(
    listen: str, setting: bool | None, required: bool
) -> None:
    """Unset, metrics_auth is off only for a loopback address; set, it decides."""
    settings = ControlSettings(listen=listen, metrics_auth=setting)
    assert settings.metrics_auth_required() is required


def _log_lines(daemon: DaemonProcess) -> list[str]:
    return daemon.log_path.read_text().splitlines()


def test_first_start_logs_where_the_admin_token_is(tmp_path: Path) -> None:
    """The first start writes admin.token and says so with its path; every start's
    ready line names it; a restart does not claim to have written it again. With
    stderr not a terminal and log_format auto, each line is a JSON object."""
    daemon = DaemonProcess(write_config(tmp_path, log_format="auto"))
    token_path = str((tmp_path / "data" / "admin.token").resolve())
    try:
        daemon.start()
        daemon.stop()
        daemon.start()
    finally:
        daemon.stop()
    events = [json.loads(line) for line in _log_lines(daemon)]
    written = [e for e in events if e["event"].startswith("admin token written")]
    assert [e["path"] for e in written] == [token_path]
    ready = [e for e in events if e["event"] == "daemon ready"]
    assert [e["admin_token"] for e in ready] == [token_path, token_path]


def test_log_format_auto_is_console_on_a_terminal_and_json_elsewhere(tmp_path: Path) -> None:
    """``auto`` picks the console format for a terminal and JSON for a file or pipe."""
    primary, secondary = os.openpty()
    with (
        os.fdopen(secondary, "w") as terminal,
        (tmp_path / "log").open("w") as file,
    ):
        assert resolve_format("auto", terminal) == "console"
        assert resolve_format("auto", file) == "json"
        assert resolve_format("console", file) == "console"
        assert resolve_format("json", terminal) == "json"
    os.close(primary)


def test_engine_and_pool_settings_come_from_the_file(tmp_path: Path) -> None:
    """Every engine setting of ``[jobs]`` and the pool settings of ``[store]`` are read
    from config.toml and reach the engine's arguments."""
    path = tmp_path / "config.toml"
    path.write_text(
        """
[store]
pool_min_size = 2
pool_max_size = 20
statement_timeout = 30.0

[jobs]
poll_interval = 0.5
lease = 30.0
heartbeat = 6.0
rescue_interval = 4.0
batch_size = 50
drain_timeout = 12.0
max_snoozes = 7

[jobs.retention]
completed = 60.0
cancelled = 120.0
discarded = 180.0
every = 30.0
""",
        encoding="utf-8",
    )
    config = load_config(path, environ={})
    assert (config.store.pool_min_size, config.store.pool_max_size) == (2, 20)
    assert config.store.statement_timeout == 30.0
    assert engine_settings(config) == {
        "poll_interval": 0.5,
        "lease": 30.0,
        "heartbeat": 6.0,
        "rescue_interval": 4.0,
        "batch_size": 50,
        "max_snoozes": 7,
        "drain_timeout": 12.0,
        "retention": Retention(completed=60.0, cancelled=120.0, discarded=180.0, every=30.0),
        "cluster_listen": "127.0.0.1:0",
        "cluster_address": None,
    }
    path.write_text("[jobs.retention]\nenabled = false\n", encoding="utf-8")
    settings = engine_settings(load_config(path, environ={}))
    assert settings["retention"] is None
    # Unset, the drain's deadline is the daemon's shutdown_timeout.
    assert settings["drain_timeout"] == 30.0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "[jobs]\nlease = 10.0\nheartbeat = 10.0\n",
            "jobs.heartbeat: must be shorter than jobs.lease (10s), got 10s; "
            "leave it unset for a third of the lease",
        ),
        (
            "[store]\npool_min_size = 5\npool_max_size = 4\n",
            "store.pool_min_size: must be at most store.pool_max_size (4), got 5",
        ),
        ("[jobs]\nbatch_size = 0\n", "jobs.batch_size: expected `int` >= 1"),
    ],
)
def test_a_bad_engine_or_pool_setting_is_one_line_and_exit_2(
    tmp_path: Path, extra: str, expected: str
) -> None:
    """A wrong engine or pool setting stops `serve` with one line naming it, exit
    status 2, and no data folder created."""
    config = write_config(tmp_path, extra=extra)
    result = subprocess.run(
        [sys.executable, "-m", "fiefdom", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (2, f"fiefdom: error: {config}: {expected}\n")
    assert not (tmp_path / "data").exists()
