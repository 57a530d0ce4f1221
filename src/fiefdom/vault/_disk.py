"""The files of a storage location: uploads streamed into ``tmp/`` (hashed while
written, size-checked, fsynced), blobs published into ``blobs/ab/cd/<sha256>`` by a
hard link (the temp file stays the upload's own until its row has committed), and
blob files read back in chunks. Blocking calls run in worker threads; every
``OSError`` becomes ``LocationUnavailable`` naming the location and the path.

An upload larger than one batch is hashed in a thread of its own and written in
another, each taking the batches in order, so that neither waits for the other nor
for the next batch to arrive; its writes bypass the page cache (``O_DIRECT``, through
an aligned buffer) where the filesystem allows it, which costs a fraction of the CPU
of buffered writes and leaves the final ``fsync`` little to do."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import mmap
import os
import threading
import uuid
from collections import deque
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
AHEAD = 2  # batches handed to an upload's threads and not yet done by both, at most
IOV_MAX = os.sysconf("SC_IOV_MAX")  # buffers per writev
TEMP_SUFFIX = ".part"
SYNC_FILE_RANGE_WRITE = 2
O_DIRECT: int = getattr(os, "O_DIRECT", 0)  # 0 where there is none
ALIGN = 4096  # offsets, lengths and buffer addresses of O_DIRECT writes: multiples

Piece = bytes | memoryview


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
    dies with the process: a crashed upload's file is fair game).

    Writes are buffered (each batch's writeback started at once) unless ``direct()``
    switched the file to ``O_DIRECT``: then the pieces are copied into an aligned
    buffer written whenever it is full, and ``finish()`` writes what is left."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.path = location.tmp / f"{uuid.uuid4().hex}{TEMP_SUFFIX}"
        self.size = 0
        self.sha256 = ""
        self._hash = hashlib.sha256()
        self._fd: int | None = None
        self._written = 0  # bytes written to the file so far (size counts the rest too)
        self._aligned: _Aligned | None = None  # O_DIRECT's buffer, when direct
        self._failed = False  # a write failed: the later ones do nothing

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

    def direct(self, size: int) -> bool:
        """Write through ``O_DIRECT`` from here on, by an aligned buffer of ``size``
        bytes (a multiple of ``ALIGN``), before anything is written; False (and the
        writes stay buffered) where the system or the filesystem has no ``O_DIRECT``."""
        assert self._fd is not None
        assert self._written == 0
        assert self._aligned is None
        if not O_DIRECT or not _set_direct(self._fd, True):
            return False
        self._aligned = _Aligned(size)
        return True

    def hash(self, pieces: Sequence[Piece]) -> None:
        """Feed ``pieces`` to the hash (hashlib lets go of the GIL for large pieces, so
        this runs beside ``write`` of the same pieces in another thread)."""
        for piece in pieces:
            self._hash.update(piece)

    def write(self, pieces: Sequence[Piece]) -> None:
        """Write ``pieces`` after those written before (``finish`` writes what the
        aligned buffer still holds)."""
        if self._failed:
            return
        try:
            if self._aligned is None:
                self._write_buffered(pieces)
            else:
                self._write_direct(pieces)
        except BaseException:
            self._failed = True
            raise

    def _write_buffered(self, pieces: Sequence[Piece]) -> None:
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
                if written == 0:
                    raise OSError(errno.EIO, "a write wrote nothing")
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

    def _write_direct(self, pieces: Sequence[Piece]) -> None:
        """Copy ``pieces`` into the aligned buffer, writing it out each time it is full."""
        aligned = self._aligned
        assert aligned is not None
        for index, piece in enumerate(pieces):
            view = memoryview(piece)
            while view:
                view = view[aligned.take(view) :]
                if aligned.full():
                    self._write_aligned()
                    if self._aligned is None:  # the filesystem refused: buffered now
                        self._write_buffered([view, *pieces[index + 1 :]])
                        return

    def _write_aligned(self) -> None:
        """Write the buffer's whole blocks with ``O_DIRECT`` (what is left of a block
        moves to its start). A write refused for its alignment (EINVAL: a device with
        larger blocks) turns the file back to buffered writes, the buffer written so."""
        aligned = self._aligned
        assert self._fd is not None
        assert aligned is not None
        end = aligned.held - aligned.held % ALIGN
        done = 0
        try:
            while done < end:
                written = _direct_write(self._fd, aligned.view[done:end])
                if written <= 0:
                    raise OSError(errno.EIO, "a write wrote nothing")
                done += written
                self._written += written
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise unavailable(self.location, "write", self.path, exc) from exc
            self._buffered_again(done)
            return
        aligned.keep_from(end)

    def _buffered_again(self, start: int) -> None:
        """Leave ``O_DIRECT``; write the aligned buffer's bytes from ``start`` on
        (those not written yet) the buffered way, and drop it."""
        aligned = self._aligned
        assert self._fd is not None
        assert aligned is not None
        self._aligned = None
        try:
            _set_direct(self._fd, False, check=True)
        except OSError as exc:
            raise unavailable(self.location, "write", self.path, exc) from exc
        try:
            if aligned.held > start:
                self._write_buffered([bytes(aligned.view[start : aligned.held])])
        finally:
            aligned.close()

    def hash_and_write(self, pieces: Sequence[Piece]) -> None:
        self.hash(pieces)
        self.write(pieces)

    def finish(self) -> None:
        """Write what the aligned buffer holds (buffered), then fsync (the file stays
        open and locked); ``sha256`` is the hash of what was written."""
        assert self._fd is not None
        if self._aligned is not None:
            self._write_aligned()  # the whole blocks, if any
            if self._aligned is not None:
                self._buffered_again(0)  # the last block's start
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
        if self._aligned is not None:
            aligned, self._aligned = self._aligned, None
            aligned.close()


class _Aligned:
    """A page-aligned buffer (an anonymous mapping) that an upload's bytes are
    copied into for ``O_DIRECT`` writes; ``held`` bytes from its start are in use."""

    def __init__(self, size: int) -> None:
        self._map = mmap.mmap(-1, size)
        self.view = memoryview(self._map)
        self.held = 0

    def take(self, data: memoryview) -> int:
        """Copy as much of ``data`` as fits; how many bytes that was."""
        taken = min(len(self.view) - self.held, len(data))
        self.view[self.held : self.held + taken] = data[:taken]
        self.held += taken
        return taken

    def full(self) -> bool:
        return self.held == len(self.view)

    def keep_from(self, start: int) -> None:
        """Move the bytes from ``start`` to the buffer's start (they are fewer)."""
        rest = self.held - start
        self.view[:rest] = self.view[start : self.held]
        self.held = rest

    def close(self) -> None:
        self.view.release()
        with contextlib.suppress(BufferError):  # a view still alive: freed with it
            self._map.close()


def _set_direct(fd: int, on: bool, *, check: bool = False) -> bool:
    """Turn ``O_DIRECT`` on or off for ``fd``; False if refused (raised if ``check``)."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (flags | O_DIRECT) if on else (flags & ~O_DIRECT))
    except OSError:
        if check:
            raise
        return False
    return True


_direct_write = os.write  # an O_DIRECT write (tests replace it)


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
    temp file is removed.

    Chunks are gathered into batches of about ``BATCH`` bytes. An upload that fits
    in one batch is hashed and written by one worker thread (two at once when it is
    large enough for the second to pay off). A longer one gets two threads of its
    own, a hashing one and a writing one (``O_DIRECT`` where it can), each taking the
    batches in order while the next ones are gathered: at most ``AHEAD`` batches wait
    for them, plus the one being gathered and the aligned buffer's. At most
    ``MAX_LANES`` uploads have such threads at once; the others go batch by batch."""
    temp = TempBlob(location)
    await anyio.to_thread.run_sync(temp.open)
    steps: list[asyncio.Task[None]] = []  # a single batch being hashed and written
    lanes: _Lanes | None = None
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
                if lanes is None and _LANES.acquire(blocking=False):
                    try:
                        lanes = _Lanes(temp)
                    except BaseException:
                        _LANES.release()
                        raise
                temp.size += held
                if lanes is not None:
                    await lanes.put(pending)
                else:
                    # MAX_LANES long uploads have threads of their own already: this
                    # one is hashed and written batch by batch by the shared ones.
                    steps = _start(temp, pending, held)
                    await _finished(steps)
                    steps = []
                pending = []
                held = 0
        if lanes is not None:
            if pending:
                temp.size += held
                await lanes.put(pending)
            await lanes.drain()
        elif pending:
            steps = _start(temp, pending, held)
            temp.size += held
            await _finished(steps)
        await anyio.to_thread.run_sync(temp.finish)
        if expected_sha256 is not None and temp.sha256 != expected_sha256:
            raise ChecksumMismatch(expected_sha256, temp.sha256)
    except BaseException:
        with anyio.CancelScope(shield=True):
            # A worker thread may still be writing to the file: it is closed after.
            if lanes is not None:
                await anyio.to_thread.run_sync(lanes.stop)
            if steps:
                await asyncio.wait(steps)
                for step in steps:  # retrieved: the first error is raised already
                    if not step.cancelled():
                        step.exception()
            await anyio.to_thread.run_sync(temp.discard)
        raise
    finally:
        if lanes is not None:
            lanes.close()
            _LANES.release()
    return temp


MAX_LANES = 8
"""Long uploads at once that get threads of their own (two each); any more are hashed
and written batch by batch by the shared worker threads, so that many concurrent
uploads cannot start threads and hold batches without bound."""
_LANES = threading.BoundedSemaphore(MAX_LANES)


class _Lanes:
    """The two threads of a long upload: one feeds the batches to the hash, the other
    writes them, each in the order given and at its own pace. ``put`` waits while
    more than ``AHEAD`` batches are not done by both."""

    def __init__(self, temp: TempBlob) -> None:
        self.temp = temp
        temp.direct(_round_up(BATCH, ALIGN))
        self._hasher = concurrent.futures.ThreadPoolExecutor(1, "fiefdom-vault-hash")
        self._writer = concurrent.futures.ThreadPoolExecutor(1, "fiefdom-vault-write")
        self._queued: deque[tuple[concurrent.futures.Future[None], ...]] = deque()

    async def put(self, pieces: list[bytes]) -> None:
        self._queued.append(
            (
                self._hasher.submit(self.temp.hash, pieces),
                self._writer.submit(self.temp.write, pieces),
            )
        )
        while len(self._queued) > AHEAD:
            await self._oldest()

    async def drain(self) -> None:
        """Wait until every batch is hashed and written; the first error is raised."""
        while self._queued:
            await self._oldest()

    async def _oldest(self) -> None:
        for future in self._queued[0]:
            await asyncio.wrap_future(future)
        self._queued.popleft()

    def stop(self) -> None:
        """Drop the batches not started; wait for those under way (blocking)."""
        self._hasher.shutdown(wait=True, cancel_futures=True)
        self._writer.shutdown(wait=True, cancel_futures=True)
        self._queued.clear()

    def close(self) -> None:
        """Let the threads end (they are idle, or ``stop`` was called)."""
        self._hasher.shutdown(wait=False)
        self._writer.shutdown(wait=False)


def _round_up(size: int, unit: int) -> int:
    return -(-size // unit) * unit


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
        return self.chunks()

    async def chunks(self, size: int = CHUNK) -> AsyncIterator[bytes]:
        """The bytes in chunks of at most ``size`` bytes, each read by a worker thread
        (iterating the download is ``chunks()``)."""
        try:
            position, end = self.offset, self.offset + self.length
            while position < end and self._fd is not None:
                data = await anyio.to_thread.run_sync(
                    os.pread, self._fd, min(size, end - position), position
                )
                if not data:
                    raise OSError(errno.EIO, "the blob file is shorter than its size")
                position += len(data)
                yield data
        finally:
            self._close()

    def fileno(self) -> int:
        """The open blob file, for ``loop.sendfile`` of the range (``offset``,
        ``length``); it stays the download's, closed with it."""
        if self._fd is None:
            raise ValueError("the download is closed")
        return self._fd

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
