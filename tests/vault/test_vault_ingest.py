"""How an upload longer than one batch is written: hashed in one thread of its own and
written in another, through O_DIRECT and an aligned buffer where the filesystem takes
it. Whatever the chunking, the sizes around a batch or a block, the fallback to
buffered writes (no O_DIRECT, or a write refused for its alignment) and the failures
(a write error, the source's error, a cancellation, a size limit, a checksum), the
file holds exactly the bytes sent, or nothing is committed and no temp file is left."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from vault_helpers import HANG_GUARD, chunks, files_under, wait_until

from fiefdom.storage import Store
from fiefdom.vault import ChecksumMismatch, Location, LocationUnavailable, TooLarge, Vault, _disk

SMALL_BATCH = 64 << 10  # a batch of the tests that need many of them


@pytest.fixture
def location(tmp_path: Path) -> Location:
    location = Location("main", tmp_path / "store")
    _disk.prepare(location)
    return location


def body(size: int, seed: int = 3) -> bytes:
    return random.Random(seed).randbytes(size)


def direct_supported(directory: Path) -> bool:
    """Whether the filesystem of ``directory`` opens files with O_DIRECT."""
    if not _disk.O_DIRECT:
        return False
    path = directory / "probe"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | _disk.O_DIRECT, 0o644)
    except OSError:
        return False
    os.close(fd)
    path.unlink()
    return True


async def receive_all(location: Location, data: bytes, chunk: int) -> bytes:
    """Receive ``data`` in chunks of ``chunk`` bytes; the temp file's bytes, checked
    against its hash and size, then discarded."""
    temp = await _disk.receive(location, chunks(data, chunk), max_size=None, expected_sha256=None)
    try:
        assert temp.sha256 == hashlib.sha256(data).hexdigest()
        assert temp.size == len(data)
        return temp.path.read_bytes()
    finally:
        temp.discard()


def upload_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fiefdom-vault-")]


async def no_upload_threads() -> None:
    async def none_left() -> bool:
        return not upload_threads()

    await wait_until(none_left, what="the upload's threads ending")


@pytest.mark.parametrize(
    ("size", "chunk"),
    [
        (_disk.BATCH, 1 << 20),  # exactly one batch, aligned
        (_disk.BATCH + 1, 1 << 20),  # one byte into the second batch
        (2 * _disk.BATCH + 4095, 65536),  # a last block one byte short
        (2 * _disk.BATCH + 100_003, 100_003),  # chunks of an odd size
        (3 * _disk.BATCH, 3 * _disk.BATCH),  # one chunk of three batches
    ],
)
async def test_long_uploads_are_written_exactly_whatever_the_chunking(
    location: Location, size: int, chunk: int
) -> None:
    """Uploads around one batch and one block, in chunks of every size, are written
    byte for byte with their hash; no temp file is left."""
    data = body(size)
    assert await receive_all(location, data, chunk) == data
    assert files_under(location.tmp) == []
    await no_upload_threads()


async def test_many_batches_go_through_the_aligned_buffer(
    location: Location, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small batches (many waits on the threads, many buffer refills and leftovers of a
    block); where the filesystem takes O_DIRECT, the whole blocks are written so and
    only the last one's start is not."""
    if not direct_supported(tmp_path):
        pytest.skip("this filesystem has no O_DIRECT")
    monkeypatch.setattr(_disk, "BATCH", SMALL_BATCH)
    direct_bytes = []

    def counting(fd: int, data: memoryview) -> int:
        written = os.write(fd, data)
        direct_bytes.append(written)
        return written

    monkeypatch.setattr(_disk, "_direct_write", counting)
    data = body(40 * SMALL_BATCH + 777, seed=4)
    assert await receive_all(location, data, 10_007) == data
    assert sum(direct_bytes) == len(data) - 777 - (40 * SMALL_BATCH) % 4096
    assert all(n % 4096 == 0 for n in direct_bytes)


async def test_without_o_direct_the_writes_are_buffered(
    location: Location, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where O_DIRECT does not exist, a long upload is written buffered, byte for byte."""
    monkeypatch.setattr(_disk, "O_DIRECT", 0)
    monkeypatch.setattr(_disk, "BATCH", SMALL_BATCH)

    def refused(fd: int, data: memoryview) -> int:
        raise AssertionError("no O_DIRECT write was expected")

    monkeypatch.setattr(_disk, "_direct_write", refused)
    data = body(20 * SMALL_BATCH + 5, seed=5)
    assert await receive_all(location, data, 30_000) == data


@pytest.mark.parametrize(("refused_at", "short"), [(0, False), (1, False), (7, False), (3, True)])
async def test_a_direct_write_refused_for_its_alignment_goes_on_buffered(
    location: Location,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    refused_at: int,
    short: bool,
) -> None:
    """EINVAL from an O_DIRECT write (a device whose blocks are larger than ours): the
    upload goes on with buffered writes from the first byte not written (``short``:
    the write before the refusal wrote one block of the buffer only)."""
    if not direct_supported(tmp_path):
        pytest.skip("this filesystem has no O_DIRECT")
    monkeypatch.setattr(_disk, "BATCH", SMALL_BATCH)
    calls = 0

    def refusing(fd: int, data: memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls > refused_at:
            raise OSError(errno.EINVAL, "Invalid argument")
        if short and calls == refused_at:
            return os.write(fd, data[:4096])
        return os.write(fd, data)

    monkeypatch.setattr(_disk, "_direct_write", refusing)
    data = body(12 * SMALL_BATCH + 1234, seed=6)
    assert await receive_all(location, data, 50_000) == data
    assert calls == refused_at + 1  # buffered from then on


async def test_a_write_error_fails_the_upload_and_leaves_nothing(
    location: Location, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write error in the writing thread fails the upload within the batches under
    way, and no temp file is left."""
    if not direct_supported(tmp_path):
        pytest.skip("this filesystem has no O_DIRECT")
    monkeypatch.setattr(_disk, "BATCH", SMALL_BATCH)
    calls = 0

    def full(fd: int, data: memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    monkeypatch.setattr(_disk, "_direct_write", full)
    sent = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(60):
            sent += 1
            yield body(SMALL_BATCH, seed=7)

    with pytest.raises(LocationUnavailable, match="No space left on device"):
        await _disk.receive(location, source(), max_size=None, expected_sha256=None)
    # It stops within the batches under way (AHEAD of them), not at the end of the body.
    assert sent <= 3 + _disk.AHEAD + 2
    assert files_under(location.tmp) == []
    await no_upload_threads()


async def test_the_sources_error_fails_the_upload_and_leaves_nothing(
    location: Location, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error of the upload's source mid-way fails it, the threads stop, and no
    temp file is left."""
    monkeypatch.setattr(_disk, "BATCH", SMALL_BATCH)

    async def broken() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield body(SMALL_BATCH)
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await _disk.receive(location, broken(), max_size=None, expected_sha256=None)
    assert files_under(location.tmp) == []
    await no_upload_threads()


async def test_a_cancelled_upload_leaves_nothing(
    location: Location, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long upload cancelled while its threads work stops them and leaves no temp
    file."""
    monkeypatch.setattr(_disk, "BATCH", SMALL_BATCH)
    stalled = anyio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield body(SMALL_BATCH)
        stalled.set()
        await anyio.sleep_forever()
        yield b""  # (never)

    async with anyio.create_task_group() as tg:

        async def upload() -> None:
            await _disk.receive(location, stalling(), max_size=None, expected_sha256=None)

        tg.start_soon(upload)
        with anyio.fail_after(HANG_GUARD):
            await stalled.wait()
        tg.cancel_scope.cancel()
    assert files_under(location.tmp) == []
    await no_upload_threads()


async def test_limits_and_checksums_of_long_uploads_commit_nothing(
    store: Store, location: Location, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long upload past its size limit, or with another checksum than announced,
    commits nothing and leaves no temp file."""
    monkeypatch.setattr(_disk, "BATCH", SMALL_BATCH)
    vault = Vault(store, location)
    data = body(20 * SMALL_BATCH + 99, seed=8)
    with pytest.raises(TooLarge):
        await vault.put("big", chunks(data), max_size=10 * SMALL_BATCH)
    with pytest.raises(ChecksumMismatch):
        await vault.put("big", chunks(data), expected_sha256="0" * 64)
    assert files_under(location.path) == []
    info = await vault.put("big", chunks(data, 40_000))
    async with await vault.open("big") as download:
        assert await download.read() == data
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert files_under(location.tmp) == []
    await no_upload_threads()


async def test_past_max_lanes_a_long_upload_goes_batch_by_batch(
    location: Location, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every slot for uploads with threads of their own taken, a long upload
    still arrives byte for byte, hashed and written batch by batch by the shared
    worker threads, and leaves the slots as it found them (many concurrent uploads
    cannot start threads without bound)."""
    monkeypatch.setattr(_disk, "BATCH", SMALL_BATCH)
    taken = 0
    while _disk._LANES.acquire(blocking=False):
        taken += 1
    assert taken == _disk.MAX_LANES
    try:
        data = body(7 * SMALL_BATCH + 123, seed=11)
        before = {t.name for t in threading.enumerate()}
        assert await receive_all(location, data, 10_000) == data
        started = {t.name for t in threading.enumerate()} - before
        assert not [name for name in started if name.startswith("fiefdom-vault-")]
        assert not _disk._LANES.acquire(blocking=False)
    finally:
        for _ in range(taken):
            _disk._LANES.release()
