"""What a module's ``setup`` receives (``fiefdom.ModuleHost``), through real daemon
subprocesses: its own ``[app.<module>]`` section decoded into a Struct (environment
overrides included), and a bad value there failing the start in one line naming
``app.<module>.<key>`` with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import APP_DIR, DaemonProcess, write_config
from typed_settings_app import Greet

import fiefdom

EXIT_STARTUP = 2
SECTION = "[app.typed_settings_app]"


def serve(config: Path) -> subprocess.CompletedProcess[str]:
    """``fiefdom serve`` to its end (a hang guard only: each case fails at once)."""
    command = [sys.executable, "-m", "fiefdom", "serve", "--config", str(config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=50, check=False)


def assert_failed_to_start(result: subprocess.CompletedProcess[str], expected: str) -> None:
    """Exit status 2, and the log (on stderr, the store had opened) ends with the one
    error line, without a traceback."""
    assert result.returncode == EXIT_STARTUP, result.stderr
    assert result.stderr.endswith(f"\nfiefdom: error: {expected}\n"), result.stderr
    assert result.stderr.count("fiefdom: error:") == 1
    assert "Traceback" not in result.stderr


def test_the_host_is_exported_and_documented() -> None:
    """``fiefdom.ModuleHost`` is the class setup receives, and each of its attributes
    says what it is."""
    assert fiefdom.ModuleHost is fiefdom.daemon.ModuleHost
    for name in ("module", "section", "system", "store", "jobs", "data_dir", "config", "log"):
        attribute = getattr(fiefdom.ModuleHost, name)
        assert attribute.__doc__, name
    for name in ("expose", "settings"):
        assert getattr(fiefdom.ModuleHost, name).__doc__, name


async def test_a_module_reads_its_typed_settings(tmp_path: Path) -> None:
    """The section decodes into the module's Struct (a default filling what it leaves
    out), and an environment override, arriving as text, becomes the field's type."""
    extra = f'{SECTION}\ngreeting = "hello"\n'
    with DaemonProcess(
        write_config(tmp_path / "a", modules=("typed_settings_app",), extra=extra)
    ) as d:
        async with fiefdom.connect(d.url, token=d.token) as client:
            assert await client.call("greeter", Greet()) == "hello"
    env = {"FIEFDOM_APP__TYPED_SETTINGS_APP__REPEAT": "3"}
    config = write_config(tmp_path / "b", modules=("typed_settings_app",), extra=extra)
    with DaemonProcess(config, env=env) as d:
        async with fiefdom.connect(d.url, token=d.token) as client:
            assert await client.call("greeter", Greet()) == "hello hello hello"


CASES = {
    "wrong-type": (
        'greeting = "hi"\nrepeat = "many"\n',
        "app.typed_settings_app.repeat: expected `int`, got `str`",
    ),
    "unknown-key": (
        'greeting = "hi"\nrepaet = 2\n',
        "app.typed_settings_app.repaet: unknown key (check its spelling)",
    ),
    "missing-key": (
        "repeat = 2\n",
        "app.typed_settings_app.greeting: missing (the module requires it)",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_bad_setting_fails_the_start_in_one_line(tmp_path: Path, case: tuple[str, str]) -> None:
    """A value the module's Struct refuses fails the daemon's start: exit status 2 and
    one line on stderr naming the key under app.<module>."""
    body, expected = case
    config = write_config(tmp_path, modules=("typed_settings_app",), extra=f"{SECTION}\n{body}")
    assert_failed_to_start(serve(config), expected)


def test_a_coroutine_left_unawaited_in_setup_fails_the_start(tmp_path: Path) -> None:
    """A setup that calls ``daemon.system.spawn(...)`` without ``await`` (so nothing
    is spawned) fails the start with one line naming the call and where it is, exit
    status 2, instead of a daemon "ready" with nothing running."""
    app = APP_DIR / "forgetful_app.py"
    lines = app.read_text().splitlines()
    lineno = next(i for i, line in enumerate(lines, 1) if "the await forgotten" in line)
    config = write_config(tmp_path, modules=("hosted_app", "forgetful_app"))
    expected = (
        "daemon.modules: 'forgetful_app' setup called ActorSystem.spawn() without await "
        f'at {app}:{lineno} (daemon.system.spawn(Idle, name="idle")  # the await '
        "forgotten): it did nothing; write await before the call"
    )
    result = serve(config)
    assert_failed_to_start(result, expected)
    assert "daemon ready" not in result.stderr
