"""Batch ingest and location quotas (GUARANTEES 001/4: one bad item never rolls back
the good ones). ``Vault.put_many`` and ``POST /vault/batch`` answer one result per
item; a location's quota refuses the blob that would pass it, counts a deduplicated
blob once, and holds under concurrent commits on both dialects."""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from vault_daemon import MAX_UPLOAD, TOKENS, DaemonProcess, start

from fiefdom.storage import Store
from fiefdom.vault import Location, QuotaExceeded, Vault, VaultClient
from fiefdom.vault._headers import content_disposition


async def read(vault: Vault, name: str, version: int | None = None) -> bytes:
    async with await vault.open(name, version) as download:
        return await download.read()


async def test_put_many_answers_each_item_and_stores_every_good_one(
    store: Store, tmp_path: Path
) -> None:
    """100 items, one in ten bad (a name with a slash, one over max_size, a body that
    fails mid-stream): each bad item gets its code and message and stores nothing;
    the 90 good ones are stored with their bytes, results in the order of the items."""
    vault = Vault(store, Location("main", tmp_path / "loc"))
    rng = random.Random(7)

    async def failing() -> AsyncIterator[bytes]:
        yield b"half a body"
        raise ConnectionResetError("the client went away")

    items: list[tuple[str, Any]] = []
    expected: dict[int, tuple[str, str | None]] = {}
    for index in range(100):
        if index % 10 == 3:
            items.append((f"bad/{index}", b"x"))
            expected[index] = ("bad/" + str(index), "invalid_name")
        elif index % 10 == 5:
            items.append((f"big-{index}", b"y" * 2001))
            expected[index] = (f"big-{index}", "too_large")
        elif index % 10 == 7:
            items.append((f"cut-{index}", failing()))
            expected[index] = (f"cut-{index}", "source_failed")
        else:
            items.append((f"good-{index % 4}", rng.randbytes(rng.randrange(0, 2000))))
            expected[index] = (f"good-{index % 4}", None)

    results = await vault.put_many(items, concurrency=8, max_size=2000)

    assert len(results) == 100
    for index, result in enumerate(results):
        name, code = expected[index]
        assert (result.name, result.code) == (name, code), index
        if code is None:
            assert result.version is not None
            assert result.error is None
            data = items[index][1]
            assert result.version.sha256 == hashlib.sha256(data).hexdigest()
            assert await read(vault, name, result.version.version) == data
        else:
            assert result.version is None
            assert result.error
    for prefix in ("bad", "big-", "cut-"):
        assert not [
            r for r in (await vault.list(limit=1000)).resources if r.name.startswith(prefix)
        ]
    # Each name's versions are gapless: 1..n for the n good items of that name.
    for name in {f"good-{k}" for k in range(4)}:
        stored = sum(1 for r in results if r.name == name and r.code is None)
        assert [v.version for v in await vault.versions(name)] == list(range(1, stored + 1))


async def test_put_many_refuses_a_concurrency_below_one(store: Store, tmp_path: Path) -> None:
    """``concurrency`` must be at least 1: a clear ValueError, nothing stored."""
    vault = Vault(store, Location("main", tmp_path / "loc"))
    with pytest.raises(ValueError, match="concurrency must be"):
        await vault.put_many([("a", b"x")], concurrency=0)
    assert (await vault.stats()).versions == 0


async def test_a_quota_refuses_the_blob_that_would_pass_it(store: Store, tmp_path: Path) -> None:
    """A location with a quota of 10,000 bytes takes 9,000, refuses 2,000 more with
    QuotaExceeded naming the location and the figures (nothing committed), still
    takes another version of bytes it already holds (a deduplicated blob costs
    nothing), and 1,000 new bytes that exactly fill it."""
    location = Location("small", tmp_path / "small", quota=10_000)
    vault = Vault(store, location)
    held = os.urandom(9_000)
    await vault.put_many([("a", held)])
    with pytest.raises(QuotaExceeded) as refused:
        await vault.put("b", _one(os.urandom(2_000)))
    assert (refused.value.location, refused.value.quota, refused.value.used) == (
        "small",
        10_000,
        9_000,
    )
    assert refused.value.size == 2_000
    assert "small" in str(refused.value)
    assert "quota" in str(refused.value)
    stats = await vault.stats()
    assert (stats.resources, stats.versions, stats.bytes) == (1, 1, 9_000)
    again = await vault.put("b", _one(held))
    assert again.version == 1
    filler = await vault.put("c", _one(os.urandom(1_000)))
    assert filler.size == 1_000
    assert (await vault.stats()).bytes == 10_000


async def test_concurrent_commits_never_pass_a_quota(store: Store, tmp_path: Path) -> None:
    """30 puts of distinct 1,000-byte bodies at once into a location whose quota fits
    ten: exactly ten are stored and twenty refused with quota_exceeded, on both
    dialects (the commits of a location with a quota are serialised)."""
    location = Location("small", tmp_path / "small", quota=10_000)
    vault = Vault(store, location)
    items = [(f"r{i}", os.urandom(1_000)) for i in range(30)]
    results = await vault.put_many(items, concurrency=30)
    assert sum(1 for r in results if r.code is None) == 10
    assert {r.code for r in results if r.code is not None} == {"quota_exceeded"}
    assert (await vault.stats()).bytes == 10_000


def test_a_negative_quota_is_a_configuration_error(tmp_path: Path) -> None:
    """``Location(quota=-1)`` is refused at once, naming the setting."""
    with pytest.raises(ValueError, match="quota must be >= 0"):
        Location("x", tmp_path, quota=-1)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


# -- over HTTP ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon (SQLite) for the HTTP tests of this module."""
    proc = start(tmp_path_factory.mktemp("vault-batch"))
    try:
        yield proc
    finally:
        proc.stop()


def _part(
    writer: aiohttp.MultipartWriter, name: str, data: bytes, digest: str | None = None
) -> None:
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Disposition": content_disposition(name, 'form-data; name="file"'),
    }
    if digest is not None:
        headers["Content-Digest"] = digest
    writer.append(io.BytesIO(data), headers)


async def test_post_batch_stores_each_part_and_answers_each(daemon: DaemonProcess) -> None:
    """A multipart batch of five parts (two good, a traversal name, one over the
    daemon's upload limit, one with a wrong Content-Digest, a name beyond ASCII) is
    answered 200 with a result per part in order; the good ones read back, the
    refused ones created nothing."""
    good = os.urandom(70_000)
    other = os.urandom(10)
    writer = aiohttp.MultipartWriter("form-data")
    _part(writer, "batch-one", good)
    _part(writer, "../etc/passwd", b"nope")
    _part(writer, "batch-big", b"z" * (MAX_UPLOAD + 1))
    _part(writer, "batch-digest", b"abc", "sha-256=:" + "A" * 43 + "=:")
    _part(writer, "batch-€", other)
    headers = {"Authorization": f"Bearer {TOKENS['operate']}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{daemon.url}/vault/batch", data=writer, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        results = (await response.json())["results"]
    assert [(r["name"], r["code"]) for r in results] == [
        ("batch-one", None),
        ("../etc/passwd", "invalid_name"),
        ("batch-big", "too_large"),
        ("batch-digest", "checksum_mismatch"),
        ("batch-€", None),
    ]
    assert results[0]["version"]["sha256"] == hashlib.sha256(good).hexdigest()
    assert results[4]["version"]["version"] == 1
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{daemon.url}/vault/resources/batch-one") as response:
            assert await response.read() == good
        async with http.get(f"{daemon.url}/vault/resources/batch-%E2%82%AC") as response:
            assert await response.read() == other
        for name in ("batch-big", "batch-digest"):
            async with http.get(f"{daemon.url}/vault/resources/{name}") as response:
                assert response.status == 404


async def test_post_batch_needs_multipart_and_the_operate_role(daemon: DaemonProcess) -> None:
    """A batch that is not multipart is 415 naming the form it takes; a read token is
    403; neither stores anything."""
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{daemon.url}/vault/batch",
            data=b"just bytes",
            headers={"Authorization": f"Bearer {TOKENS['operate']}"},
        ) as response:
            assert response.status == 415
            body = await response.json()
            assert body["code"] == "unsupported_media_type"
            assert "multipart/form-data" in body["message"]
        writer = aiohttp.MultipartWriter("form-data")
        _part(writer, "batch-read", b"x")
        async with http.post(
            f"{daemon.url}/vault/batch",
            data=writer,
            headers={"Authorization": f"Bearer {TOKENS['read']}"},
        ) as response:
            assert response.status == 403
        async with http.get(
            f"{daemon.url}/vault/resources/batch-read",
            headers={"Authorization": f"Bearer {TOKENS['read']}"},
        ) as response:
            assert response.status == 404


async def test_a_batch_cut_off_keeps_the_parts_before(daemon: DaemonProcess) -> None:
    """A raw request whose multipart body ends inside its second part: the first part
        is stored, the second answered ``body_incomplete`` and not stored (a cut-off
    body never becomes a version)."""
    boundary = "fiefdomboundary"
    first = os.urandom(1000)
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="cut-first"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + first
        + (
            f"\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="cut-second"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + b"partial"
    )
    host, port = daemon.url.removeprefix("http://").split(":")
    stream = await anyio.connect_tcp(host, int(port))
    async with stream:
        head = (
            f"POST /vault/batch HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {TOKENS['operate']}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        await stream.send(head + body)
        reply = b""
        with anyio.fail_after(30):
            async for chunk in stream:
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert b'"cut-first"' in reply
    assert b'"name":"cut-second","version":null,"code":"body_incomplete"' in reply
    headers = {"Authorization": f"Bearer {TOKENS['read']}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{daemon.url}/vault/resources/cut-first") as response:
            assert await response.read() == first
        async with http.get(f"{daemon.url}/vault/resources/cut-second") as response:
            assert response.status == 404


async def test_the_client_uploads_a_batch_and_reads_each_result(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """``VaultClient.put_many`` streams three files in one request (each with its
    Content-Digest): the two with good names are stored and read back, the one named
    ``..`` is refused by name, each result in the order given."""
    files = []
    for index in range(3):
        path = tmp_path / f"client-{index}.bin"
        path.write_bytes(os.urandom(50_000 + index))
        files.append(path)
    async with VaultClient(daemon.url, token=TOKENS["operate"]) as client:
        results = await client.put_many([files[0], ("..", files[1]), ("client-€", files[2])])
        assert [(r.name, r.code) for r in results] == [
            ("client-0.bin", None),
            ("..", "invalid_name"),
            ("client-€", None),
        ]
        assert results[0].version is not None
        assert results[0].version.sha256 == hashlib.sha256(files[0].read_bytes()).hexdigest()
        copy = tmp_path / "copy"
        await client.get("client-€", copy)
        assert copy.read_bytes() == files[2].read_bytes()


async def test_a_daemon_with_a_quota_refuses_past_it_with_413(tmp_path: Path) -> None:
    """``[vault] quota_bytes`` on a real daemon: a PUT that fits is 201, the next new
    bytes past the quota are 413 ``quota_exceeded`` with the figures (the client
    raises QuotaExceeded), the same bytes again still fit (deduplicated)."""
    proc = start(tmp_path / "d", vault="quota_bytes = 100000\n")
    try:
        first = tmp_path / "first.bin"
        first.write_bytes(os.urandom(80_000))
        second = tmp_path / "second.bin"
        second.write_bytes(os.urandom(30_000))
        async with VaultClient(proc.url, token=TOKENS["operate"]) as client:
            assert (await client.put(first, "q1")).version == 1
            with pytest.raises(QuotaExceeded) as refused:
                await client.put(second, "q2")
            assert (refused.value.quota, refused.value.used, refused.value.size) == (
                100_000,
                80_000,
                30_000,
            )
            assert (await client.put(first, "q3")).version == 1
            assert (await client.stats()).bytes == 80_000
    finally:
        proc.stop()


async def test_an_item_whose_chunks_are_not_bytes_is_its_own_failure(
    store: Store, tmp_path: Path
) -> None:
    """An item whose chunks are text, not bytes, is answered ``invalid_request`` with
    the reason; the item beside it is stored all the same."""
    vault = Vault(store, Location("main", tmp_path / "loc"))

    async def text() -> AsyncIterator[Any]:
        yield "not bytes"

    results = await vault.put_many([("good", b"x" * 10), ("bad", text())])
    assert [(r.name, r.code) for r in results] == [("good", None), ("bad", "invalid_request")]
    assert "chunks of bytes" in (results[1].error or "")
    assert await read(vault, "good") == b"x" * 10


async def test_a_refusal_by_the_quota_leaves_no_file_behind(store: Store, tmp_path: Path) -> None:
    """An upload the quota refuses is refused before its file is published: the
    location holds exactly the files of its blob rows, and no temp file."""
    location = Location("small", tmp_path / "small", quota=5_000)
    vault = Vault(store, location)
    await vault.put("a", _one(os.urandom(4_000)))
    for attempt in range(3):
        with pytest.raises(QuotaExceeded):
            await vault.put(f"b{attempt}", _one(os.urandom(2_000)))
    blob_files = [p for p in (tmp_path / "small" / "blobs").rglob("*") if p.is_file()]
    assert len(blob_files) == (await vault.stats()).blobs == 1
    assert not [p for p in (tmp_path / "small" / "tmp").rglob("*") if p.is_file()]


async def test_a_batch_past_its_part_limit_answers_once_and_stops_reading(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the limit at 3 parts, a batch of 6 stores the first 3, answers the 4th
    ``too_many_items`` and reads no further: one result more than the limit, however
    many parts the body holds."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from fiefdom.vault import VaultHttp, _batch

    monkeypatch.setattr(_batch, "MAX_ITEMS", 3)
    vault = Vault(store, Location("main", tmp_path / "loc"))
    app = web.Application()
    VaultHttp(vault, max_upload=None).mount(app, lambda request, role: None)
    writer = aiohttp.MultipartWriter("form-data")
    for index in range(6):
        _part(writer, f"limit-{index}", b"%d" % index)
    async with (
        TestServer(app, host="127.0.0.1") as server,
        aiohttp.ClientSession() as http,
        http.post(server.make_url("/vault/batch"), data=writer) as response,
    ):
        assert response.status == 200
        results = (await response.json())["results"]
    assert [(r["name"], r["code"]) for r in results] == [
        ("limit-0", None),
        ("limit-1", None),
        ("limit-2", None),
        ("limit-3", "too_many_items"),
    ]
    assert (await vault.stats()).versions == 3
