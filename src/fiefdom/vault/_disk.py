"""The files of a storage location: uploads streamed into ``tmp/`` (hashed while
written, size-checked, fsynced), blobs published into ``blobs/ab/cd/<sha256>`` by a
hard link (the temp file stays the upload's own until its row has committed), and
blob files read back in chunks. Blocking calls run in worker threads; every
``OSError`` becomes ``LocationUnavailable`` naming the location and the path."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import cast

import anyio.to_thread

from .._errors import BadRange, ChecksumMismatch, LocationUnavailable, TooLarge
from ._model import Location, VersionInfo

CHUNK = 1 << 20  # bytes written or read per call to a worker thread
SPLIT = 256 << 10  # from this many bytes on, a batch is hashed beside its write
BATCH = 4 << 20  # bytes gathered before they are hashed and written
IOV_MAX = os.sysconf("SC_IOV_MAX")  # buffers per writev
TEMP_SUFFIX = ".part"
SYNC_FILE_RANGE_WRITE = 2


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range`` (not in ``os``), or None where there is none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_sync_file_range = _libc_sync_file_range()


def unavailable(location: Location, doing: str, path: Path, exc: OSError) -> LocationUnavailable:
    error = LocationUnavailable(
        f"storage location {location.name!r} at {location.path}: cannot {doing} {path}: "
        f"{exc.strerror or exc}"
    )
    error.__cause__ = exc
    return error


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare(location: Location) -> None:
    """Create the location's ``tmp/`` and ``blobs/`` if missing."""
    for path in (location.tmp, location.blobs):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unavailable(location, "create", path, exc) from exc


class TempBlob:
    """An upload being written to ``tmp/``: hashed and counted as it is written. It
    holds an exclusive ``flock`` on its file until it is discarded, so that ``fsck``
    never removes the temp file of an upload going on, whatever its age (the lock
    dies with the process: a crashed upload's file is fair game)."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.path = location.tmp / f"{uuid.uuid4().hex}{TEMP_SUFFIX}"
        self.size = 0
        self.sha256 = ""
        self._hash = hashlib.sha256()
        self._fd: int | None = None
        self._written = 0  # bytes written so far (size counts what is under way too)

    def open(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise unavailable(self.location, "create", self.path, exc) from exc
            # fsck may have removed the file between its creation and the lock.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    self._fd = fd
                    return
            except FileNotFoundError:
                pass
            os.close(fd)
            self.path = self.location.tmp / f"{uuid.uuid4().hex}{TEMP_SUFFIX}"

    def hash(self, pieces: Sequence[bytes]) -> None:
        """Feed ``pieces`` to the hash (hashlib lets go of the GIL for large pieces, so
        this runs beside ``write`` of the same pieces in another thread)."""
        for piece in pieces:
            self._hash.update(piece)

    def write(self, pieces: Sequence[bytes]) -> None:
        """Write ``pieces`` one after the other (``writev``, no joining copy), then
        start the writeback of those bytes to the disk without waiting for it, so that
        the fsync at the end has little left to do (only a hint: that fsync is what
        makes the file durable)."""
        assert self._fd is not None
        views = [memoryview(piece) for piece in pieces]
        start = self._written
        first = 0
        try:
            while first < len(views):
                written = os.writev(self._fd, views[first : first + IOV_MAX])
                self._written += written
                while written:
                    size = len(views[first])
                    if written < size:
                        views[first] = views[first][written:]
                        break
                    written -= size
                    first += 1
        except OSError as exc:
            raise unavailable(self.location, "write", self.path, exc) from exc
        if _sync_file_range is not None:
            _sync_file_range(self._fd, start, self._written - start, SYNC_FILE_RANGE_WRITE)

    def hash_and_write(self, pieces: Sequence[bytes]) -> None:
        self.hash(pieces)
        self.write(pieces)

    def finish(self) -> None:
        """fsync (the file stays open and locked); ``sha256`` is the hash of what was
        written."""
        assert self._fd is not None
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise unavailable(self.location, "fsync", self.path, exc) from exc
        self.sha256 = self._hash.hexdigest()

    def discard(self) -> None:
        """Remove the temp file, then close it (whatever state it is in)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def remove_if_unlocked(location: Location, path: Path) -> bool | None:
    """Remove a temp file unless an upload holds its lock: True if removed, None if
    in use, False if it was gone already."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise unavailable(location, "open", path, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        return remove(location, path)
    finally:
        os.close(fd)


async def receive(
    location: Location,
    chunks: AsyncIterable[bytes],
    *,
    max_size: int | None,
    expected_sha256: str | None,
) -> TempBlob:
    """Stream ``chunks`` into a new temp file of ``location``, fsynced; its hash and
    size are set. Past ``max_size`` bytes: ``TooLarge``; a hash other than
    ``expected_sha256``: ``ChecksumMismatch``. On any failure (or cancellation) the
    temp file is removed. Chunks are gathered into batches of about ``BATCH`` bytes;
    a batch is hashed and written (in two worker threads at once when it is large)
    while the next one is gathered: at most two batches (plus one chunk) are held."""
    temp = TempBlob(location)
    await anyio.to_thread.run_sync(temp.open)
    steps: list[asyncio.Task[None]] = []  # the batch being hashed and written
    try:
        pending: list[bytes] = []
        held = 0
        async for chunk in chunks:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"put() takes chunks of bytes, got {type(chunk).__name__}")
            if not chunk:
                continue
            if max_size is not None and temp.size + held + len(chunk) > max_size:
                raise TooLarge(max_size)
            pending.append(bytes(chunk))
            held += len(chunk)
            if held >= BATCH:
                await _finished(steps)
                steps = _start(temp, pending, held)
                temp.size += held
                pending = []
                held = 0
        await _finished(steps)
        if pending:
            steps = _start(temp, pending, held)
            temp.size += held
            await _finished(steps)
        await anyio.to_thread.run_sync(temp.finish)
        if expected_sha256 is not None and temp.sha256 != expected_sha256:
            raise ChecksumMismatch(expected_sha256, temp.sha256)
    except BaseException:
        with anyio.CancelScope(shield=True):
            # A worker thread may still be writing to the file: it is closed after.
            if steps:
                await asyncio.wait(steps)
                for step in steps:  # retrieved: the first error is raised already
                    if not step.cancelled():
                        step.exception()
            await anyio.to_thread.run_sync(temp.discard)
        raise
    return temp


def _start(temp: TempBlob, pieces: list[bytes], size: int) -> list[asyncio.Task[None]]:
    """Hash and write ``pieces`` in worker threads: two at once if there are enough
    bytes for the second thread to pay off."""
    run = anyio.to_thread.run_sync
    if size < SPLIT:
        return [asyncio.ensure_future(run(temp.hash_and_write, pieces))]
    return [
        asyncio.ensure_future(run(temp.hash, pieces)),
        asyncio.ensure_future(run(temp.write, pieces)),
    ]


async def _finished(steps: list[asyncio.Task[None]]) -> None:
    """Wait for ``steps`` (a cancellation of the wait leaves them running), then raise
    the first error among them."""
    if not steps:
        return
    await asyncio.wait(steps)
    for step in steps:
        step.result()


def publish(location: Location, sha256: str, temp: Path) -> bool:
    """Make ``temp`` the blob file of ``sha256`` (a hard link: the temp file stays)
    and fsync the directory; False if the blob file already existed."""
    target = location.blob_path(sha256)
    parent = target.parent
    try:
        if not parent.is_dir():
            created = [p for p in (parent.parent, parent) if not p.is_dir()]
            parent.mkdir(parents=True, exist_ok=True)
            for made in created:
                fsync_dir(made.parent)
        try:
            os.link(temp, target)
        except FileExistsError:
            return False
        fsync_dir(parent)
    except OSError as exc:
        raise unavailable(location, "publish", target, exc) from exc
    return True


def remove(location: Location, path: Path) -> bool:
    """Remove a file; False if it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise unavailable(location, "remove", path, exc) from exc
    return True


def is_blob_name(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class Download:
    """The bytes of one version (or of a range of it), read in chunks of at most
    ``CHUNK`` bytes: ``async for chunk in download``. ``info`` is the version,
    ``offset`` and ``length`` the range served. The file is open from ``open()`` on
    (a sweep removing it meanwhile does not cut the download short); it is closed
    at the end of the iteration, by ``aclose()``, or on leaving ``async with``."""

    def __init__(self, info: VersionInfo, fd: int, offset: int, length: int) -> None:
        self.info = info
        self.offset = offset
        self.length = length
        self._fd: int | None = fd

    @classmethod
    async def open(
        cls, location: Location, info: VersionInfo, offset: int, length: int | None
    ) -> Download:
        if offset < 0 or offset > info.size:
            raise BadRange(
                f"offset {offset} is outside version {info.version} of {info.resource!r} "
                f"({info.size} bytes)",
                info.size,
            )
        if length is None:
            length = info.size - offset
        if length < 0 or offset + length > info.size:
            raise BadRange(
                f"range {offset}+{length} is outside version {info.version} of "
                f"{info.resource!r} ({info.size} bytes)",
                info.size,
            )
        path = location.blob_path(info.sha256)
        fd = await anyio.to_thread.run_sync(_open_read, path)
        return cls(info, fd, offset, length)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            position, end = self.offset, self.offset + self.length
            while position < end and self._fd is not None:
                data = await anyio.to_thread.run_sync(
                    os.pread, self._fd, min(CHUNK, end - position), position
                )
                if not data:
                    raise OSError(errno.EIO, "the blob file is shorter than its size")
                position += len(data)
                yield data
        finally:
            self._close()

    async def read(self) -> bytes:
        """The whole range at once (for small versions: it is held in memory)."""
        return b"".join([chunk async for chunk in self])

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    async def aclose(self) -> None:
        """Close the file (a download not read to its end must be closed)."""
        self._close()

    async def __aenter__(self) -> Download:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()


def _open_read(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
