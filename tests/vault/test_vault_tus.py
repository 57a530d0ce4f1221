"""tus 1.0 resumable uploads on a real daemon, with a real tus client (tuspy): an
upload in chunks interrupted, the daemon restarted, resumed and completed; a PATCH
whose Upload-Checksum does not match is 460 and its bytes discarded; a wrong
Upload-Offset is 409; a second PATCH of an upload being written is 423; the
discovery headers, creation with upload, termination and expiry."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from tusclient.client import TusClient
from tusclient.uploader import Uploader
from vault_daemon import MAX_UPLOAD, TOKENS, DaemonProcess, files, start
from vault_helpers import HANG_GUARD

TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = 256 * 1024


class Sha256Uploader(Uploader):
    """tuspy's uploader sending sha256 checksums (its default is sha1)."""

    CHECKSUM_ALGORITHM_PAIR = ("sha256", hashlib.sha256)


def auth(role: str = "operate") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def name_metadata(name: str) -> str:
    return "name " + base64.b64encode(name.encode()).decode()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon (SQLite) shared by the tests of this module."""
    proc = start(tmp_path_factory.mktemp("vault-tus"))
    try:
        yield proc
    finally:
        proc.stop()


def create(daemon: DaemonProcess, name: str, length: int) -> str:
    response = requests.post(
        daemon.url + "/vault/uploads",
        headers={
            **auth(),
            **TUS,
            "Upload-Length": str(length),
            "Upload-Metadata": name_metadata(name),
        },
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return daemon.url + response.headers["Location"]


def patch(url: str, offset: int, body: bytes, checksum: bytes | None = None) -> requests.Response:
    headers = {
        **auth(),
        **TUS,
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
    }
    if checksum is not None:
        headers["Upload-Checksum"] = "sha256 " + base64.b64encode(checksum).decode()
    return requests.patch(url, data=body, headers=headers, timeout=30)


def offset_of(url: str) -> int:
    response = requests.head(url, headers={**auth(), **TUS}, timeout=30)
    assert response.status_code == 200, response.status_code
    assert response.headers["Cache-Control"] == "no-store"
    return int(response.headers["Upload-Offset"])


def test_tuspy_upload_interrupted_by_a_restart_resumes_and_completes(tmp_path: Path) -> None:
    """tuspy uploads 3 chunks of a 2 MiB file and stops; the daemon is restarted; a
    new tuspy uploader on the same URL finds the offset of those 3 chunks, sends the
    rest and completes: the version has exactly the file's bytes, and the final
    reply carried Fiefdom-Version and ETag."""
    daemon = start(tmp_path / "d")
    try:
        data = os.urandom(2 * 1024 * 1024 + 17)
        source = tmp_path / "movie.bin"
        source.write_bytes(data)
        client = TusClient(daemon.url + "/vault/uploads", headers=auth())
        # (A stream of our own: tuspy leaves the files it opens from a path open.)
        with source.open("rb") as stream:
            first = Sha256Uploader(
                file_stream=stream,
                client=client,
                chunk_size=CHUNK,
                metadata={"name": "movie.bin", "filetype": "video/x-test"},
                upload_checksum=True,
            )
            for _ in range(3):
                first.upload_chunk()
        upload_path = first.url.removeprefix(daemon.url)
        assert first.offset == 3 * CHUNK

        daemon.stop()
        daemon.launch()
        daemon.wait_ready()

        url = daemon.url + upload_path
        assert offset_of(url) == 3 * CHUNK
        client = TusClient(daemon.url + "/vault/uploads", headers=auth())
        with source.open("rb") as stream:
            second = Sha256Uploader(
                file_stream=stream, client=client, url=url, chunk_size=CHUNK, upload_checksum=True
            )
            assert second.offset == 3 * CHUNK
            second.upload()
        assert second.offset == len(data)
        final = second.request.response_headers
        assert final["fiefdom-version"] == "1"
        assert final["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        response = requests.get(
            daemon.url + "/vault/resources/movie.bin", headers=auth("read"), timeout=30
        )
        assert response.content == data
        # Completed: HEAD still tells the version (a client that lost the last reply).
        head = requests.head(url, headers={**auth(), **TUS}, timeout=30)
        assert head.headers["Upload-Offset"] == str(len(data))
        assert head.headers["Fiefdom-Version"] == "1"
        assert not any(p.suffix == ".part" for p in files(daemon.data / "vault" / "uploads"))
    finally:
        daemon.stop()


def test_checksum_mismatch_is_460_and_the_chunk_is_discarded(daemon: DaemonProcess) -> None:
    """A PATCH whose Upload-Checksum is not its body's sha256 is 460; the offset stays
    where it was, and the right bytes at that offset are then taken."""
    url = create(daemon, "checked.bin", 20)
    assert patch(url, 0, b"0123456789", hashlib.sha256(b"0123456789").digest()).status_code == 204
    bad = patch(url, 10, b"abcdefghij", hashlib.sha256(b"something else").digest())
    assert bad.status_code == 460
    assert bad.json()["code"] == "checksum_mismatch"
    assert offset_of(url) == 10
    good = patch(url, 10, b"ABCDEFGHIJ", hashlib.sha256(b"ABCDEFGHIJ").digest())
    assert good.status_code == 204
    assert good.headers["Fiefdom-Version"] == "1"
    response = requests.get(
        daemon.url + "/vault/resources/checked.bin", headers=auth("read"), timeout=30
    )
    assert response.content == b"0123456789ABCDEFGHIJ"


def test_offset_mismatch_is_409_and_a_concurrent_patch_is_423(daemon: DaemonProcess) -> None:
    """A PATCH at another offset than the upload's is 409 (the details give the
    offset); while one PATCH's body is still arriving, a second PATCH of the same
    upload is 423 Locked; the first then completes."""
    url = create(daemon, "locked.bin", 10)
    conflict = patch(url, 5, b"12345")
    assert conflict.status_code == 409
    assert conflict.json()["details"]["offset"] == 0
    path = url.removeprefix(daemon.url)
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as slow:
        slow.sendall(
            f"PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS['operate']}\r\n"
            "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
            "Content-Type: application/offset+octet-stream\r\nContent-Length: 10\r\n"
            "Connection: close\r\n\r\n01234".encode()
        )
        deadline = time.monotonic() + HANG_GUARD
        # The second PATCH names a wrong offset: it is 409 until the first holds the
        # upload, then 423, and never writes anything either way.
        while (status := patch(url, 99, b"x").status_code) != 423:
            assert status == 409, status
            assert time.monotonic() < deadline, "the first PATCH never held the upload"
        slow.sendall(b"56789")
        reply = b""
        while chunk := slow.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 204"), reply
    assert b"Fiefdom-Version: 1" in reply


def test_discovery_creation_with_upload_termination_and_expiry(daemon: DaemonProcess) -> None:
    """OPTIONS lists the version, extensions, checksum algorithm and max size; a
    POST carrying the whole body creates the version at once; DELETE terminates an
    upload (404 after); an expired upload is 410 and its files are removed; a
    request without Tus-Resumable is 412; a POST without a name is 400."""
    options = requests.options(daemon.url + "/vault/uploads", headers=auth("read"), timeout=30)
    assert options.status_code == 204
    assert options.headers["Tus-Version"] == "1.0.0"
    assert set(options.headers["Tus-Extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "checksum",
        "termination",
        "expiration",
    }
    assert options.headers["Tus-Checksum-Algorithm"] == "sha256"
    assert options.headers["Tus-Max-Size"] == str(MAX_UPLOAD)

    at_once = requests.post(
        daemon.url + "/vault/uploads",
        data=b"all at once",
        headers={
            **auth(),
            **TUS,
            "Upload-Length": "11",
            "Upload-Metadata": name_metadata("once.txt"),
            "Content-Type": "application/offset+octet-stream",
        },
        timeout=30,
    )
    assert at_once.status_code == 201
    assert at_once.headers["Upload-Offset"] == "11"
    assert at_once.headers["Fiefdom-Version"] == "1"
    assert "Upload-Expires" in at_once.headers

    url = create(daemon, "dropped.bin", 100)
    assert patch(url, 0, b"x" * 40).status_code == 204
    assert requests.delete(url, headers={**auth(), **TUS}, timeout=30).status_code == 204
    assert requests.head(url, headers={**auth(), **TUS}, timeout=30).status_code == 404

    url = create(daemon, "stale.bin", 100)
    upload = url.rsplit("/", 1)[1]
    sidecar = daemon.data / "vault" / "uploads" / f"{upload}.json"
    state = json.loads(sidecar.read_text())
    state["expires_at"] = time.time() - 1
    sidecar.write_text(json.dumps(state))
    assert requests.head(url, headers={**auth(), **TUS}, timeout=30).status_code == 410
    assert not sidecar.exists()
    assert not sidecar.with_suffix(".part").exists()

    no_version = requests.head(url, headers=auth(), timeout=30)
    assert no_version.status_code == 412
    nameless = requests.post(
        daemon.url + "/vault/uploads",
        headers={**auth(), **TUS, "Upload-Length": "5"},
        timeout=30,
    )
    assert nameless.status_code == 400
    assert nameless.headers["Tus-Resumable"] == "1.0.0"
    hostile = requests.post(
        daemon.url + "/vault/uploads",
        headers={**auth(), **TUS, "Upload-Length": "5", "Upload-Metadata": name_metadata("../x")},
        timeout=30,
    )
    assert hostile.status_code == 400
    assert hostile.json()["code"] == "invalid_name"
    read_only = requests.post(
        daemon.url + "/vault/uploads",
        headers={**auth("read"), **TUS, "Upload-Length": "5", "Upload-Metadata": "name eA=="},
        timeout=30,
    )
    assert read_only.status_code == 403
