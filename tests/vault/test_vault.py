"""The vault on both dialects, with real files in tmp_path: streamed ingest and ranged
reads, deduplication under concurrency (GUARANTEES 001/3, 001/6, 001/16), gapless
versions under concurrency (000/1c, 000/1d), limits and checksums that commit nothing
(000/3b, 001/5), a read-only location (001/2), listing and deletes."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from vault_helpers import chunks, files_under, read_only

from fiefdom import ActorSystem, ConfigurationError, StaleOwner
from fiefdom.storage import Store
from fiefdom.vault import (
    BadRange,
    ChecksumMismatch,
    InvalidName,
    Location,
    LocationUnavailable,
    NotFound,
    TooLarge,
    Vault,
    VaultStats,
)
from fiefdom.vault._disk import CHUNK

EMPTY = VaultStats(resources=0, versions=0, blobs=0, bytes=0, pending_sweeps=0)


@pytest.fixture
def location(tmp_path: Path) -> Location:
    return Location("main", tmp_path / "store-a")


@pytest.fixture
def vault(store: Store, location: Location) -> Vault:
    return Vault(store, location, grace=3600.0)


def body(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


async def test_a_multi_mib_body_streams_in_and_reads_back_whole_and_by_range(
    vault: Vault, location: Location
) -> None:
    """A 5 MiB body sent in 64 KiB chunks is stored under its sha256 (the path made of the
    hash only), read back exactly, in chunks no larger than the vault's, and any range
    returns exactly its bytes; no temp file is left (GUARANTEES 000/3b, 001/15)."""
    data = body(5 * 2**20 + 123)
    digest = hashlib.sha256(data).hexdigest()
    info = await vault.put("big.bin", chunks(data), expected_sha256=digest)
    assert (info.resource, info.version, info.sha256) == ("big.bin", 1, digest)
    assert (info.size, info.location) == (len(data), "main")
    blob = location.path / "blobs" / digest[:2] / digest[2:4] / digest
    assert files_under(location.path) == [blob]
    assert blob.read_bytes() == data

    async with await vault.open("big.bin") as download:
        assert download.info == info
        parts = [part async for part in download]
    assert all(len(p) <= CHUNK for p in parts)
    assert b"".join(parts) == data

    for offset, length in [(0, 1), (1_000_000, 3_000_000), (len(data) - 5, 5), (len(data), 0)]:
        async with await vault.open("big.bin", 1, offset=offset, length=length) as download:
            assert await download.read() == data[offset : offset + length]
    async with await vault.open("big.bin", offset=len(data) - 100) as download:
        assert await download.read() == data[-100:]
    for offset, length in [(len(data) + 1, None), (-1, None), (10, len(data))]:
        with pytest.raises(BadRange):
            await vault.open("big.bin", offset=offset, length=length)
    assert await vault.stats() == VaultStats(
        resources=1, versions=1, blobs=1, bytes=len(data), pending_sweeps=0
    )


async def test_twenty_concurrent_identical_uploads_leave_one_blob(
    vault: Vault, location: Location
) -> None:
    """20 uploads of the same bytes to 20 resources at once: 20 versions, one blob row and
    one file (GUARANTEES 001/3, 001/6, 001/16: one atomic insert-or-get, no "exists?")."""
    data = body(300_000, seed=1)
    results = {}

    async def one(i: int) -> None:
        results[i] = await vault.put(f"copy-{i:02}", chunks(data, 50_000))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    assert {r.sha256 for r in results.values()} == {hashlib.sha256(data).hexdigest()}
    assert {r.version for r in results.values()} == {1}
    assert await vault.stats() == VaultStats(
        resources=20, versions=20, blobs=1, bytes=len(data), pending_sweeps=0
    )
    assert len(files_under(location.blobs)) == 1
    assert files_under(location.tmp) == []


@pytest.mark.parametrize("serialised_by", ["database", "actor"])
async def test_fifty_concurrent_versions_of_one_resource_are_1_to_50(
    store: Store, location: Location, serialised_by: str
) -> None:
    """50 uploads to one resource at once get versions exactly 1..50, no gap and no
    duplicate, whether the commits run in the resource's actor or meet only in the
    database (GUARANTEES 000/1c, 000/1d)."""
    async with ActorSystem(name="vault-test") as system:
        vault = Vault(store, location, system=system if serialised_by == "actor" else None)
        assert (vault.domain is not None) == (serialised_by == "actor")
        got: list[int] = []

        async def one(i: int) -> None:
            got.append((await vault.put("doc", chunks(body(1000 + i, seed=i), 300))).version)

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
        assert sorted(got) == list(range(1, 51))
        versions = await vault.versions("doc")
        assert [v.version for v in versions] == list(range(1, 51))
        assert len({v.sha256 for v in versions}) == 50
        assert (await vault.info("doc")).version == 50


async def test_past_the_size_limit_nothing_is_committed_and_no_temp_file_is_left(
    store: Store, location: Location
) -> None:
    """An upload past its limit (the call's, the location's or the vault's) fails with
    TooLarge as the limit is passed, before the rest is read: no row, no blob, no temp
    file (GUARANTEES 000/3b)."""
    capped = Location("capped", location.path, max_size=4096)
    vault = Vault(store, [capped], max_size=10_000)
    read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read
        while True:
            read += 1
            yield b"x" * 1000

    with pytest.raises(TooLarge, match="4096 bytes"):
        await vault.put("too-big", endless())
    assert read == 5  # stopped at the chunk that passed the limit
    with pytest.raises(TooLarge, match="100 bytes"):
        await vault.put("too-big", chunks(b"y" * 101, 10), max_size=100)
    assert await vault.stats() == EMPTY
    assert files_under(location.path) == []
    with pytest.raises(NotFound):
        await vault.info("too-big")
    assert (await vault.put("fits", chunks(b"z" * 4096))).size == 4096


async def test_a_checksum_mismatch_commits_nothing(vault: Vault, location: Location) -> None:
    """Bytes that do not hash to the announced sha256 are refused with ChecksumMismatch
    naming both hashes; nothing is committed and no file is left."""
    data = body(200_000)
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ChecksumMismatch) as info:
        await vault.put("doc", chunks(data), expected_sha256=wrong)
    assert wrong in str(info.value)
    assert hashlib.sha256(data).hexdigest() in str(info.value)
    assert await vault.stats() == EMPTY
    assert files_under(location.path) == []
    with pytest.raises(ValueError, match="64 hex digits"):
        await vault.put("doc", chunks(data), expected_sha256="abc")
    right = hashlib.sha256(data).hexdigest().upper()  # hex in either case
    assert (await vault.put("doc", chunks(data), expected_sha256=right)).version == 1


async def test_bad_names_and_arguments_are_refused_before_anything_is_written(
    vault: Vault, location: Location
) -> None:
    """A hostile name fails with InvalidName on every operation, before a byte is read;
    an unknown location is a ConfigurationError."""
    read = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal read
        read += 1
        yield b"data"

    for name in ["../escape", "/etc/passwd", "CON", "a\x00b", "x\u202egpj.exe"]:
        with pytest.raises(InvalidName):
            await vault.put(name, counted())
        with pytest.raises(InvalidName):
            await vault.open(name)
        with pytest.raises(InvalidName):
            await vault.delete(name)
    with pytest.raises(ConfigurationError, match="no storage location named 'elsewhere'"):
        await vault.put("doc", counted(), location="elsewhere")
    assert read == 0
    assert not location.path.exists()


async def test_a_read_only_location_gives_a_typed_error_and_loses_nothing(
    vault: Vault, location: Location
) -> None:
    """When the location refuses writes, put fails with LocationUnavailable naming the
    location and the path; nothing is committed, and what was stored before still reads
    back (GUARANTEES 001/2: an error reply means nothing was committed)."""
    first = body(100_000, seed=3)
    await vault.put("doc", chunks(first))
    before = await vault.stats()
    with read_only(location.tmp):
        with pytest.raises(LocationUnavailable) as info:
            await vault.put("doc", chunks(body(50_000, seed=4)))
        assert isinstance(info.value, OSError)
        assert "'main'" in str(info.value)
        assert str(location.tmp) in str(info.value)
        assert await vault.stats() == before
        async with await vault.open("doc") as download:
            assert await download.read() == first
    assert [v.version for v in await vault.versions("doc")] == [1]
    assert (await vault.put("doc", chunks(b"after"))).version == 2


async def test_listing_is_keyset_paginated_and_stable_under_inserts(vault: Vault) -> None:
    """Resources list by name a page at a time; a resource inserted before the cursor
    does not shift the next page; deleted resources and versions are not counted."""
    for name in ["b", "d", "f", "h", "j"]:
        await vault.put(name, chunks(name.encode()))
    await vault.put("d", chunks(b"d, again"), metadata={"kind": "text"})
    page = await vault.list(limit=2)
    assert [r.name for r in page.resources] == ["b", "d"]
    assert page.next == "d"
    assert page.resources[1].versions == 2
    assert page.resources[1].latest == 2
    assert page.resources[1].size == len(b"d, again")
    assert page.resources[1].metadata == {"kind": "text"}
    await vault.put("a", chunks(b"a"))  # before the cursor
    await vault.put("e", chunks(b"e"))  # after it
    await vault.delete("h")
    page = await vault.list(limit=2, after=page.next)
    assert [r.name for r in page.resources] == ["e", "f"]
    page = await vault.list(limit=2, after=page.next)
    assert [r.name for r in page.resources] == ["j"]
    assert page.next is None
    with pytest.raises(ValueError, match="limit"):
        await vault.list(limit=0)


async def test_deleting_versions_and_resources(vault: Vault) -> None:
    """A deleted version disappears from reads and listings at once (its file goes with
    the sweep); a deleted resource is gone, and a new put starts it again numbering on;
    deleting what is not there is NotFound and commits nothing."""
    for text in [b"one", b"two", b"three"]:
        await vault.put("doc", chunks(text))
    await vault.delete("doc", 2)
    assert [v.version for v in await vault.versions("doc")] == [1, 3]
    with pytest.raises(NotFound, match="no version 2"):
        await vault.open("doc", 2)
    with pytest.raises(NotFound):
        await vault.delete("doc", 2)
    with pytest.raises(NotFound):
        await vault.delete("missing")
    await vault.delete("doc", 3)
    assert (await vault.info("doc")).version == 1  # the latest left
    stats = await vault.stats()
    assert (stats.resources, stats.versions, stats.blobs, stats.pending_sweeps) == (1, 1, 3, 2)
    await vault.delete("doc")
    with pytest.raises(NotFound):
        await vault.versions("doc")
    assert (await vault.list()).resources == []
    info = await vault.put("doc", chunks(b"one"))
    assert info.version == 4
    assert (await vault.stats()).pending_sweeps == 2  # "one" was taken back


async def test_a_write_under_an_epoch_that_moved_on_is_refused_and_commits_nothing(
    store: Store, location: Location
) -> None:
    """With a cluster node as its ownership, a put or delete carries the epoch of the
    resource's partition; once another owner's epoch is recorded, both are refused with
    StaleOwner and nothing is committed (GUARANTEES 000/1a stale owner, DESIGN rule 9)."""
    from fiefdom.cluster import Node
    from fiefdom.storage import partition_of

    async with Node(store, "vault-node") as node:
        vault = Vault(store, location, ownership=node)
        await vault.put("owned", chunks(b"first"))
        async with store.transaction() as tx:
            await tx.execute(
                "UPDATE fiefdom_partitions SET epoch = epoch + 1 WHERE partition = $1",
                partition_of("owned"),
            )
        before = await vault.stats()
        with pytest.raises(StaleOwner):
            await vault.put("owned", chunks(b"second"))
        with pytest.raises(StaleOwner):
            await vault.delete("owned")
        assert await vault.stats() == before
        assert [v.version for v in await vault.versions("owned")] == [1]
        assert files_under(location.tmp) == []
