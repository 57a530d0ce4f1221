"""The files of a storage location: uploads streamed into ``tmp/`` (hashed while
written, size-checked, fsynced), blobs published into ``blobs/ab/cd/<sha256>`` by a
hard link (the temp file stays the upload's own until its row has committed), and
blob files read back in chunks. Blocking calls run in worker threads; every
``OSError`` becomes ``LocationUnavailable`` naming the location and the path."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from types import TracebackType

import anyio.to_thread

from .._errors import BadRange, ChecksumMismatch, LocationUnavailable, TooLarge
from ._model import Location, VersionInfo

CHUNK = 1 << 20  # bytes written or read per call to a worker thread
TEMP_SUFFIX = ".part"


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

    def write(self, data: bytes) -> None:
        assert self._fd is not None
        self._hash.update(data)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise unavailable(self.location, "write", self.path, exc) from exc

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
    temp file is removed. At most ``CHUNK`` bytes (plus one chunk) are held."""
    temp = TempBlob(location)
    await anyio.to_thread.run_sync(temp.open)
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
            if held >= CHUNK:
                data = b"".join(pending)
                pending.clear()
                held = 0
                await anyio.to_thread.run_sync(temp.write, data)
                temp.size += len(data)
        if pending:
            data = b"".join(pending)
            await anyio.to_thread.run_sync(temp.write, data)
            temp.size += len(data)
        await anyio.to_thread.run_sync(temp.finish)
        if expected_sha256 is not None and temp.sha256 != expected_sha256:
            raise ChecksumMismatch(expected_sha256, temp.sha256)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(temp.discard)
        raise
    return temp


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
