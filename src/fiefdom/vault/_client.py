"""``VaultClient``: the Python client of a daemon's vault over HTTP::

    async with VaultClient("http://127.0.0.1:8765", token=token) as vault:
        stored = await vault.put("report.pdf")            # streamed from the file
        done = await vault.upload("big.iso")               # resumable (tus), in chunks
        info = await vault.get("report.pdf", "copy.pdf")   # to a file, hash checked
        results = await vault.put_many(["a.txt", ("b", "b.txt")])  # one request, a result each
        page = await vault.ls()
        await vault.rm("report.pdf", version=1)

Errors come back typed: ``NotFound``, ``InvalidName``, ``TooLarge``,
``QuotaExceeded``, ``BadRange``, ``ChecksumMismatch``; anything else (401, 403,
503 ...) is a ``ControlError`` with the server's ``code``, message and ``details``."""

from __future__ import annotations

import base64
import hashlib
import os
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from ssl import SSLContext
from types import TracebackType
from typing import Any

import aiohttp
import anyio.to_thread
import msgspec
from multidict import CIMultiDict

from .._errors import (
    BadRange,
    ChecksumMismatch,
    ControlConnectionError,
    ControlError,
    InvalidName,
    NotFound,
    QuotaExceeded,
    TooLarge,
)
from ._headers import content_disposition
from ._model import FsckReport, PutResult, ResourcePage, VaultStats, VersionInfo

CHUNK = 1 << 20
UPLOAD_CHUNK = 8 << 20  # bytes per tus PATCH
Progress = Callable[[int, int], None]  # (bytes done, bytes in all)
# The error code of a reply without a body (to HEAD).
_STATUS_CODES = {
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    410: "gone",
    413: "too_large",
    416: "bad_range",
    423: "locked",
    460: "checksum_mismatch",
}


class Stored(msgspec.Struct, frozen=True, kw_only=True):
    """A version the vault has committed: what ``put`` and ``upload`` return."""

    resource: str
    version: int
    sha256: str
    size: int


class _BatchReply(msgspec.Struct, frozen=True):
    results: list[PutResult]


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as file:
        while data := file.read(CHUNK):
            digest.update(data)
            size += len(data)
    return digest.hexdigest(), size


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as file:
        file.seek(offset)
        return file.read(size)


async def _raise_for(response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    try:
        body: Any = await response.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        body = None
    fallback = _STATUS_CODES.get(response.status, f"http_{response.status}")
    if not isinstance(body, dict):
        body = {"code": fallback, "message": f"HTTP {response.status} {response.reason or ''}"}
    code = str(body.get("code", fallback))
    message = str(body.get("message", ""))
    details = body.get("details") or {}
    if not isinstance(details, dict):
        details = {}
    if code == "not_found":
        raise NotFound(message)
    if code == "invalid_name":
        raise InvalidName(details.get("name", "?"), str(details.get("reason", message)))
    if code == "too_large":
        raise TooLarge(int(details.get("limit", 0)))
    if code == "quota_exceeded":
        raise QuotaExceeded(
            str(details.get("location", "?")),
            int(details.get("quota", 0)),
            int(details.get("used", 0)),
            int(details.get("size", 0)),
        )
    if code == "bad_range":
        raise BadRange(message, int(details.get("size", 0)))
    if code == "checksum_mismatch" and "expected" in details:
        raise ChecksumMismatch(str(details["expected"]), str(details.get("actual", "")))
    raise ControlError(code, message or f"HTTP {response.status}", details)


class VaultClient:
    """A client of the vault of the daemon at ``url`` (``http://host:port``, or
    ``https://host:port`` for a daemon serving TLS: its certificate verified as the
    ``ssl.SSLContext`` given as ``ssl`` says, else against the system's trusted CAs),
    presenting ``token`` (role read to read, operate to write, admin for fsck)."""

    def __init__(
        self, url: str, *, token: str, timeout: float = 30.0, ssl: SSLContext | None = None
    ) -> None:
        base = url.rstrip("/")
        if base.startswith("ws://"):
            base = "http://" + base[len("ws://") :]
        elif base.startswith("wss://"):
            base = "https://" + base[len("wss://") :]
        elif "://" not in base:
            base = "http://" + base
        self.url = base.removesuffix("/ws")
        if ssl is not None and not self.url.startswith("https://"):
            raise ValueError(f"ssl is for https:// (or wss://) URLs, not {self.url}")
        self._ssl = ssl
        self._headers = {"Authorization": f"Bearer {token}"}
        # ``timeout`` bounds connecting and each read, not a whole transfer.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
        )
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> VaultClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=True if self._ssl is None else self._ssl)
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, headers=self._headers, connector=connector
            )
        return self._session

    async def _request(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, CIMultiDict[str], bytes]:
        try:
            async with self._http().request(method, self.url + path, **kwargs) as response:
                await _raise_for(response)
                return response.status, CIMultiDict(response.headers), await response.read()
        except aiohttp.ClientConnectionError as exc:
            raise ControlConnectionError(f"cannot reach the vault at {self.url}: {exc}") from exc

    # -- writing -----------------------------------------------------------------------

    async def put(
        self, path: str | Path, name: str | None = None, *, progress: Progress | None = None
    ) -> Stored:
        """Upload the file at ``path`` as the next version of ``name`` (default: the
        file's name) in one streamed ``PUT``, with its ``Content-Digest`` (the file
        is hashed first, so bytes changed on the way are refused)."""
        file = Path(path)
        sha256, size = await anyio.to_thread.run_sync(_sha256_of, file)
        digest = base64.b64encode(bytes.fromhex(sha256)).decode()

        async def body() -> AsyncIterator[bytes]:
            done = 0
            handle = await anyio.to_thread.run_sync(open, file, "rb")
            try:
                while data := await anyio.to_thread.run_sync(handle.read, CHUNK):
                    done += len(data)
                    if progress is not None:
                        progress(done, size)
                    yield data
            finally:
                handle.close()

        _, _, raw = await self._request(
            "PUT",
            f"/vault/resources/{_quote(name or file.name)}",
            data=body(),
            headers={
                "Content-Digest": f"sha-256=:{digest}:",
                "Content-Length": str(size),
                "Content-Type": "application/octet-stream",
            },
        )
        return msgspec.json.decode(raw, type=Stored)

    async def put_many(
        self, files: Sequence[str | Path | tuple[str, str | Path]]
    ) -> list[PutResult]:
        """Upload several files in one request (``POST /vault/batch``), each the next
        version of its name (a ``(name, path)`` pair, or a path: the file's name),
        each with its ``Content-Digest``: one ``PutResult`` per file, in order; a
        refused file (a bad name, too large, over the quota) never holds back the
        others. The files are streamed, never read whole."""
        items = [
            (f[0], Path(f[1])) if isinstance(f, tuple) else (Path(f).name, Path(f)) for f in files
        ]
        digests = [await anyio.to_thread.run_sync(_sha256_of, path) for _, path in items]
        writer = aiohttp.MultipartWriter("form-data")
        handles = []
        try:
            for (name, path), (sha256, _) in zip(items, digests, strict=True):
                handle = await anyio.to_thread.run_sync(open, path, "rb")
                handles.append(handle)
                digest = base64.b64encode(bytes.fromhex(sha256)).decode()
                writer.append(
                    handle,
                    {
                        "Content-Type": "application/octet-stream",
                        "Content-Disposition": content_disposition(name, 'form-data; name="file"'),
                        "Content-Digest": f"sha-256=:{digest}:",
                    },
                )
            _, _, raw = await self._request("POST", "/vault/batch", data=writer)
        finally:
            for handle in handles:
                handle.close()
        return msgspec.json.decode(raw, type=_BatchReply).results

    async def upload(
        self,
        path: str | Path,
        name: str | None = None,
        *,
        resume: str | None = None,
        created: Callable[[str], None] | None = None,
        progress: Progress | None = None,
        chunk_size: int = UPLOAD_CHUNK,
    ) -> Stored:
        """Upload the file at ``path`` resumably (tus 1.0), ``chunk_size`` bytes per
        ``PATCH``, each with its checksum. ``resume``: the URL of an upload begun
        earlier (its offset is asked for; a gone one starts over); ``created(url)``
        is called with a new upload's URL, to be kept for a later resume."""
        file = Path(path)
        size = (await anyio.to_thread.run_sync(os.stat, file)).st_size
        tus = {"Tus-Resumable": "1.0.0"}
        url: str | None = None
        offset = 0
        if resume is not None:
            try:
                _, headers, _ = await self._request(
                    "HEAD", urllib.parse.urlsplit(resume).path, headers=tus
                )
                if int(headers.get("Upload-Length", -1)) == size:
                    url, offset = resume, int(headers["Upload-Offset"])
                    if "Fiefdom-Version" in headers:
                        return _stored(headers, name or file.name, size)
            except (NotFound, ControlError) as exc:
                if isinstance(exc, ControlError) and exc.code != "gone":
                    raise
        if url is None:
            meta = base64.b64encode((name or file.name).encode()).decode()
            _, headers, _ = await self._request(
                "POST",
                "/vault/uploads",
                headers={**tus, "Upload-Length": str(size), "Upload-Metadata": f"name {meta}"},
            )
            url = self.url + urllib.parse.urlsplit(headers["Location"]).path
            if created is not None:
                created(url)
        path_only = urllib.parse.urlsplit(url).path
        while True:
            data = await anyio.to_thread.run_sync(_read_at, file, offset, chunk_size)
            checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
            try:
                _, headers, _ = await self._request(
                    "PATCH",
                    path_only,
                    data=data,
                    headers={
                        **tus,
                        "Upload-Offset": str(offset),
                        "Upload-Checksum": f"sha256 {checksum}",
                        "Content-Type": "application/offset+octet-stream",
                    },
                )
            except ControlError as exc:
                if exc.code != "conflict" or "offset" not in exc.details:
                    raise
                offset = int(str(exc.details["offset"]))  # resume from where it is
                continue
            offset = int(headers["Upload-Offset"])
            if progress is not None:
                progress(offset, size)
            if "Fiefdom-Version" in headers:
                return _stored(headers, name or file.name, size)
            if not data and offset >= size:
                raise ControlError("internal", "the upload is complete but was not committed")

    async def rm(self, name: str, version: int | None = None) -> None:
        """Delete version ``version`` of ``name``, or the whole resource when None."""
        await self._request("DELETE", _resource(name, version))

    # -- reading -----------------------------------------------------------------------

    async def get(
        self,
        name: str,
        path: str | Path,
        version: int | None = None,
        *,
        progress: Progress | None = None,
    ) -> Stored:
        """Download version ``version`` of ``name`` (the latest when None) to the file
        at ``path`` (written beside it, its hash checked against the ``ETag``, then
        renamed into place)."""
        target = Path(path)
        partial = target.with_name(f".{target.name}.part")
        digest = hashlib.sha256()
        try:
            async with self._http().get(self.url + _resource(name, version)) as response:
                await _raise_for(response)
                size = int(response.headers.get("Content-Length", 0))
                etag = response.headers.get("ETag", "").strip('"')
                number = int(response.headers.get("Fiefdom-Version", 0))
                done = 0
                handle = await anyio.to_thread.run_sync(open, partial, "wb")
                try:
                    async for data in response.content.iter_chunked(CHUNK):
                        digest.update(data)
                        await anyio.to_thread.run_sync(handle.write, data)
                        done += len(data)
                        if progress is not None:
                            progress(done, size)
                    await anyio.to_thread.run_sync(handle.flush)
                    await anyio.to_thread.run_sync(os.fsync, handle.fileno())
                finally:
                    handle.close()
            if digest.hexdigest() != etag:
                raise ChecksumMismatch(etag, digest.hexdigest())
            await anyio.to_thread.run_sync(os.replace, partial, target)
        except aiohttp.ClientConnectionError as exc:
            raise ControlConnectionError(f"cannot reach the vault at {self.url}: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
        return Stored(resource=name, version=number, sha256=etag, size=done)

    async def read(
        self, name: str, version: int | None = None, *, offset: int = 0, length: int | None = None
    ) -> bytes:
        """The bytes of a version (or of a range of it), in memory: for small ones."""
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        _, _, raw = await self._request("GET", _resource(name, version), headers=headers)
        return raw

    async def ls(self, *, limit: int = 100, after: str | None = None) -> ResourcePage:
        """A page of resources by name (``page.next``: the cursor of the next one)."""
        query: dict[str, str] = {"limit": str(limit)}
        if after is not None:
            query["after"] = after
        _, _, raw = await self._request("GET", "/vault/resources", params=query)
        return msgspec.json.decode(raw, type=ResourcePage)

    async def versions(self, name: str) -> list[VersionInfo]:
        """The versions of ``name`` that are not deleted, oldest first."""
        _, _, raw = await self._request("GET", f"/vault/resources/{_quote(name)}/versions")
        return msgspec.json.decode(raw, type=dict[str, list[VersionInfo]])["versions"]

    async def stats(self) -> VaultStats:
        """Counts of resources, versions, blobs, bytes and pending sweeps."""
        _, _, raw = await self._request("GET", "/vault/stats")
        return msgspec.json.decode(raw, type=VaultStats)

    async def fsck(self, *, repair: bool = False) -> FsckReport:
        """Reconcile the vault's files and rows (needs an admin token)."""
        params = {"repair": "true" if repair else "false"}
        _, _, raw = await self._request("POST", "/vault/fsck", params=params)
        return msgspec.json.decode(raw, type=FsckReport)


def _resource(name: str, version: int | None) -> str:
    path = f"/vault/resources/{_quote(name)}"
    return path if version is None else f"{path}/versions/{version}"


def _stored(headers: CIMultiDict[str], name: str, size: int) -> Stored:
    location = headers.get("Content-Location", "")
    parts = location.split("/")
    resource = urllib.parse.unquote(parts[3]) if len(parts) > 3 else name
    return Stored(
        resource=resource,
        version=int(headers["Fiefdom-Version"]),
        sha256=headers.get("ETag", "").strip('"'),
        size=size,
    )
