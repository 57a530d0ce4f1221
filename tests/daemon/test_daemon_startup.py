"""Start-up failures of `fiefdom serve`, through the real command line in a subprocess:
each is one line on stderr naming what is wrong and the setting to change, exit
status 2, no traceback (unless --debug), and nothing created on disk. A second
daemon on the same data folder refuses, naming the one that runs there."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from daemon_harness import READY_DEADLINE, DaemonProcess, with_open_files, write_config

EXIT_STARTUP = 2


def serve(
    config: Path,
    *options: str,
    unprivileged: bool = False,
    open_files: tuple[int, int] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m fiefdom serve --config config`` to its end. ``unprivileged``:
    without the power to ignore file permissions (root's, when the tests run as root);
    ``open_files``: with that (soft, hard) limit on open files."""
    command = [sys.executable, "-m", "fiefdom", "serve", "--config", str(config), *options]
    if open_files is not None:
        command = with_open_files(command, *open_files)
    if unprivileged and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop the permission override")
        # Root keeps its uid (the interpreter under /root stays reachable) but loses
        # the capabilities that bypass file modes, as any other user would.
        command = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--", *command]
    # A hang guard only: each of these fails (or refuses) at once.
    return subprocess.run(command, capture_output=True, text=True, timeout=50, check=False)


def snapshot(folder: Path) -> set[str]:
    """Every path under ``folder`` (what a failed start must leave as it was)."""
    return {
        str(Path(root, name).relative_to(folder))
        for root, dirs, files in os.walk(folder)
        for name in [*dirs, *files]
    }


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """What a case holds open while the daemon fails (a socket on the port)."""
    with ExitStack() as held:
        yield held


# A case writes its configuration under the folder and returns the configuration
# file, the error line expected on stderr, and whether it needs file permissions to
# be enforced for the daemon's user.
Case = Callable[[Path, ExitStack], tuple[Path, str, bool]]


def port_in_use(folder: Path, stack: ExitStack) -> tuple[Path, str, bool]:
    sock = stack.enter_context(socket.socket())
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    return (
        write_config(folder, listen=f"127.0.0.1:{port}"),
        f"control.listen: 127.0.0.1:{port} is in use by another process; stop it, "
        "or set control.listen to a free port (port 0 lets the system choose one)",
        False,
    )


def unassigned_address(folder: Path, stack: ExitStack) -> tuple[Path, str, bool]:
    # 192.0.2.0/24 is reserved for documentation (RFC 5737): no machine has it.
    return (
        write_config(folder, listen="192.0.2.1:8765"),
        "control.listen: 192.0.2.1 is not an address of this machine; set control.listen "
        "to one of its addresses (127.0.0.1 for this machine only, 0.0.0.0 for every "
        "interface)",
        False,
    )


def data_dir_not_creatable(folder: Path, stack: ExitStack) -> tuple[Path, str, bool]:
    config = write_config(folder / "conf", extra="")
    parent = folder / "read-only"
    parent.mkdir(mode=0o555)
    _set_data_dir(config, str(parent / "data"))
    return (
        config,
        f"daemon.data_dir: cannot create {parent / 'data'}: permission denied in {parent}; "
        "create it for this user, or set daemon.data_dir to a folder it may write",
        True,
    )


def data_dir_under_a_file(folder: Path, stack: ExitStack) -> tuple[Path, str, bool]:
    config = write_config(folder)
    (folder / "afile").write_text("not a folder")
    _set_data_dir(config, "afile/data")
    return (
        config,
        f"daemon.data_dir: cannot create {folder / 'afile' / 'data'}: {folder / 'afile'} "
        "is a file; set daemon.data_dir to a folder",
        False,
    )


def data_dir_is_a_file(folder: Path, stack: ExitStack) -> tuple[Path, str, bool]:
    config = write_config(folder)
    (folder / "data").write_text("not a folder")
    return (
        config,
        f"daemon.data_dir: {folder / 'data'} is a file, not a folder; move it away, "
        "or set daemon.data_dir to a folder",
        False,
    )


def unreadable_data_dir(folder: Path, stack: ExitStack) -> tuple[Path, str, bool]:
    config = write_config(folder)
    data = folder / "data"
    data.mkdir(mode=0o000)
    # Given back its mode afterwards, so that the test's folder can be removed.
    stack.callback(data.chmod, 0o700)
    return (
        config,
        f"daemon.data_dir: {data} is not readable and writable by this user: permission "
        "denied; give this user access to it, or set daemon.data_dir to another folder",
        True,
    )


def bad_value(folder: Path, stack: ExitStack) -> tuple[Path, str, bool]:
    config = write_config(folder, shutdown_timeout=-5)
    return config, f"{config}: daemon.shutdown_timeout: expected `float` >= 0.0", False


def short_token(folder: Path, stack: ExitStack) -> tuple[Path, str, bool]:
    config = write_config(folder, control='[[control.tokens]]\nrole = "admin"\ntoken = "short"')
    return (
        config,
        "control.tokens[0]: a token must have at least 16 characters",
        False,
    )


def unknown_module(folder: Path, stack: ExitStack) -> tuple[Path, str, bool]:
    return (
        write_config(folder, modules=("no_such_module_here",)),
        "daemon.modules: cannot import 'no_such_module_here': No module named "
        "'no_such_module_here' (is it installed, or its folder listed in "
        "daemon.python_path?)",
        False,
    )


def vault_upload_to_unknown(folder: Path, stack: ExitStack) -> tuple[Path, str, bool]:
    extra = '[vault]\nupload_to = "archive"\n[[vault.locations]]\nname = "old"\npath = "old"\n'
    config = write_config(folder, extra=extra)
    return (
        config,
        f"{config}: vault.upload_to: no location is named 'archive'; the vault's are "
        "'vault', 'old'",
        False,
    )


def vault_locations_sharing_a_folder(folder: Path, stack: ExitStack) -> tuple[Path, str, bool]:
    extra = '[[vault.locations]]\nname = "old"\npath = "vault"\n'
    config = write_config(folder, extra=extra)
    vault = folder / "data" / "vault"
    return (
        config,
        f"{config}: vault.locations[0].path: {vault} is location 'vault''s folder already",
        False,
    )


def module_without_setup(folder: Path, stack: ExitStack) -> tuple[Path, str, bool]:
    return (
        write_config(folder, modules=("hosted_app", "json")),
        "daemon.modules: 'json' has no setup(daemon) function to call",
        False,
    )


def _set_data_dir(config: Path, data_dir: str) -> None:
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace('data_dir = "data"', f'data_dir = "{data_dir}"'))


CASES: dict[str, Case] = {
    "port-in-use": port_in_use,
    "unassigned-address": unassigned_address,
    "data-dir-not-creatable": data_dir_not_creatable,
    "data-dir-under-a-file": data_dir_under_a_file,
    "data-dir-is-a-file": data_dir_is_a_file,
    "unreadable-data-dir": unreadable_data_dir,
    "bad-config-value": bad_value,
    "short-token": short_token,
    "unknown-module": unknown_module,
    "module-without-setup": module_without_setup,
    "vault-upload-to-unknown": vault_upload_to_unknown,
    "vault-locations-sharing-a-folder": vault_locations_sharing_a_folder,
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_start_up_failure_is_one_line_exit_2_and_creates_nothing(
    tmp_path: Path, stack: ExitStack, case: Case
) -> None:
    """Each start-up failure prints exactly one line naming the problem and the
    setting, exits 2, and leaves the folder as it was (no data folder, token,
    control.json, SQLite file or flight recorder dump)."""
    folder = tmp_path.resolve()
    config, expected, unprivileged = case(folder, stack)
    before = snapshot(folder)
    result = serve(config, unprivileged=unprivileged)
    assert (result.returncode, result.stderr) == (EXIT_STARTUP, f"fiefdom: error: {expected}\n")
    assert result.stdout == ""
    assert snapshot(folder) == before


# (control settings, [cluster] listen, files needed, what the line says they are for)
OPEN_FILES_CASES = {
    "plain": ("max_http_connections = 81", "127.0.0.1:0", 81 + 6 + 64, ""),
    "tls": (
        # Checked before the certificate is read: these files need not exist.
        'max_http_connections = 81\ntls_cert = "cert.pem"\ntls_key = "key.pem"',
        "127.0.0.1:0",
        2 * (81 + 6) + 64,
        "twice those for TLS handshakes, ",
    ),
    "peers-off-loopback": (
        "max_http_connections = 10",
        "0.0.0.0:0",
        10 + 6 + 256 + 64,
        "256 for the cluster's peers on 0.0.0.0:0, ",
    ),
}


@pytest.mark.parametrize("case", OPEN_FILES_CASES.values(), ids=OPEN_FILES_CASES.keys())
def test_a_hard_limit_on_open_files_below_the_listeners_needs_is_refused(
    tmp_path: Path, case: tuple[str, str, int, str]
) -> None:
    """A daemon that may open 150 files (hard limit) refuses to start in one line
    naming the figures and the setting when its listeners need more: 81 + 6 control
    connections (80 + 6 and its own 64 would just fit), twice those over TLS, or 10 + 6
    and the peer server's 256 when the cluster listens off loopback."""
    control, peers, needed, more = case
    folder = tmp_path.resolve()
    config = write_config(
        folder,
        control=control + "\nprobe_connections = 6",
        extra=f'[cluster]\nlisten = "{peers}"',
    )
    before = snapshot(folder)
    result = serve(config, open_files=(150, 150))
    connections = control.split("\n")[0].split(" = ")[1]
    assert (result.returncode, result.stderr) == (
        EXIT_STARTUP,
        f"fiefdom: error: control.max_http_connections: {connections} connections and 6 "
        f"probe_connections need {needed} open files (with {more}the daemon's own 64), "
        "and this process may open 150 (ulimit -Hn); lower control.max_http_connections, "
        "or raise the limit (LimitNOFILE= in a systemd unit)\n",
    )
    assert snapshot(folder) == before


def test_a_soft_limit_on_open_files_below_the_control_ports_needs_is_raised(
    tmp_path: Path,
) -> None:
    """A daemon whose soft limit (100) is below what 21 + 16 control connections and its
    own 64 files need raises it to the hard limit, says so once in its log, and serves."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    control = "max_http_connections = 21\nprobe_connections = 16"

    class Limited(DaemonProcess):
        def command(self) -> list[str]:
            return with_open_files(super().command(), 100, hard)

    with Limited(write_config(tmp_path, control=control)) as daemon:
        assert daemon.proc is not None
        limits = Path(f"/proc/{daemon.proc.pid}/limits").read_text()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert row.split()[3:5] == [str(hard), str(hard)], row
        log = daemon.log()
        assert log.count("raised the limit on open files to the hard limit") == 1, log
        assert f"after={hard}" in log, log
        assert "before=100" in log, log
        assert daemon.http("/readyz")[0] == 200


def test_debug_adds_the_traceback_before_the_line(tmp_path: Path) -> None:
    """With --debug a start-up failure prints its traceback, then the same one line."""
    config, expected, _ = unknown_module(tmp_path.resolve(), ExitStack())
    result = serve(config, "--debug")
    assert result.returncode == EXIT_STARTUP
    assert result.stderr.startswith("Traceback (most recent call last):\n")
    assert result.stderr.endswith(f"\nfiefdom: error: {expected}\n")
    assert not (tmp_path / "data").exists()


def test_a_second_daemon_on_the_same_data_dir_refuses(tmp_path: Path) -> None:
    """A second `serve` on a data folder in use refuses in one line naming the running
    daemon's pid and address, exits 2, and leaves that daemon and its control.json be."""
    with DaemonProcess(write_config(tmp_path)) as first:
        assert first.proc is not None
        endpoint = first.data / "control.json"
        published = endpoint.read_text(encoding="utf-8")
        before = snapshot(tmp_path)
        result = serve(first.config)
        assert (result.returncode, result.stderr) == (
            EXIT_STARTUP,
            f"fiefdom: error: daemon.data_dir: {first.data.resolve()} is in use by the "
            f"daemon with pid {first.proc.pid} at {first.url}; stop it first, or set "
            "daemon.data_dir to another folder\n",
        )
        assert endpoint.read_text(encoding="utf-8") == published
        assert snapshot(tmp_path) == before
        assert first.http("/readyz")[0] == 200


def test_a_second_daemon_refuses_while_the_first_is_still_starting(tmp_path: Path) -> None:
    """While the first daemon starts (its data folder locked, no control.json yet), a
    second one refuses naming the first's pid, and says it is still starting."""
    first = DaemonProcess(write_config(tmp_path, modules=("waiting_app", "hosted_app")))
    first.launch()
    try:
        assert first.proc is not None
        lock = first.data / "daemon.lock"
        deadline = time.monotonic() + READY_DEADLINE
        # The first daemon writes its pid into the lock file once it holds the lock.
        while not (lock.is_file() and lock.read_text().strip() == str(first.proc.pid)):
            first._check_alive(deadline, "lock its data folder")
        result = serve(first.config)
        assert (result.returncode, result.stderr) == (
            EXIT_STARTUP,
            f"fiefdom: error: daemon.data_dir: {first.data.resolve()} is in use by the "
            f"daemon with pid {first.proc.pid} (still starting); stop it first, or set "
            "daemon.data_dir to another folder\n",
        )
        (first.data / "go").touch()
        first.wait_ready()
    finally:
        first.stop()


def test_a_killed_daemon_leaves_its_folder_free(tmp_path: Path) -> None:
    """A daemon killed with SIGKILL leaves no lock behind: the next one starts on the
    same folder and replaces the dead one's control.json with its own."""
    daemon = DaemonProcess(write_config(tmp_path)).start()
    try:
        assert daemon.proc is not None
        killed_pid = daemon.proc.pid
        daemon.signal(signal.SIGKILL)
        daemon.wait()
        endpoint = daemon.data / "control.json"
        assert json.loads(endpoint.read_text())["pid"] == killed_pid
        daemon.start()
        assert json.loads(endpoint.read_text())["pid"] == daemon.proc.pid != killed_pid
        assert daemon.http("/readyz")[0] == 200
    finally:
        daemon.stop()


def test_a_second_daemon_on_the_same_store_with_a_vault_folder_of_its_own_refuses(
    tmp_path: Path,
) -> None:
    """Two daemons on one store, each with the default vault folder under its own data
    folder: the second refuses to start (exit 2), its last line naming the location,
    the first's folder, its own and the settings to change, since each would take the
    other's blobs for missing. The first daemon serves on; a second daemon given the
    first's folder starts."""
    store = f'[store]\nurl = "sqlite:///{tmp_path / "shared.db"}"\n'
    with DaemonProcess(write_config(tmp_path / "a", extra=store)) as first:
        first_vault = (first.data / "vault").resolve()
        result = serve(write_config(tmp_path / "b", extra=store))
        assert result.returncode == EXIT_STARTUP
        *_, last = result.stderr.splitlines()
        assert last.startswith("fiefdom: error: vault.path: storage location 'vault' of ")
        assert f":{first_vault} (id " in last
        assert f"{(tmp_path / 'b' / 'data' / 'vault').resolve()} has no " in last
        assert last.endswith("(settings vault.path and vault.location; or vault.enabled = false)")
        assert "Traceback" not in result.stderr
        assert first.http("/readyz")[0] == 200
        shared = f'{store}\n[vault]\npath = "{first_vault}"\n'
        with DaemonProcess(write_config(tmp_path / "c", extra=shared)) as third:
            assert third.http("/readyz")[0] == 200
