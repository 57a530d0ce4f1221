"""How ``GET /vault/resources/...`` sends a version's bytes, in-process on the test's
event loop: by the loop's ``sendfile`` (asyncio's; over TLS it reads and writes
itself), or, where the loop has none (uvloop), in chunks read by a worker thread;
both paths send exactly the bytes of the whole version or of its range, with the
same headers, and a blob file shorter than its version never passes for a whole
body."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from vault_helpers import chunks

from fiefdom.storage import Store
from fiefdom.vault import Location, Vault, VaultHttp

pytestmark = pytest.mark.dialect("sqlite")  # (the HTTP layer is the same on both)

SIZE = 9 * 2**20 + 123  # several of the chunks sent without sendfile


@pytest.fixture(params=["sendfile", "chunks"])
async def send(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The path under test; the byte counts the loop's sendfile sent (it is wrapped,
    or refused with NotImplementedError as uvloop's is)."""
    loop = asyncio.get_running_loop()
    native = type(loop).sendfile is not asyncio.AbstractEventLoop.sendfile
    sent: list[int] = []
    if request.param == "sendfile":
        if not native:
            pytest.skip(f"{type(loop).__name__} has no sendfile")
        original = loop.sendfile

        async def counting(*args: Any, **kwargs: Any) -> int:
            count = await original(*args, **kwargs)
            sent.append(count)
            return count

        monkeypatch.setattr(loop, "sendfile", counting)
    elif native:

        async def refusing(*args: Any, **kwargs: Any) -> int:
            raise NotImplementedError

        monkeypatch.setattr(loop, "sendfile", refusing)
    return sent


@pytest.fixture
async def server(store: Store, tmp_path: Path) -> AsyncIterator[tuple[Vault, str]]:
    vault = Vault(store, Location("main", tmp_path / "store"))
    app = web.Application()
    VaultHttp(vault, max_upload=None).mount(app, lambda request, role: None)
    async with TestServer(app, host="127.0.0.1") as test_server:
        yield vault, str(test_server.make_url("/vault/resources"))


async def test_over_tls_the_bytes_are_the_same(
    store: Store, tmp_path: Path, send: list[int], request: pytest.FixtureRequest
) -> None:
    """(asyncio's sendfile has no zero-copy path for TLS: it reads and writes itself.)"""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    vault = Vault(store, Location("main", tmp_path / "store"))
    app = web.Application()
    VaultHttp(vault, max_upload=None).mount(app, lambda request, role: None)
    data = os.urandom(SIZE)
    await vault.put("tls.bin", chunks(data, 1 << 20))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
        await site.start()
        url = f"https://127.0.0.1:{runner.addresses[0][1]}/vault/resources/tls.bin"
        async with aiohttp.ClientSession() as http:
            async with http.get(url, ssl=client_context) as response:
                assert response.status == 200
                assert await response.read() == data
            headers = {"Range": "bytes=5-4194400"}
            async with http.get(url, ssl=client_context, headers=headers) as response:
                assert response.status == 206
                assert await response.read() == data[5:4194401]
    finally:
        await runner.cleanup()
    if request.node.callspec.params["send"] == "sendfile":
        assert sum(send) == SIZE + 4194396


async def test_whole_versions_and_ranges_are_sent_exactly(
    server: tuple[Vault, str], send: list[int], request: pytest.FixtureRequest
) -> None:
    """A whole version and ranges of it (the first byte, the middle, the end, a
    suffix) come back exactly, by either way of sending the file."""
    vault, base = server
    data = os.urandom(SIZE)
    info = await vault.put("big.bin", chunks(data, 1 << 20))
    await vault.put("empty", chunks(b""))
    etag = f'"{info.sha256}"'
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/big.bin") as response:
            assert response.status == 200
            assert await response.read() == data
            assert response.headers["ETag"] == etag
            assert response.headers["Content-Length"] == str(SIZE)
            assert response.headers["Accept-Ranges"] == "bytes"
            assert response.headers["Fiefdom-Version"] == "1"
            assert "attachment" in response.headers["Content-Disposition"]
        for header, start, end in [
            ("bytes=0-0", 0, 0),
            ("bytes=1000-5000000", 1000, 5000000),
            ("bytes=-7", SIZE - 7, SIZE - 1),
            ("bytes=4194303-", 4194303, SIZE - 1),
        ]:
            headers = {"Range": header, "If-Range": etag}
            async with http.get(f"{base}/big.bin/versions/1", headers=headers) as response:
                assert response.status == 206, header
                assert response.headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
                assert await response.read() == data[start : end + 1], header
        headers = {"Range": "bytes=10-19", "If-Range": '"another"'}
        async with http.get(f"{base}/big.bin", headers=headers) as response:
            assert response.status == 200
            assert hashlib.sha256(await response.read()).hexdigest() == info.sha256
        async with http.head(f"{base}/big.bin") as response:
            assert response.status == 200
            assert response.headers["Content-Length"] == str(SIZE)
            assert await response.read() == b""
        async with http.get(f"{base}/big.bin", headers={"If-None-Match": etag}) as response:
            assert response.status == 304
            assert await response.read() == b""
        async with http.get(f"{base}/empty") as response:
            assert response.status == 200
            assert await response.read() == b""
    if request.node.callspec.params["send"] == "sendfile":  # every body went by sendfile
        assert sum(send) == 2 * SIZE + 1 + 4999001 + 7 + (SIZE - 4194303)


async def test_a_blob_file_shorter_than_its_version_is_never_a_whole_body(
    server: tuple[Vault, str], send: list[int]
) -> None:
    """(fsck reports such a file; a download must not pass it off as the version.)"""
    vault, base = server
    data = os.urandom(SIZE)
    info = await vault.put("cut.bin", chunks(data, 1 << 20))
    path = vault.locations["main"].blob_path(info.sha256)
    os.truncate(path, SIZE - 1000)
    async with aiohttp.ClientSession() as http, http.get(f"{base}/cut.bin") as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
