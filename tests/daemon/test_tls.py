"""TLS on the daemon's listener, through real daemon subprocesses and certificates of
test CAs (trustme): with ``control.tls_cert`` and ``control.tls_key`` the control
channel is ``wss://`` and the HTTP API ``https://``; the Python client and the command
line verify the daemon against a CA file; SIGHUP loads a new certificate for new
connections (a bad one is refused and the old one kept); a bad certificate or key at
start is one line and exit status 2."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from daemon_harness import READY_DEADLINE, DaemonProcess, write_config
from test_daemon_startup import EXIT_STARTUP, serve, snapshot

import fiefdom
from fiefdom import ConfigurationError, ControlConnectionError
from fiefdom.daemon import load_config
from fiefdom.daemon._tls import ServerTLS

pytestmark = pytest.mark.slow

FIEFDOM = str(Path(sys.executable).parent / "fiefdom")
TLS_TOML = 'tls_cert = "tls/cert.pem"\ntls_key = "tls/key.pem"'


@dataclass
class Pki:
    """A test CA, the PEM file of its certificate, and a context that trusts it."""

    ca: trustme.CA
    ca_file: Path

    @property
    def trust(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


def make_pki(folder: Path, name: str) -> Pki:
    ca = trustme.CA()
    folder.mkdir(parents=True, exist_ok=True)
    ca_file = folder / f"{name}-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Pki(ca, ca_file)


def install_certificate(pki: Pki, folder: Path) -> tuple[Path, Path]:
    """Write a certificate for 127.0.0.1 and localhost signed by ``pki``'s CA (and its
    key) where TLS_TOML points, replacing what is there; returns (cert, key)."""
    tls = folder / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    issued = pki.ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tls / "cert.pem", tls / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    return cert, key


def tls_daemon(folder: Path, pki: Pki) -> DaemonProcess:
    """A daemon (not started) serving TLS with a certificate of ``pki``'s CA; its
    probes trust that CA."""
    install_certificate(pki, folder)
    daemon = DaemonProcess(write_config(folder, control=TLS_TOML))
    daemon.ssl_context = pki.trust
    return daemon


def port_of(daemon: DaemonProcess) -> int:
    return int(daemon.url.rsplit(":", 1)[1])


def verifies(daemon: DaemonProcess, context: ssl.SSLContext) -> bool:
    """Whether a new TLS connection to the daemon verifies its certificate with
    ``context`` (a handshake, nothing sent)."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port_of(daemon)), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            return True
    except ssl.SSLCertVerificationError:
        return False


def until(daemon: DaemonProcess, condition: object, what: str) -> None:
    """Poll ``condition()`` under the harness's deadline (failing early if the daemon
    exits)."""
    assert callable(condition)
    deadline = time.monotonic() + READY_DEADLINE
    while not condition():
        daemon._check_alive(deadline, what)


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``fiefdom`` command without the caller's FIEFDOM_* settings."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FIEFDOM_")}
    return subprocess.run(
        [FIEFDOM, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ | (env or {}),
        cwd=cwd,
        check=False,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The CA whose certificate the module's daemon serves."""
    return make_pki(tmp_path_factory.mktemp("pki"), "first")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[DaemonProcess]:
    """A daemon hosting the test app over TLS, shared by the tests that only read."""
    with tls_daemon(tmp_path_factory.mktemp("tls-daemon"), pki) as proc:
        yield proc


# -- serving -------------------------------------------------------------------------


async def test_the_python_client_over_wss_with_the_ca_gets_replies(
    daemon: DaemonProcess, pki: Pki
) -> None:
    """control.json records the https:// address; the Python client reaches it over
    wss://, verifying the daemon against a CA file (``cafile``) or a context of the
    caller's (``ssl``), and gets replies."""
    published = json.loads((daemon.data / "control.json").read_text())
    assert published["url"] == f"https://127.0.0.1:{port_of(daemon)}"
    wss = f"wss://127.0.0.1:{port_of(daemon)}"
    async with fiefdom.connect(wss, token=daemon.token, cafile=pki.ca_file) as client:
        await client.ping()
        assert (await client.status()).name == "test-daemon"
    async with fiefdom.connect(daemon.url, token=daemon.token, ssl=pki.trust) as client:
        assert client.url == f"{wss}/ws"
        assert (await client.status()).ready


async def test_a_client_without_the_ca_is_refused_with_a_clear_error(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A client trusting only the system's CAs (or another CA) fails on start with
    ControlConnectionError saying the daemon's certificate was not verified."""
    other = make_pki(tmp_path, "other")
    for options in ({}, {"cafile": other.ca_file}):
        client = fiefdom.connect(daemon.url, token=daemon.token, **options)
        with pytest.raises(ControlConnectionError) as raised:
            await client.start()
        assert str(raised.value) == (
            f"cannot connect to the control channel at wss://127.0.0.1:{port_of(daemon)}/ws: "
            "the daemon's certificate was not verified: unable to get local issuer certificate"
        )


async def test_the_client_refuses_tls_options_that_cannot_apply(
    daemon: DaemonProcess, pki: Pki, tmp_path: Path
) -> None:
    """``ssl`` or ``cafile`` on a ws:// URL, or both at once, are a ValueError; a CA
    file that cannot be read is a ConfigurationError naming it."""
    with pytest.raises(ValueError, match="for wss:// "):
        fiefdom.connect("ws://127.0.0.1:1", token="t", cafile=pki.ca_file)
    with pytest.raises(ValueError, match="not both"):
        fiefdom.connect(daemon.url, token="t", cafile=pki.ca_file, ssl=pki.trust)
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigurationError, match=f"cafile: cannot read {missing}: No such"):
        fiefdom.connect(daemon.url, token="t", cafile=missing)


def test_the_http_api_answers_over_https_only(daemon: DaemonProcess, pki: Pki) -> None:
    """/healthz answers over https, verified with the CA; the same port answers no
    plain HTTP request."""
    request = urllib.request.Request(f"https://127.0.0.1:{port_of(daemon)}/healthz")
    with urllib.request.urlopen(request, timeout=10, context=pki.trust) as response:
        assert response.status == 200
        assert json.loads(response.read())["status"] == "alive"
    with pytest.raises(ConnectionError):
        urllib.request.urlopen(f"http://127.0.0.1:{port_of(daemon)}/healthz", timeout=10)


def test_no_unencrypted_warning_when_serving_tls_on_loopback(daemon: DaemonProcess) -> None:
    """A daemon serving TLS logs that it listens with TLS, and no warning about an
    unencrypted channel."""
    log = daemon.log_path.read_text()
    assert "control channel listening" in log
    assert "tls=True" in log
    assert "not encrypted" not in log


# -- the command line ----------------------------------------------------------------


def test_the_cli_connects_over_tls_with_ca_file(daemon: DaemonProcess, pki: Pki) -> None:
    """`fiefdom status --url wss://... --ca-file CA` prints the daemon; so does a
    command finding the https:// address in control.json (--ca-file before the
    command), and one given the CA by FIEFDOM_CA_FILE (a vault command too)."""
    token = {"FIEFDOM_TOKEN": daemon.token}
    wss = f"wss://127.0.0.1:{port_of(daemon)}"
    by_url = cli("status", "--url", wss, "--ca-file", str(pki.ca_file), env=token)
    assert by_url.returncode == 0, by_url.stderr
    assert by_url.stdout.splitlines()[0].startswith("test-daemon ")
    found = cli("--ca-file", str(pki.ca_file), "status", "--json", "--config", str(daemon.config))
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["name"] == "test-daemon"
    by_env = cli(
        "vault",
        "stats",
        "--json",
        "--config",
        str(daemon.config),
        env={"FIEFDOM_CA_FILE": str(pki.ca_file)},
    )
    assert by_env.returncode == 0, by_env.stderr
    assert json.loads(by_env.stdout)["resources"] == 0


def test_the_cli_without_the_ca_fails_in_one_line(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Without a CA file (or with another CA's) the command fails with one line naming
    the URL and saying what to do about it, and exit status 1."""
    token = {"FIEFDOM_TOKEN": daemon.token}
    url = f"wss://127.0.0.1:{port_of(daemon)}"
    refused = "the daemon's certificate was not verified (unable to get local issuer certificate)"
    result = cli("status", "--url", url, env=token)
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "",
        f"fiefdom: error: {url}: {refused}; pass --ca-file PATH (or set FIEFDOM_CA_FILE) "
        "with the CA that signed it\n",
    )
    other = make_pki(tmp_path, "other")
    result = cli("vault", "stats", "--url", url, "--ca-file", str(other.ca_file), env=token)
    assert (result.returncode, result.stderr) == (
        1,
        f"fiefdom: error: {url}: {refused}; check that --ca-file {other.ca_file} holds the "
        "CA that signed the daemon's certificate\n",
    )


def test_the_cli_names_a_ca_file_it_cannot_use(daemon: DaemonProcess, tmp_path: Path) -> None:
    """A CA file that is missing, or holds no certificate, is one line naming the
    option (or the variable) and the file."""
    url = f"wss://127.0.0.1:{port_of(daemon)}"
    missing = tmp_path / "missing.pem"
    result = cli("status", "--url", url, "--ca-file", str(missing), env={"FIEFDOM_TOKEN": "x"})
    assert (result.returncode, result.stderr) == (
        1,
        f"fiefdom: error: --ca-file {missing}: cannot read it: No such file or directory\n",
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    result = cli(
        "status", "--url", url, env={"FIEFDOM_TOKEN": "x", "FIEFDOM_CA_FILE": str(garbage)}
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"fiefdom: error: FIEFDOM_CA_FILE {garbage}: holds no PEM")
    assert result.stderr.count("\n") == 1


# -- SIGHUP --------------------------------------------------------------------------


async def test_sighup_serves_a_new_certificate_to_new_connections(tmp_path: Path, pki: Pki) -> None:
    """A certificate of a second CA written over the files, then SIGHUP: new
    connections verify with the second CA (and no longer with the first), a
    connection opened before goes on, and the reload is logged."""
    second = make_pki(tmp_path / "pki", "second")
    with tls_daemon(tmp_path / "daemon", pki) as daemon:
        async with fiefdom.connect(daemon.url, token=daemon.token, ssl=pki.trust) as before:
            install_certificate(second, daemon.folder)
            daemon.signal(signal.SIGHUP)
            until(daemon, lambda: verifies(daemon, second.trust), "serve the new certificate")
            assert not verifies(daemon, pki.trust)
            await before.ping()  # the connection made before the reload goes on
        async with fiefdom.connect(daemon.url, token=daemon.token, ssl=second.trust) as after:
            assert (await after.status()).name == "test-daemon"
        assert "TLS certificate reloaded" in daemon.log()


async def test_a_bad_key_on_sighup_keeps_the_old_certificate(tmp_path: Path, pki: Pki) -> None:
    """A key file that is not a key, then SIGHUP: the reload fails with an error naming
    the setting and the file, and the old certificate is still served."""
    with tls_daemon(tmp_path, pki) as daemon:
        key = daemon.folder / "tls" / "key.pem"
        key.write_text("not a key\n")
        daemon.signal(signal.SIGHUP)
        error = f"control.tls_key: {key} holds no PEM private key"
        until(daemon, lambda: error in daemon.log(), "log the failed reload")
        assert "TLS reload failed: the previous certificate is still served" in daemon.log()
        assert verifies(daemon, pki.trust)
        async with fiefdom.connect(daemon.url, token=daemon.token, ssl=pki.trust) as client:
            await client.ping()


def test_a_reload_loads_into_the_served_context_or_not_at_all(tmp_path: Path) -> None:
    """The reload path itself (what SIGHUP calls): a good pair replaces the certificate
    in the same context (TLS 1.2 at least); a key of another certificate is refused
    naming both files, and leaves the context serving the previous pair."""
    first, second = make_pki(tmp_path, "first"), make_pki(tmp_path, "second")
    cert, key = install_certificate(first, tmp_path)
    tls = ServerTLS(cert, key)
    context, old = tls.context, tls.fingerprint
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    install_certificate(second, tmp_path)
    assert tls.reload()
    assert tls.context is context
    assert tls.fingerprint != old
    new = tls.fingerprint
    other_key = tmp_path / "other-key.pem"
    other_key.write_bytes(first.ca.issue_cert("127.0.0.1").private_key_pem.bytes())
    tls.key = other_key
    assert not tls.reload()
    assert tls.fingerprint == new
    with pytest.raises(ConfigurationError) as raised:
        ServerTLS(cert, other_key)
    assert str(raised.value) == (
        f"control.tls_key: {other_key} is not the private key of the certificate in {cert}; "
        "set control.tls_key to that certificate's key"
    )
    # What the context serves: the second pair, still (a handshake in memory).
    assert _handshake(second.trust, context)
    assert not _handshake(first.trust, context)


def _handshake(client_context: ssl.SSLContext, server_context: ssl.SSLContext) -> bool:
    """Whether a client of ``client_context`` verifies a server of ``server_context``:
    a handshake between two in-memory ends, their bytes passed across."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_client, from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, from_client, server_hostname="127.0.0.1")
    server = server_context.wrap_bio(to_server, from_server, server_side=True)
    done: set[int] = set()
    for _ in range(10):
        for index, end in enumerate((client, server)):
            if index not in done:
                try:
                    end.do_handshake()
                    done.add(index)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    if index == 0 and isinstance(exc, ssl.SSLCertVerificationError):
                        return False
                    raise
            to_server.write(from_client.read())
            to_client.write(from_server.read())
        if len(done) == 2:
            return True
    raise AssertionError("the handshake did not finish")


# -- start-up and configuration ------------------------------------------------------


def test_a_missing_certificate_at_start_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A certificate file that does not exist: one line naming the setting and the
    file, exit status 2, nothing created."""
    folder = tmp_path.resolve()
    config = write_config(folder, control=TLS_TOML)
    before = snapshot(folder)
    result = serve(config)
    cert = folder / "tls" / "cert.pem"
    assert (result.returncode, result.stderr) == (
        EXIT_STARTUP,
        f"fiefdom: error: control.tls_cert: cannot read {cert}: No such file or directory; "
        "make it readable by the daemon's user, or set control.tls_cert to another file\n",
    )
    assert snapshot(folder) == before


def test_a_bad_pair_at_start_names_the_file_that_is_wrong(tmp_path: Path) -> None:
    """A certificate file that holds no certificate, or a key that is not the
    certificate's: one line naming the setting and the file(s), exit status 2."""
    folder = tmp_path.resolve()
    pki = make_pki(folder / "pki", "ca")
    config = write_config(folder, control=TLS_TOML)
    cert, key = install_certificate(pki, folder)
    good_cert = cert.read_bytes()
    cert.write_text("garbage\n")
    result = serve(config)
    assert (result.returncode, result.stderr) == (
        EXIT_STARTUP,
        f"fiefdom: error: control.tls_cert: {cert} holds no PEM certificate "
        "('-----BEGIN CERTIFICATE-----'); set control.tls_cert to the certificate (chain) "
        "file\n",
    )
    cert.write_bytes(good_cert)
    key.write_bytes(pki.ca.issue_cert("127.0.0.1").private_key_pem.bytes())
    result = serve(config)
    assert (result.returncode, result.stderr) == (
        EXIT_STARTUP,
        f"fiefdom: error: control.tls_key: {key} is not the private key of the certificate "
        f"in {cert}; set control.tls_key to that certificate's key\n",
    )


@pytest.mark.parametrize(("given", "missing"), [("tls_cert", "tls_key"), ("tls_key", "tls_cert")])
def test_tls_needs_both_settings(tmp_path: Path, given: str, missing: str) -> None:
    """tls_cert without tls_key (or the other way round) is refused, naming the
    setting that is missing."""
    config = write_config(tmp_path, control=f'{given} = "some.pem"')
    with pytest.raises(ConfigurationError) as raised:
        load_config(config, environ={})
    assert str(raised.value) == (
        f"{config}: control.{missing}: must be set with control.{given} (TLS needs both "
        "the certificate and its private key); set both, or neither"
    )


def test_plain_off_loopback_warns_and_sighup_without_tls_reloads_nothing(
    tmp_path: Path,
) -> None:
    """Listening on every interface without TLS logs a warning that the channel is not
    encrypted; SIGHUP then reloads nothing, says so, and the daemon keeps serving."""
    config = write_config(tmp_path, listen="0.0.0.0:0", control="metrics_auth = true")
    with DaemonProcess(config) as daemon:
        assert "the control channel is not encrypted" in daemon.log()
        daemon.signal(signal.SIGHUP)
        until(daemon, lambda: "nothing to reload" in daemon.log(), "log the empty reload")
        assert daemon.http("/readyz")[0] == 200
