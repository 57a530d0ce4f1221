"""Resumable uploads (the tus 1.0 protocol's state, without HTTP): each upload is a
file ``uploads/<id>.part`` in the vault's location and a small JSON sidecar
``uploads/<id>.json`` holding its name, length, acknowledged offset and expiry, so
an upload survives a restart of the daemon. ``uploads/`` is not ``tmp/``: ``fsck``
removes unlocked temp files after the grace period, while a paused upload lives
until its own expiry.

Every chunk is written past the acknowledged offset, fsynced, and only then is the
new offset written to the sidecar (atomically: a new file renamed over the old).
Bytes past the sidecar's offset (a chunk cut short by a crash, or refused by its
checksum) are cut off before the next chunk is written. When the last byte has
arrived the assembled file goes through ``Vault.put`` like any upload (hashing,
fsync, dedup, the commit); the sidecar then records the version, so a client that
lost the final reply learns it from ``HEAD``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import os
import re
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import msgspec

from .._errors import TooLarge
from . import _disk
from ._model import Location
from ._names import validate_name
from ._vault import Vault

_ID = re.compile(r"[0-9a-f]{32}")
_CHUNK = _disk.CHUNK


class Refusal(Exception):
    """A request refused with an HTTP status, an error code, and details."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


class UploadState(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An upload's sidecar: what it will become and how far it has come (``version``
    and ``sha256`` once committed)."""

    id: str
    name: str
    length: int
    offset: int = 0
    created_at: float
    expires_at: float
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    version: int | None = None
    sha256: str | None = None

    @property
    def done(self) -> bool:
        return self.version is not None


def parse_metadata(header: str | None) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs (the value may be
    absent). A malformed header is a 400."""
    found: dict[str, str] = {}
    if not header:
        return found
    for pair in header.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, encoded = pair.partition(" ")
        encoded = encoded.strip()
        if not key or " " in encoded or key in found:
            raise Refusal(400, "invalid_header", f"Upload-Metadata: malformed pair {pair!r}")
        try:
            value = base64.b64decode(encoded, validate=True).decode() if encoded else ""
        except (binascii.Error, UnicodeDecodeError):
            raise Refusal(
                400, "invalid_header", f"Upload-Metadata: the value of {key!r} is not base64 UTF-8"
            ) from None
        found[key] = value
    return found


def parse_checksum(header: str | None) -> bytes | None:
    """``Upload-Checksum: sha256 <base64>``: the digest of this PATCH's body."""
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm.lower() != "sha256":
        raise Refusal(
            400,
            "invalid_header",
            f"Upload-Checksum: algorithm {algorithm!r} is not supported (only sha256)",
            {"supported": ["sha256"]},
        )
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise Refusal(400, "invalid_header", "Upload-Checksum: the digest is not base64") from None
    if len(digest) != 32:
        raise Refusal(400, "invalid_header", "Upload-Checksum: a sha256 digest is 32 bytes")
    return digest


class TusUploads:
    """The resumable uploads of one vault, kept in ``location``'s ``uploads/``."""

    def __init__(
        self,
        vault: Vault,
        *,
        location: Location | None = None,
        max_size: int | None = None,
        expiry: float = 24 * 3600.0,
    ) -> None:
        self.vault = vault
        self.location = location or vault.default_location
        self.folder = self.location.path / "uploads"
        self.max_size = max_size
        self.expiry = expiry
        # One PATCH (or commit, or termination) of an upload at a time.
        self._busy: dict[str, asyncio.Lock] = {}

    # -- files -------------------------------------------------------------------------

    def _part(self, upload: str) -> Path:
        return self.folder / f"{upload}.part"

    def _sidecar(self, upload: str) -> Path:
        return self.folder / f"{upload}.json"

    def _write_state(self, state: UploadState) -> None:
        path = self._sidecar(state.id)
        staging = path.with_suffix(".json.new")
        try:
            with open(staging, "wb") as file:
                file.write(msgspec.json.encode(state))
                file.flush()
                os.fsync(file.fileno())
            os.replace(staging, path)
            _disk.fsync_dir(self.folder)
        except OSError as exc:
            raise _disk.unavailable(self.location, "write", path, exc) from exc

    def _read_state(self, upload: str) -> UploadState:
        if not _ID.fullmatch(upload):
            raise Refusal(404, "not_found", f"no upload {upload!r}")
        try:
            raw = self._sidecar(upload).read_bytes()
        except FileNotFoundError:
            raise Refusal(404, "not_found", f"no upload {upload!r}") from None
        except OSError as exc:
            raise _disk.unavailable(self.location, "read", self._sidecar(upload), exc) from exc
        try:
            state = msgspec.json.decode(raw, type=UploadState)
        except msgspec.DecodeError:
            raise Refusal(404, "not_found", f"upload {upload!r} is unreadable") from None
        if state.expires_at < time.time():
            self._remove(upload)
            raise Refusal(410, "gone", f"upload {upload!r} has expired and was removed")
        return state

    def _remove(self, upload: str) -> None:
        for path in (self._part(upload), self._sidecar(upload)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- operations --------------------------------------------------------------------

    async def create(self, length: int, metadata: dict[str, str]) -> UploadState:
        """A new upload of ``length`` bytes to the resource named by ``metadata["name"]``
        (validated now: a bad name is refused before anything is written)."""
        name = metadata.get("name")
        if name is None:
            raise Refusal(
                400,
                "invalid_header",
                "Upload-Metadata must carry 'name' (the resource's name, base64)",
            )
        name = validate_name(name)
        if self.max_size is not None and length > self.max_size:
            raise TooLarge(self.max_size)
        now = time.time()
        state = UploadState(
            id=uuid.uuid4().hex,
            name=name,
            length=length,
            created_at=now,
            expires_at=now + self.expiry,
            metadata={k: v for k, v in metadata.items() if k != "name"},
        )

        def make() -> None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._part(state.id).touch(exist_ok=False)
            except OSError as exc:
                raise _disk.unavailable(self.location, "create", self._part(state.id), exc) from exc
            self._write_state(state)

        await anyio.to_thread.run_sync(make)
        return state

    async def status(self, upload: str) -> UploadState:
        """The upload's state (404 unknown, 410 expired)."""
        return await anyio.to_thread.run_sync(self._read_state, upload)

    async def terminate(self, upload: str) -> None:
        """Remove the upload and its bytes (refused while a PATCH of it runs)."""
        async with self._hold(upload):
            await anyio.to_thread.run_sync(self._read_state, upload)
            await anyio.to_thread.run_sync(self._remove, upload)

    async def append(
        self,
        upload: str,
        offset: int,
        chunks: AsyncIterable[bytes],
        checksum: bytes | None,
    ) -> UploadState:
        """Write ``chunks`` at ``offset`` (which must be the upload's offset: 409
        otherwise); with ``checksum`` (sha256 of this body) a mismatch is a 460 and
        the chunk is discarded. Without one, the bytes that arrived before the
        client went away are kept. Once the last byte is in, the version is
        committed. Returns the new state."""
        async with self._hold(upload):
            state = await anyio.to_thread.run_sync(self._read_state, upload)
            if offset != state.offset:
                raise Refusal(
                    409,
                    "conflict",
                    f"Upload-Offset is {offset}, but the upload is at {state.offset}",
                    {"offset": state.offset},
                )
            if state.done:
                async for chunk in chunks:
                    if chunk:
                        raise Refusal(413, "too_large", "the upload is complete: no more bytes fit")
                return state
            if state.offset < state.length:
                state = await self._write(state, chunks, checksum)
            if state.offset == state.length:
                state = await self._commit(state)
            return state

    async def _write(
        self, state: UploadState, chunks: AsyncIterable[bytes], checksum: bytes | None
    ) -> UploadState:
        part = self._part(state.id)
        start = state.offset
        room = state.length - start

        def open_at() -> int:
            try:
                fd = os.open(part, os.O_WRONLY | os.O_CLOEXEC)
                # Bytes past the acknowledged offset were never acknowledged.
                os.ftruncate(fd, start)
            except OSError as exc:
                raise _disk.unavailable(self.location, "open", part, exc) from exc
            return fd

        fd = await anyio.to_thread.run_sync(open_at)
        digest = hashlib.sha256()
        written = 0
        keep = False
        try:
            try:
                async for chunk in chunks:
                    if not chunk:
                        continue
                    if written + len(chunk) > room:
                        raise Refusal(
                            413,
                            "too_large",
                            f"the body goes past Upload-Length ({state.length} bytes)",
                            {"length": state.length, "offset": start},
                        )
                    digest.update(chunk)
                    await anyio.to_thread.run_sync(_pwrite, fd, bytes(chunk), start + written)
                    written += len(chunk)
            except (ConnectionError, EOFError, TimeoutError, asyncio.IncompleteReadError):
                # The client went away: what arrived is kept (when no checksum has to
                # vouch for the whole body), as tus asks; it resumes from there.
                keep = checksum is None
                raise
            if checksum is not None and digest.digest() != checksum:
                raise Refusal(
                    460,
                    "checksum_mismatch",
                    "Upload-Checksum does not match the body: the chunk was discarded",
                    {"offset": start},
                )
            keep = True
        finally:
            with anyio.CancelScope(shield=True):
                if keep and written:
                    await anyio.to_thread.run_sync(os.fsync, fd)
                    state.offset = start + written
                    state.expires_at = time.time() + self.expiry
                    await anyio.to_thread.run_sync(self._write_state, state)
                elif written:
                    await anyio.to_thread.run_sync(os.ftruncate, fd, start)
                os.close(fd)
        return state

    async def _commit(self, state: UploadState) -> UploadState:
        part = self._part(state.id)
        info = await self.vault.put(
            state.name,
            _read_file(part),
            max_size=self.max_size,
            location=self.location.name,
        )
        state.version = info.version
        state.sha256 = info.sha256

        def finish() -> None:
            self._write_state(state)
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(finish)
        return state

    @contextlib.asynccontextmanager
    async def _hold(self, upload: str) -> AsyncIterator[None]:
        lock = self._busy.setdefault(upload, asyncio.Lock())
        if lock.locked():
            raise Refusal(423, "locked", f"upload {upload!r} is being written by another request")
        async with lock:
            try:
                yield
            finally:
                self._busy.pop(upload, None)

    async def expire(self) -> int:
        """Remove expired uploads (and stray files of none); returns how many."""
        busy = {u for u, lock in self._busy.items() if lock.locked()}
        return await anyio.to_thread.run_sync(self._expire, busy)

    def _expire(self, busy: set[str]) -> int:
        now = time.time()
        removed = 0
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise _disk.unavailable(self.location, "list", self.folder, exc) from exc
        ids = {e.name.split(".", 1)[0] for e in entries}
        for upload in sorted(ids - busy):
            try:
                state = msgspec.json.decode(self._sidecar(upload).read_bytes(), type=UploadState)
                expired = state.expires_at < now
            except FileNotFoundError:
                # A part without its sidecar (a crash between the two): stale once old.
                try:
                    expired = self._part(upload).stat().st_mtime + self.expiry < now
                except FileNotFoundError:
                    expired = False
            except (OSError, msgspec.DecodeError):
                expired = True
            if expired:
                self._remove(upload)
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / f"{upload}.json.new").unlink()
                removed += 1
        return removed


def _pwrite(fd: int, data: bytes, position: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, position)
        view = view[done:]
        position += done


async def _read_file(path: Path) -> AsyncIterator[bytes]:
    fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while data := await anyio.to_thread.run_sync(os.read, fd, _CHUNK):
            yield data
    finally:
        os.close(fd)
