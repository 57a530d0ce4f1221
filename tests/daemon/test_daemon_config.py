"""The daemon's configuration, tokens, flight recorder, and the README's run command:
`fiefdom serve` on the default configuration starts and answers /readyz."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from daemon_harness import DaemonProcess, write_config

import fiefdom
from fiefdom.daemon import Config, ensure_admin_token, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_default_config_file_is_valid_and_loopback() -> None:
    """config.toml decodes; SQLite under the data folder; control on 127.0.0.1:8765;
    it hosts the example module the README walks through (examples/app.py)."""
    config = load_config(ROOT / "config.toml", environ={})
    assert config.control.listen == "127.0.0.1:8765"
    assert (config.daemon.modules, config.daemon.python_path) == (["app"], ["examples"])
    assert (ROOT / "examples" / "app.py").exists()
    assert config.store_url == f"sqlite:///{ROOT / 'data' / 'fiefdom.db'}"
    assert config.data_path == ROOT / "data"


def test_environment_overrides_single_settings(tmp_path: Path) -> None:
    """FIEFDOM_<SECTION>__<KEY> overrides one setting, converted to the field's type."""
    config = load_config(
        ROOT / "config.toml",
        environ={
            "FIEFDOM_CONTROL__LISTEN": "127.0.0.1:9000",
            "FIEFDOM_CONTROL__MAX_CONNECTIONS": "7",
            "FIEFDOM_DAEMON__DATA_DIR": str(tmp_path),
            "FIEFDOM_DAEMON__MODULES": '["a.b", "c"]',
            "FIEFDOM_JOBS__QUEUES__DEFAULT__CONCURRENCY": "3",
        },
    )
    assert config.control.listen == "127.0.0.1:9000"
    assert config.control.max_connections == 7
    assert config.data_path == tmp_path
    assert config.daemon.modules == ["a.b", "c"]
    assert config.jobs.queues["default"].concurrency == 3


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ("[control]\nlisten = 8765\n", {}, "control.listen: expected `str`, got `int`"),
        ("[control]\nlistne = '1'\n", {}, "unknown key 'control.listne'"),
        ("[contrl]\n", {}, "unknown key 'contrl'"),
        ("", {"FIEFDOM_CONTROL__MAX_CONNECTIONS": "many"}, "FIEFDOM_CONTROL__MAX_CONNECTIONS"),
        ("[daemon]\nlog_level = 'loud'\n", {}, "daemon.log_level"),
        ("[control]\nlisten = 'nowhere'\n", {}, "control.listen must be HOST:PORT"),
        ("[daemon\n", {}, "not valid TOML"),
    ],
    ids=["wrong-type", "unknown-key", "unknown-section", "env-type", "enum", "listen", "toml"],
)
def test_errors_name_the_key(tmp_path: Path, toml: str, env: dict[str, str], expected: str) -> None:
    """A wrong key or type fails with a message naming the key (and the variable)."""
    path = tmp_path / "config.toml"
    path.write_text(toml)
    with pytest.raises(fiefdom.ConfigurationError) as info:
        load_config(path, environ=env)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[control]\nlisten = "127.0.0.1:99999"\n', "control.listen: the port must be 0-65535"),
        ("[daemon]\nshutdown_timeout = -5\n", "daemon.shutdown_timeout: expected `float` >= 0"),
        ("[control]\nmax_connections = -1\n", "control.max_connections: expected `int` >= 1"),
        ("[control]\nmessages_per_second = 0\n", "control.messages_per_second: expected"),
        ("[control]\nmax_frame_bytes = 0\n", "control.max_frame_bytes: expected `int` >= 1"),
        ("[control]\nhello_timeout = 0\n", "control.hello_timeout: expected `float` > 0"),
        ("[recorder]\ncapacity = -3\n", "recorder.capacity: expected `int` >= 1"),
        ("[jobs.queues.default]\nconcurrency = 0\n", ".concurrency: expected `int` >= 1"),
        ("[jobs]\npoll_interval = 0\n", "jobs.poll_interval: expected `float` > 0"),
    ],
    ids=[
        "port",
        "shutdown-timeout",
        "max-connections",
        "rate",
        "frame",
        "hello-timeout",
        "recorder",
        "concurrency",
        "poll",
    ],
)
def test_out_of_range_values_are_refused(tmp_path: Path, toml: str, expected: str) -> None:
    """A value out of its range fails in one line naming the key and the bound."""
    path = tmp_path / "config.toml"
    path.write_text(toml)
    with pytest.raises(fiefdom.ConfigurationError) as info:
        load_config(path, environ={})
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[daemon]\nshutdown_timeout = "30"\n', "daemon.shutdown_timeout: expected `float`"),
        ('[jobs]\nenabled = "false"\n', "jobs.enabled: expected `bool`, got `str`"),
        ('[control]\nmax_connections = "7"\n', "control.max_connections: expected `int`"),
    ],
    ids=["seconds", "bool", "int"],
)
def test_the_file_is_decoded_strictly(tmp_path: Path, toml: str, expected: str) -> None:
    """Text where the file needs a number or a boolean is refused (only the environment is text)."""
    path = tmp_path / "config.toml"
    path.write_text(toml)
    with pytest.raises(fiefdom.ConfigurationError) as info:
        load_config(path, environ={})
    assert expected in str(info.value)


def test_environment_values_are_range_checked_too(tmp_path: Path) -> None:
    """An environment override is converted from text, then held to the same bounds."""
    path = tmp_path / "config.toml"
    path.write_text("")
    config = load_config(path, environ={"FIEFDOM_DAEMON__SHUTDOWN_TIMEOUT": "2.5"})
    assert config.daemon.shutdown_timeout == 2.5
    with pytest.raises(fiefdom.ConfigurationError) as info:
        load_config(path, environ={"FIEFDOM_CONTROL__LISTEN": "127.0.0.1:70000"})
    assert "FIEFDOM_CONTROL__LISTEN" in str(info.value)
    with pytest.raises(fiefdom.ConfigurationError) as info:
        load_config(path, environ={"FIEFDOM_CONTROL__MAX_CONNECTIONS": "0"})
    assert "control.max_connections: expected `int` >= 1" in str(info.value)


def test_admin_token_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    """The admin token is written 0600 on first use and read back unchanged later."""
    path = tmp_path / "data" / "admin.token"
    token = ensure_admin_token(path)
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_admin_token(path) == token


def test_a_failure_after_the_checks_writes_the_flight_recorder(tmp_path: Path) -> None:
    """A start that fails once the daemon holds its data folder (a module's setup
    raises) writes its recent events, debug included, to a crash file; the command
    line still ends with one line and exit status 2, without a traceback."""
    config = write_config(tmp_path, modules=("failing_app",))
    result = subprocess.run(
        [sys.executable, "-m", "fiefdom", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.endswith(
        "fiefdom: error: unexpected RuntimeError: setup failed on purpose "
        "(--debug shows the traceback)\n"
    )
    assert "Traceback" not in result.stderr
    dumps = list((tmp_path / "data" / "flight-recorder").glob("flight-*-crash.jsonl"))
    assert len(dumps) == 1
    events = [json.loads(line) for line in dumps[0].read_text().splitlines()]
    names = [e["event"] for e in events]
    assert "opening the store" in names
    failed = events[names.index("daemon failed")]
    assert "RuntimeError: setup failed on purpose" in failed["exception"]


async def test_dump_on_request_writes_the_flight_recorder(daemon: DaemonProcess) -> None:
    """An admin "dump" writes the ring buffer to the recorder folder and says where."""
    async with fiefdom.connect(daemon.url, token=daemon.token) as client:
        reply = await client.dump()
    path = Path(reply.path)
    assert path.parent == daemon.data / "flight-recorder"
    lines = await anyio.Path(path).read_text()
    lines = lines.splitlines()
    assert len(lines) == reply.events
    assert any(json.loads(line)["event"] == "daemon ready" for line in lines)


def test_readme_run_command_serves_the_default_configuration(tmp_path: Path) -> None:
    """The README's first set-up command ends in `fiefdom serve`; run that way on the
    default config.toml (data dir and port from the environment) it answers /readyz."""
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)\n```", readme, re.S)
    assert first_block is not None
    command = first_block.group(1).strip()
    assert command.endswith(".venv/bin/fiefdom serve"), command
    entry_point = Path(sys.executable).parent / "fiefdom"
    assert entry_point.exists()

    class ReadmeDaemon(DaemonProcess):
        def command(self) -> list[str]:
            return [str(entry_point), "serve"]

    data = tmp_path / "data"
    daemon = ReadmeDaemon(
        ROOT / "config.toml",
        env={
            "FIEFDOM_DAEMON__DATA_DIR": str(data),
            "FIEFDOM_CONTROL__LISTEN": "127.0.0.1:0",
        },
    )
    daemon.data = data
    daemon.cwd = ROOT
    daemon.log_path = tmp_path / "daemon.log"
    try:
        daemon.start()
        ready = daemon.json("/readyz")
        assert ready["ready"] is True
        assert stat.S_IMODE((data / "admin.token").stat().st_mode) == 0o600
    finally:
        daemon.stop()


def test_config_struct_defaults_match_the_file() -> None:
    """The built-in defaults equal config.toml's settings (the file documents them)."""
    from_file = load_config(ROOT / "config.toml", environ={})
    defaults = load_config(None, environ={})
    assert isinstance(defaults, Config)
    assert from_file.control == defaults.control
    assert from_file.jobs == defaults.jobs
    assert from_file.recorder == defaults.recorder


def test_a_new_admin_token_never_begins_with_a_dash(tmp_path: Path) -> None:
    """2,000 admin tokens, each written to a new file: none begins with ``-`` (one in 64
    random URL-safe tokens would, and ``--token TOKEN`` would then be refused by the
    command line as a missing argument); each is 43 URL-safe characters."""
    tokens = [ensure_admin_token(tmp_path / f"token-{n}") for n in range(2000)]
    assert not [t for t in tokens if t.startswith("-")]
    assert all(len(t) == 43 and t.replace("-", "").replace("_", "").isalnum() for t in tokens)
    assert len(set(tokens)) == len(tokens)
