"""The vault over HTTP on a real daemon (its control address, its tokens): streamed
PUT and GET of real files, Content-Digest, the size limit, Range, ETag and
If-None-Match, roles, hostile names sent byte for byte, listings, deletes, stats
and fsck. The round trip runs on both dialects; the rest on SQLite (the HTTP layer
is the same on both)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from vault_daemon import MAX_UPLOAD, TOKENS, DaemonProcess, files, raw_request, start
from vault_helpers import HANG_GUARD

from fiefdom.vault import VaultClient


def auth(role: str = "operate") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon (SQLite) shared by the tests of this module."""
    proc = start(tmp_path_factory.mktemp("vault-http"))
    try:
        yield proc
    finally:
        proc.stop()


async def stats(url: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url + "/vault/stats", headers=auth("read")) as response,
    ):
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def test_put_then_get_round_trips_a_multi_mib_file(store_url: str, tmp_path: Path) -> None:
    """(Both dialects.) A 5 MiB file PUT streamed (with its Content-Digest) is 201
    with its version and hash, reads back byte for byte with ETag, Accept-Ranges and
    Content-Disposition; the same bytes again are version 2 of one blob; HEAD has the
    headers, no body; the fsck at start logged its summary line."""
    daemon = start(tmp_path / "d", store_url)
    try:
        data = os.urandom(5 * 1024 * 1024 + 123)
        source = tmp_path / "source.bin"
        source.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        async with VaultClient(daemon.url, token=TOKENS["operate"]) as vault:
            first = await vault.put(source, "report €.bin")
            assert (first.resource, first.version, first.sha256, first.size) == (
                "report €.bin",
                1,
                sha,
                len(data),
            )
            again = await vault.put(source, "report €.bin")
            assert again.version == 2
            assert (await vault.stats()).blobs == 1
        quoted = "report%20%E2%82%AC.bin"
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"{daemon.url}/vault/resources/{quoted}", headers=auth("read")
            ) as response:
                assert response.status == 200
                assert await response.read() == data
                assert response.headers["ETag"] == f'"{sha}"'
                assert response.headers["Accept-Ranges"] == "bytes"
                assert response.headers["Fiefdom-Version"] == "2"
                assert (
                    "filename*=UTF-8''report%20%E2%82%AC.bin"
                    in (response.headers["Content-Disposition"])
                )
            async with http.head(
                f"{daemon.url}/vault/resources/{quoted}/versions/1", headers=auth("read")
            ) as response:
                assert response.status == 200
                assert response.headers["Content-Length"] == str(len(data))
                assert await response.read() == b""
            async with http.get(
                f"{daemon.url}/vault/resources/{quoted}/versions", headers=auth("read")
            ) as response:
                versions = (await response.json())["versions"]
        assert [(v["version"], v["sha256"], v["size"]) for v in versions] == [
            (1, sha, len(data)),
            (2, sha, len(data)),
        ]
        assert all(v["location"] == "vault" and v["created_at"] > 0 for v in versions)
        # The start's fsck logged its one summary line.
        deadline = time.monotonic() + HANG_GUARD
        while "vault checked" not in daemon.log():
            assert time.monotonic() < deadline, daemon.log()
            await asyncio.sleep(0.05)
    finally:
        daemon.stop()


async def test_content_digest_mismatch_commits_nothing(daemon: DaemonProcess) -> None:
    """A PUT whose Content-Digest is not the body's sha-256 is 400 checksum_mismatch:
    no resource, no version, no blob, no temp file left."""
    before = await stats(daemon.url)
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    async with aiohttp.ClientSession() as http:
        async with http.put(
            f"{daemon.url}/vault/resources/digest.txt",
            data=b"the real bytes" * 1000,
            headers={**auth(), "Content-Digest": f"sha-256=:{wrong}:"},
        ) as response:
            assert response.status == 400
            body = await response.json()
        assert body["code"] == "checksum_mismatch"
        assert set(body) == {"code", "message", "details"}
        async with http.put(
            f"{daemon.url}/vault/resources/digest.txt",
            data=b"x",
            headers={**auth(), "Content-Digest": "sha-256=:not base64!:"},
        ) as response:
            assert response.status == 400
            assert (await response.json())["code"] == "invalid_header"
        async with http.get(
            f"{daemon.url}/vault/resources/digest.txt", headers=auth("read")
        ) as response:
            assert response.status == 404
    assert await stats(daemon.url) == before
    assert list(files(daemon.data / "vault" / "tmp")) == []


async def test_uploads_over_the_size_limit_are_413_and_kept_nowhere(daemon: DaemonProcess) -> None:
    """Past max_upload_bytes a PUT is 413, whether its Content-Length says so up front
    or a chunked body passes the limit on the way; a tus upload announcing more is
    413 at creation. Nothing is stored."""
    before = await stats(daemon.url)

    async def chunked() -> Any:
        for _ in range(MAX_UPLOAD // 65536 + 2):
            yield b"z" * 65536

    async with aiohttp.ClientSession() as http:
        async with http.put(
            f"{daemon.url}/vault/resources/big.bin",
            data=io.BytesIO(b"y" * (MAX_UPLOAD + 1)),
            headers=auth(),
        ) as response:
            assert response.status == 413
            body = await response.json()
            assert body["code"] == "too_large"
            assert body["details"]["limit"] == MAX_UPLOAD
        async with http.put(
            f"{daemon.url}/vault/resources/big.bin", data=chunked(), headers=auth()
        ) as response:
            assert response.status == 413
        async with http.post(
            f"{daemon.url}/vault/uploads",
            headers={
                **auth(),
                "Tus-Resumable": "1.0.0",
                "Upload-Length": str(MAX_UPLOAD + 1),
                "Upload-Metadata": "name " + base64.b64encode(b"big.bin").decode(),
            },
        ) as response:
            assert response.status == 413
    assert await stats(daemon.url) == before
    assert list(files(daemon.data / "vault" / "tmp")) == []


async def test_range_if_none_match_and_bad_ranges(daemon: DaemonProcess) -> None:
    """Range returns exactly the bytes asked for (206, Content-Range), a suffix and an
    open range included; a range past the end is 416 with ``bytes */size``;
    If-None-Match with the ETag is 304 without a body."""
    data = bytes(range(256)) * 40
    async with aiohttp.ClientSession() as http:
        async with http.put(
            f"{daemon.url}/vault/resources/ranges.bin", data=data, headers=auth()
        ) as response:
            assert response.status == 201
            etag = response.headers["ETag"]
        path = f"{daemon.url}/vault/resources/ranges.bin"
        for header, start, end in [
            ("bytes=10-19", 10, 19),
            ("bytes=-5", len(data) - 5, len(data) - 1),
            ("bytes=10000-", 10000, len(data) - 1),
            ("bytes=0-999999", 0, len(data) - 1),
        ]:
            async with http.get(path, headers={**auth("read"), "Range": header}) as response:
                assert response.status == 206, header
                assert await response.read() == data[start : end + 1], header
                assert response.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
        for header in ("bytes=10240-", "bytes=999999-1000000", "bytes=-0"):
            async with http.get(path, headers={**auth("read"), "Range": header}) as response:
                assert response.status == 416, header
                assert response.headers["Content-Range"] == f"bytes */{len(data)}"
                assert (await response.json())["code"] == "bad_range"
        async with http.get(path, headers={**auth("read"), "If-None-Match": etag}) as response:
            assert response.status == 304
            assert await response.read() == b""
            assert response.headers["ETag"] == etag
        async with http.get(path, headers={**auth("read"), "If-None-Match": '"0000"'}) as response:
            assert response.status == 200
            assert await response.read() == data


async def test_tokens_and_roles(daemon: DaemonProcess) -> None:
    """No token or a wrong one is 401; a read token reads but cannot PUT or DELETE
    (403); an operate token writes but cannot fsck (403); admin can. Every refusal
    is JSON with code, message and details, and commits nothing."""
    path = f"{daemon.url}/vault/resources/roles.txt"
    async with aiohttp.ClientSession() as http:
        async with http.put(path, data=b"hello", headers=auth("operate")) as response:
            assert response.status == 201
        before = await stats(daemon.url)
        for headers in ({}, {"Authorization": "Bearer nope"}):
            async with http.get(path, headers=headers) as response:
                assert response.status == 401
                body = await response.json()
                assert body["code"] == "unauthenticated"
                assert set(body) == {"code", "message", "details"}
        async with http.put(path, data=b"changed", headers=auth("read")) as response:
            assert response.status == 403
            assert (await response.json())["code"] == "forbidden"
        async with http.delete(path, headers=auth("read")) as response:
            assert response.status == 403
        async with http.get(path, headers=auth("read")) as response:
            assert await response.read() == b"hello"
        async with http.post(f"{daemon.url}/vault/fsck", headers=auth("operate")) as response:
            assert response.status == 403
        async with http.post(f"{daemon.url}/vault/fsck", headers=auth("admin")) as response:
            assert response.status == 200
            report = await response.json()
            assert report["missing"] == []
    assert await stats(daemon.url) == before


@pytest.mark.parametrize(
    "raw_name",
    [
        "%2E%2E",
        "..",
        "a%2Fb",
        "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "a%5Cb",
        "a%00b",
        "%E2%80%AEevil.txt",
        "CON",
        "%FF%FE",
        "%20lead",
    ],
)
def test_hostile_names_are_400_and_create_nothing(daemon: DaemonProcess, raw_name: str) -> None:
    """A name sent exactly as written (percent-encoded dots, slashes, NUL, a bidi
    override, a device name, invalid UTF-8) is 400 invalid_name for PUT and tus
    creation alike, and nothing appears in the store or on disk."""
    vault = daemon.data / "vault"
    before = sorted(files(vault / "blobs"))
    body = b"payload"
    status, _, reply = raw_request(
        daemon.url,
        f"PUT /vault/resources/{raw_name} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKENS['operate']}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body,
    )
    assert status == 400, reply
    assert b'"invalid_name"' in reply
    status, _, reply = raw_request(
        daemon.url,
        f"GET /vault/resources/{raw_name}/versions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKENS['read']}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status == 400, reply
    assert sorted(files(vault / "blobs")) == before
    assert list(files(vault / "tmp")) == []
    assert not any(vault.parent.parent.rglob("passwd"))


async def test_listing_deletes_and_stats(daemon: DaemonProcess) -> None:
    """Resources list by name in pages (limit, next); DELETE of a version and of a
    resource are 204 and the deleted ones are 404 after; stats count what is left."""
    async with aiohttp.ClientSession() as http:
        for name in ("list-a", "list-b", "list-c"):
            for text in (b"one", b"two"):
                async with http.put(
                    f"{daemon.url}/vault/resources/{name}",
                    data=name.encode() + text,
                    headers=auth(),
                ) as response:
                    assert response.status == 201
        seen: list[str] = []
        after = "list-"
        while after is not None:
            async with http.get(
                f"{daemon.url}/vault/resources",
                params={"limit": "2", "after": after},
                headers=auth("read"),
            ) as response:
                page = await response.json()
            seen += [r["name"] for r in page["resources"] if r["name"].startswith("list-")]
            after = page["next"]
        assert seen == ["list-a", "list-b", "list-c"]
        async with http.get(
            f"{daemon.url}/vault/resources", params={"limit": "0"}, headers=auth("read")
        ) as response:
            assert response.status == 400
        base = f"{daemon.url}/vault/resources/list-a"
        async with http.delete(f"{base}/versions/1", headers=auth()) as response:
            assert response.status == 204
        async with http.get(f"{base}/versions/1", headers=auth("read")) as response:
            assert response.status == 404
            assert (await response.json())["code"] == "not_found"
        async with http.get(base, headers=auth("read")) as response:
            assert await response.read() == b"list-atwo"
        async with http.delete(base, headers=auth()) as response:
            assert response.status == 204
        async with http.delete(base, headers=auth()) as response:
            assert response.status == 404
        async with http.get(f"{base}/versions", headers=auth("read")) as response:
            assert response.status == 404
        async with http.get(f"{base}/versions/x", headers=auth("read")) as response:
            assert response.status == 400
        async with http.post(base, headers=auth()) as response:
            assert response.status == 405
            assert "PUT" in response.headers["Allow"]
    counted = await stats(daemon.url)
    assert set(counted) == {"resources", "versions", "blobs", "bytes", "pending_sweeps"}
    assert counted["pending_sweeps"] >= 1


async def test_the_daemons_commits_run_in_each_resources_actor(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """The daemon's vault runs each resource's commits and deletes in its actor: after
    puts to two new resources and a delete, the status tree shows the vault's domain
    with those activations (one owner per resource inside the daemon; the database's
    row lock orders them across daemons)."""
    import fiefdom

    async def vault_domain() -> dict[str, Any]:
        async with fiefdom.connect(daemon.url, token=TOKENS["admin"]) as client:
            status = await client.status()
        children = status.tree["children"]
        found = [c for c in children if c["path"].endswith("/fiefdom.vault")]
        assert len(found) == 1, children
        return dict(found[0])

    before = (await vault_domain())["activations"]
    source = tmp_path / "actor.bin"
    source.write_bytes(os.urandom(1000))
    async with VaultClient(daemon.url, token=TOKENS["operate"]) as vault:
        await vault.put(source, "actor-one")
        await vault.put(source, "actor-two")
        await vault.put(source, "actor-one")
        await vault.rm("actor-two")
    domain = await vault_domain()
    assert domain["kind"] == "domain"
    assert domain["activations"] - before == 2
    assert domain["crashes"] == 0
