"""``fiefdom vault`` against a real daemon, as a user runs it (a subprocess finding the
daemon's address and token from its configuration): put, ls, versions, get, rm,
stats and fsck, and a put that resumes an upload an earlier run left half done."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from vault_daemon import TOKENS, DaemonProcess, start

FIEFDOM = str(Path(sys.executable).parent / "fiefdom")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon (SQLite) shared by the tests of this module."""
    proc = start(tmp_path_factory.mktemp("vault-cli"))
    try:
        yield proc
    finally:
        proc.stop()


def fiefdom(
    daemon: DaemonProcess, state: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FIEFDOM_TOKEN"}
    env["XDG_STATE_HOME"] = str(state)
    result = subprocess.run(
        [FIEFDOM, *args, "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=state,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_put_ls_get_rm_through_a_real_daemon(daemon: DaemonProcess, tmp_path: Path) -> None:
    """put uploads two files (and one under --name), ls and versions list them, get
    writes the latest or NAME@N to a file with the bytes uploaded, rm removes a
    version then a resource, stats and fsck --json report on it; errors are one
    line and a non-zero status."""
    one = tmp_path / "one.txt"
    one.write_bytes(b"first file\n" * 1000)
    two = tmp_path / "two.bin"
    two.write_bytes(os.urandom(300_000))
    put = fiefdom(daemon, tmp_path, "vault", "put", str(one), str(two), "--json")
    stored = json.loads(put.stdout)
    assert [(s["resource"], s["version"]) for s in stored] == [("one.txt", 1), ("two.bin", 1)]
    assert stored[1]["sha256"] == hashlib.sha256(two.read_bytes()).hexdigest()
    one.write_bytes(b"second version\n")
    out = fiefdom(daemon, tmp_path, "vault", "put", str(one), "--name", "notes@home.txt")
    assert out.stdout.startswith("notes@home.txt@1  ")
    fiefdom(daemon, tmp_path, "vault", "put", str(one))

    listed = json.loads(fiefdom(daemon, tmp_path, "vault", "ls", "--json").stdout)
    assert [(r["name"], r["versions"], r["latest"]) for r in listed] == [
        ("notes@home.txt", 1, 1),
        ("one.txt", 2, 2),
        ("two.bin", 1, 1),
    ]
    table = fiefdom(daemon, tmp_path, "vault", "ls").stdout
    assert table.splitlines()[0].split()[:4] == ["NAME", "VERSIONS", "LATEST", "SIZE"]
    versions = json.loads(
        fiefdom(daemon, tmp_path, "vault", "versions", "one.txt", "--json").stdout
    )
    assert [v["version"] for v in versions] == [1, 2]

    fiefdom(daemon, tmp_path, "vault", "get", "one.txt@1", "-o", str(tmp_path / "got1"))
    assert (tmp_path / "got1").read_bytes() == b"first file\n" * 1000
    fiefdom(daemon, tmp_path, "vault", "get", "one.txt")  # to ./one.txt, the latest
    assert (tmp_path / "one.txt").read_bytes() == b"second version\n"
    fiefdom(daemon, tmp_path, "vault", "get", "notes@home.txt", "-o", str(tmp_path / "notes"))
    assert (tmp_path / "notes").read_bytes() == b"second version\n"

    fiefdom(daemon, tmp_path, "vault", "rm", "one.txt@1")
    missing = fiefdom(daemon, tmp_path, "vault", "get", "one.txt@1", "-o", "x", check=False)
    assert missing.returncode == 1
    assert "has no version 1" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    fiefdom(daemon, tmp_path, "vault", "rm", "two.bin")
    names = [
        r["name"] for r in json.loads(fiefdom(daemon, tmp_path, "vault", "ls", "--json").stdout)
    ]
    assert names == ["notes@home.txt", "one.txt"]

    counts = json.loads(fiefdom(daemon, tmp_path, "vault", "stats", "--json").stdout)
    assert (counts["resources"], counts["versions"]) == (2, 2)
    report = json.loads(fiefdom(daemon, tmp_path, "vault", "fsck", "--json").stdout)
    assert report["missing"] == []
    assert report["blobs_checked"] == 1  # notes@home.txt and one.txt@2: the same bytes

    hostile = fiefdom(daemon, tmp_path, "vault", "put", str(one), "--name", "../x", check=False)
    assert hostile.returncode == 1
    assert "invalid resource name" in hostile.stderr
    read_only = fiefdom(
        daemon, tmp_path, "vault", "rm", "one.txt", "--token", TOKENS["read"], check=False
    )
    assert read_only.returncode == 1
    assert "forbidden" in read_only.stderr or "needs role" in read_only.stderr


def test_put_resumes_an_upload_left_half_done(daemon: DaemonProcess, tmp_path: Path) -> None:
    """An upload an earlier put began (its URL in the state file, half its bytes
    sent) is resumed by running the same put again: the same upload completes
    (its HEAD then names the version) and the version has the whole file."""
    data = os.urandom(3 * 1024 * 1024)
    big = tmp_path / "big.bin"
    big.write_bytes(data)
    headers = {"Authorization": f"Bearer {TOKENS['operate']}", "Tus-Resumable": "1.0.0"}
    created = requests.post(
        daemon.url + "/vault/uploads",
        headers={
            **headers,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": "name " + base64.b64encode(b"big.bin").decode(),
        },
        timeout=30,
    )
    url = daemon.url + created.headers["Location"]
    half = len(data) // 2
    sent = requests.patch(
        url,
        data=data[:half],
        headers={
            **headers,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
        timeout=30,
    )
    assert sent.status_code == 204
    info = big.stat()
    key = f"{daemon.url} {big.resolve()} {info.st_size} {info.st_mtime_ns} big.bin"
    state = tmp_path / "fiefdom" / "uploads.json"
    state.parent.mkdir()
    state.write_text(json.dumps({key: url}))

    out = fiefdom(daemon, tmp_path, "vault", "put", str(big), "--json")
    assert json.loads(out.stdout)[0]["version"] == 1
    head = requests.head(url, headers=headers, timeout=30)
    assert head.headers["Fiefdom-Version"] == "1"
    assert json.loads(state.read_text()) == {}
    got = requests.get(daemon.url + "/vault/resources/big.bin", headers=headers, timeout=30)
    assert got.content == data


def test_put_reports_a_refused_file_and_stores_the_others(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """``vault put`` of three files where the middle one's name is refused (a control
    character): the other two are stored and printed, the refused one is named on
    stderr with the reason, and the exit status is 1."""
    good = tmp_path / "keep-one.txt"
    good.write_text("one")
    bad = tmp_path / "bad\x01name.txt"
    bad.write_text("two")
    other = tmp_path / "keep-two.txt"
    other.write_text("three")
    put = fiefdom(daemon, tmp_path, "vault", "put", str(good), str(bad), str(other), check=False)
    assert put.returncode == 1, put.stderr
    printed = put.stdout.splitlines()
    assert [line.split("@")[0] for line in printed] == ["keep-one.txt", "keep-two.txt"]
    assert "invalid resource name" in put.stderr
    assert "1 of 3 files were not stored" in put.stderr
    ls = fiefdom(daemon, tmp_path, "vault", "ls", "--json")
    names = {r["name"] for r in json.loads(ls.stdout)}
    assert {"keep-one.txt", "keep-two.txt"} <= names
    assert not any(name.startswith("bad") for name in names)
