"""The vault over HTTP (aiohttp), mounted on the daemon's control server: it shares
the server's tokens and roles (``read`` for ``GET``/``HEAD``/``OPTIONS``,
``operate`` for uploads and deletes, ``admin`` for ``fsck``). Routes::

    PUT    /vault/resources/{name}                  the body becomes the next version
    POST   /vault/batch                             many files (multipart), a result each
    GET    /vault/resources/{name}[/versions/{n}]   the bytes (Range, ETag, If-None-Match)
    HEAD   (the same, without the body)
    DELETE /vault/resources/{name}[/versions/{n}]
    GET    /vault/resources/{name}/versions         {"versions": [...]}
    GET    /vault/resources?limit=N&after=CURSOR    {"resources": [...], "next": ...}
    GET    /vault/stats
    POST   /vault/fsck?repair=true                  (admin) the FsckReport
    OPTIONS|POST /vault/uploads, HEAD|PATCH|DELETE /vault/uploads/{id}   tus 1.0

Names are taken from the raw request path, one segment each, percent-decoded
here (so ``%2F`` is a slash inside the name, refused as such, never a separator).
Bodies are read from ``request.content`` chunk by chunk, never whole, so neither
memory nor the control channel's ``client_max_size`` bounds an upload: the vault's
``max_upload`` does. Errors are JSON ``{"code", "message", "details"}``."""

from __future__ import annotations

import asyncio
import email.utils
import errno
import json
import os
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import anyio
import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .._errors import (
    BadRange,
    ChecksumMismatch,
    InvalidName,
    QuotaExceeded,
    TooLarge,
)
from .._log import get_logger
from ._batch import read_batch
from ._disk import Download
from ._headers import (
    DIGITS,
    content_disposition,
    etag_matches,
    parse_content_digest,
    parse_range,
)
from ._model import VersionInfo, error_status
from ._names import validate_name
from ._tus import Refusal, TusUploads, UploadState, parse_checksum, parse_metadata
from ._vault import MAX_PAGE, Vault

log = get_logger("fiefdom.vault.http")

Role = Literal["read", "operate", "admin"]
# The server's check of a request's token: None when it may go on, else the refusal.
Check = Callable[[web.Request, Role], web.StreamResponse | None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,checksum,termination,expiration"
_OFFSET_STREAM = "application/offset+octet-stream"
SEND_CHUNK = 4 << 20  # bytes of a download read per worker-thread call without sendfile


def _error(
    status: int,
    code: str,
    message: str,
    details: dict[str, object] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"code": code, "message": message, "details": details or {}}
    return web.json_response(body, status=status, headers=headers)


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(value),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(exc: BaseException) -> web.Response:
    """The JSON error reply for what a vault operation raised."""
    if isinstance(exc, Refusal):
        return _error(exc.status, exc.code, exc.message, exc.details)
    known = error_status(exc)
    if known is None:
        log.exception("vault request failed", error=repr(exc))
        return _error(500, "internal", f"the request failed: {type(exc).__name__}")
    status, code = known
    details: dict[str, object] = {}
    headers: dict[str, str] | None = None
    if isinstance(exc, InvalidName):
        details = {"reason": exc.reason}
    elif isinstance(exc, TooLarge):
        details = {"limit": exc.limit}
    elif isinstance(exc, QuotaExceeded):
        details = {"location": exc.location, "quota": exc.quota, "used": exc.used}
        details["size"] = exc.size
    elif isinstance(exc, ChecksumMismatch):
        details = {"expected": exc.expected, "actual": exc.actual}
    elif isinstance(exc, BadRange):
        details = {"size": exc.size}
        headers = {"Content-Range": f"bytes */{exc.size}"}
    return _error(status, code, str(exc) or type(exc).__name__, details, headers)


class VaultHttp:
    """The vault's HTTP routes. ``max_upload`` caps one upload (PUT or tus);
    ``idle_timeout``: seconds a body may stall between two chunks before the
    upload is abandoned (nothing committed; a tus upload keeps what arrived)."""

    def __init__(
        self,
        vault: Vault,
        *,
        max_upload: int | None,
        upload_expiry: float = 24 * 3600.0,
        idle_timeout: float = 60.0,
    ) -> None:
        self.vault = vault
        self.max_upload = max_upload
        self.idle_timeout = idle_timeout
        self.uploads = TusUploads(vault, max_size=max_upload, expiry=upload_expiry)
        self._check: Check | None = None

    def mount(self, app: web.Application, check: Check) -> None:
        """Add the routes to ``app``; ``check(request, role)`` authenticates."""
        self._check = check
        app.router.add_route("*", "/vault", self._dispatch)
        app.router.add_route("*", "/vault/{tail:.*}", self._dispatch)

    # -- dispatch ----------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        role: Role = "read" if method in ("GET", "HEAD", "OPTIONS") else "operate"
        if request.path.rstrip("/") == "/vault/fsck":
            role = "admin"
        assert self._check is not None
        refused = self._check(request, role)
        if refused is not None:
            return _with_details(refused, role)
        tus = request.path.startswith("/vault/uploads")
        try:
            segments = _segments(request.raw_path)
            if len(segments) < 2:
                raise Refusal(404, "not_found", f"no such vault endpoint: {request.path}")
            response = await self._route(request, method, segments)
        except Exception as exc:
            response = error_response(exc)
        if tus:
            response.headers["Tus-Resumable"] = TUS_VERSION
        return response

    async def _route(
        self, request: web.Request, method: str, segments: list[str]
    ) -> web.StreamResponse:
        kind = segments[1]
        rest = segments[2:]
        if kind == "resources":
            if not rest:
                return await self._call(method, {"GET": lambda: self._list(request)})
            name = rest[0]
            if len(rest) == 1:
                return await self._call(
                    method,
                    {
                        "GET": lambda: self._download(request, name, None),
                        "HEAD": lambda: self._download(request, name, None),
                        "PUT": lambda: self._put(request, name),
                        "DELETE": lambda: self._delete(name, None),
                    },
                )
            if rest[1] == "versions" and len(rest) == 2:
                return await self._call(method, {"GET": lambda: self._versions(name)})
            if rest[1] == "versions" and len(rest) == 3:
                number = _version_number(rest[2])
                return await self._call(
                    method,
                    {
                        "GET": lambda: self._download(request, name, number),
                        "HEAD": lambda: self._download(request, name, number),
                        "DELETE": lambda: self._delete(name, number),
                    },
                )
        elif kind == "batch" and not rest:
            return await self._call(method, {"POST": lambda: self._batch(request)})
        elif kind == "stats" and not rest:
            return await self._call(method, {"GET": self._stats})
        elif kind == "fsck" and not rest:
            return await self._call(method, {"POST": lambda: self._fsck(request)})
        elif kind == "uploads":
            if not rest:
                return await self._call(
                    method,
                    {"OPTIONS": self._tus_options, "POST": lambda: self._tus_create(request)},
                )
            if len(rest) == 1:
                upload = rest[0]
                return await self._call(
                    method,
                    {
                        "HEAD": lambda: self._tus_head(request, upload),
                        "PATCH": lambda: self._tus_patch(request, upload),
                        "DELETE": lambda: self._tus_delete(request, upload),
                        "OPTIONS": self._tus_options,
                    },
                )
        raise Refusal(404, "not_found", f"no such vault endpoint: {request.path}")

    async def _call(
        self, method: str, handlers: dict[str, Callable[[], Awaitable[web.StreamResponse]]]
    ) -> web.StreamResponse:
        handler = handlers.get(method)
        if handler is None:
            allowed = ", ".join(sorted(handlers))
            return _error(
                405,
                "method_not_allowed",
                f"{method} is not allowed here; allowed: {allowed}",
                {"allowed": sorted(handlers)},
                {"Allow": allowed},
            )
        return await handler()

    # -- resources ---------------------------------------------------------------------

    async def _put(self, request: web.Request, name: str) -> web.StreamResponse:
        name = validate_name(name)
        expected = parse_content_digest(request.headers.get("Content-Digest"))
        length = request.content_length
        if self.max_upload is not None and length is not None and length > self.max_upload:
            raise TooLarge(self.max_upload)
        info = await self.vault.put(
            name, self._body(request), expected_sha256=expected, max_size=self.max_upload
        )
        return _json(
            {
                "resource": info.resource,
                "version": info.version,
                "sha256": info.sha256,
                "size": info.size,
            },
            201,
            {
                "ETag": f'"{info.sha256}"',
                "Fiefdom-Version": str(info.version),
                "Location": _resource_path(info.resource, info.version),
            },
        )

    async def _batch(self, request: web.Request) -> web.StreamResponse:
        if not request.content_type.startswith("multipart/"):
            raise Refusal(
                415,
                "unsupported_media_type",
                "POST /vault/batch takes multipart/form-data: one part per file, its "
                f"filename the resource's name (got {request.content_type!r})",
            )
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError) as exc:
            raise Refusal(400, "invalid_request", f"a malformed multipart body: {exc}") from exc
        results = await read_batch(
            self.vault,
            reader,
            request.content,
            max_upload=self.max_upload,
            idle_timeout=self.idle_timeout,
        )
        return _json({"results": results})

    async def _body(self, request: web.Request) -> AsyncIterator[bytes]:
        """The request's body as it arrives; a stall of ``idle_timeout`` seconds is a
        ``TimeoutError``, a client gone mid-body a ``ConnectionResetError``."""
        while True:
            try:
                with anyio.fail_after(self.idle_timeout):
                    chunk = await request.content.readany()
            except HttpProcessingError as exc:
                raise ConnectionResetError(f"the request body was cut short: {exc}") from exc
            if not chunk:
                return
            yield chunk

    async def _download(
        self, request: web.Request, name: str, version: int | None
    ) -> web.StreamResponse:
        info = await self.vault.info(name, version)
        etag = f'"{info.sha256}"'
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Content-Disposition": content_disposition(info.resource),
            "Fiefdom-Version": str(info.version),
            "Cache-Control": "private, no-cache"
            if version is None
            else "private, max-age=31536000, immutable",
        }
        match = request.headers.get("If-None-Match")
        if match is not None and etag_matches(match, etag):
            return web.Response(status=304, headers=headers)
        selected = parse_range(request.headers.get("Range"), info.size)
        if_range = request.headers.get("If-Range")
        if selected is not None and if_range is not None and if_range.strip() != etag:
            selected = None  # the client's copy is another version: send it whole
        offset, length = selected if selected is not None else (0, info.size)
        download = await self.vault.open(info.resource, info.version, offset=offset, length=length)
        async with download:
            response = web.StreamResponse(status=200 if selected is None else 206, headers=headers)
            if selected is not None:
                response.headers["Content-Range"] = (
                    f"bytes {offset}-{offset + length - 1}/{info.size}"
                )
            response.content_type = "application/octet-stream"
            response.content_length = length
            await response.prepare(request)
            if request.method != "HEAD" and length:
                try:
                    await _send(request, response, download)
                except Exception as exc:
                    _cut_short(request, response, info, exc)
                    return response
            await response.write_eof()
        return response

    async def _delete(self, name: str, version: int | None) -> web.StreamResponse:
        await self.vault.delete(name, version)
        return web.Response(status=204)

    async def _versions(self, name: str) -> web.StreamResponse:
        versions = await self.vault.versions(name)
        return _json({"versions": [_version_json(v) for v in versions]})

    async def _list(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        limit_text = query.get("limit", "100")
        if not DIGITS.fullmatch(limit_text) or not 1 <= int(limit_text) <= MAX_PAGE:
            raise Refusal(400, "invalid_request", f"limit must be a number from 1 to {MAX_PAGE}")
        page = await self.vault.list(limit=int(limit_text), after=query.get("after"))
        return _json(page)

    async def _stats(self) -> web.StreamResponse:
        return _json(await self.vault.stats())

    async def _fsck(self, request: web.Request) -> web.StreamResponse:
        repair = request.query.get("repair", "false").lower()
        if repair not in ("true", "false", "1", "0"):
            raise Refusal(400, "invalid_request", "repair must be true or false")
        report = await self.vault.fsck(repair=repair in ("true", "1"))
        return _json(report)

    # -- tus ---------------------------------------------------------------------------

    def _tus_headers(self) -> dict[str, str]:
        headers = {
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": TUS_EXTENSIONS,
            "Tus-Checksum-Algorithm": "sha256",
        }
        if self.max_upload is not None:
            headers["Tus-Max-Size"] = str(self.max_upload)
        return headers

    async def _tus_options(self) -> web.StreamResponse:
        return web.Response(status=204, headers=self._tus_headers())

    def _tus_version(self, request: web.Request) -> None:
        presented = request.headers.get("Tus-Resumable")
        if presented != TUS_VERSION:
            raise Refusal(
                412,
                "precondition_failed",
                f"Tus-Resumable must be {TUS_VERSION}, got {presented!r}",
                {"supported": [TUS_VERSION]},
            )

    def _state_headers(self, state: UploadState) -> dict[str, str]:
        headers = {
            "Upload-Offset": str(state.offset),
            "Upload-Length": str(state.length),
            "Upload-Expires": email.utils.formatdate(state.expires_at, usegmt=True),
            "Cache-Control": "no-store",
        }
        if state.version is not None:
            headers["Fiefdom-Version"] = str(state.version)
            headers["ETag"] = f'"{state.sha256}"'
            headers["Content-Location"] = _resource_path(state.name, state.version)
        return headers

    async def _tus_create(self, request: web.Request) -> web.StreamResponse:
        self._tus_version(request)
        if "Upload-Defer-Length" in request.headers:
            raise Refusal(400, "invalid_header", "Upload-Defer-Length is not supported")
        length_text = request.headers.get("Upload-Length", "")
        if not DIGITS.fullmatch(length_text):
            raise Refusal(400, "invalid_header", "Upload-Length must be a number of bytes")
        metadata = parse_metadata(request.headers.get("Upload-Metadata"))
        await self.uploads.expire()
        checksum = parse_checksum(request.headers.get("Upload-Checksum"))
        state = await self.uploads.create(int(length_text), metadata)
        if request.content_type == _OFFSET_STREAM:
            # creation-with-upload: the body is the first chunk.
            state = await self.uploads.append(state.id, 0, self._body(request), checksum)
        headers = self._state_headers(state)
        headers["Location"] = f"/vault/uploads/{state.id}"
        return web.Response(status=201, headers=headers)

    async def _tus_head(self, request: web.Request, upload: str) -> web.StreamResponse:
        self._tus_version(request)
        state = await self.uploads.status(upload)
        return web.Response(status=200, headers=self._state_headers(state))

    async def _tus_patch(self, request: web.Request, upload: str) -> web.StreamResponse:
        self._tus_version(request)
        if request.content_type != _OFFSET_STREAM:
            raise Refusal(
                415, "unsupported_media_type", f"a PATCH's Content-Type must be {_OFFSET_STREAM}"
            )
        offset_text = request.headers.get("Upload-Offset", "")
        if not DIGITS.fullmatch(offset_text):
            raise Refusal(400, "invalid_header", "Upload-Offset must be a number of bytes")
        checksum = parse_checksum(request.headers.get("Upload-Checksum"))
        state = await self.uploads.append(upload, int(offset_text), self._body(request), checksum)
        return web.Response(status=204, headers=self._state_headers(state))

    async def _tus_delete(self, request: web.Request, upload: str) -> web.StreamResponse:
        self._tus_version(request)
        await self.uploads.terminate(upload)
        return web.Response(status=204)


async def _send(request: web.Request, response: web.StreamResponse, download: Download) -> None:
    """The download's bytes, after ``response``'s headers: by the event loop's
    ``sendfile`` as ``web.FileResponse`` sends a file (from the page cache to the
    socket in the kernel; asyncio's loop reads and writes in its stead over TLS), else
    (uvloop has none) in chunks of ``SEND_CHUNK`` bytes read by a worker thread."""
    transport = request.transport
    if transport is not None:
        with os.fdopen(download.fileno(), "rb", buffering=0, closefd=False) as file:
            try:
                sent = await asyncio.get_running_loop().sendfile(
                    transport, file, download.offset, download.length
                )
            except NotImplementedError:
                pass
            else:
                if sent != download.length:
                    raise OSError(errno.EIO, "the blob file is shorter than its size")
                return
    async for chunk in download.chunks(SEND_CHUNK):
        await response.write(chunk)


def _cut_short(
    request: web.Request, response: web.StreamResponse, info: VersionInfo, exc: Exception
) -> None:
    """A download failed after its status and headers were sent: closing the
    connection is all that tells the client that the body is incomplete (an error
    reply now would be read as more of the body). A client gone away is no news."""
    response.force_close()
    if request.transport is not None:
        request.transport.close()
    if not isinstance(exc, ConnectionError):
        log.warning(
            "vault download cut short",
            resource=info.resource,
            version=info.version,
            error=str(exc) or type(exc).__name__,
        )


def _segments(raw_path: str) -> list[str]:
    """The path's segments, each percent-decoded on its own (``%2F`` stays inside its
    segment). Invalid UTF-8 is a 400."""
    path = raw_path.split("?", 1)[0]
    parts = path.split("/")[1:]
    try:
        return [urllib.parse.unquote(p, errors="strict") for p in parts]
    except UnicodeDecodeError:
        raise Refusal(400, "invalid_name", "the path is not percent-encoded UTF-8") from None


def _version_number(text: str) -> int:
    if not DIGITS.fullmatch(text) or not 1 <= int(text) < 2**63:
        raise Refusal(400, "invalid_request", f"a version is a number from 1, got {text!r}")
    return int(text)


def _resource_path(name: str, version: int) -> str:
    return f"/vault/resources/{urllib.parse.quote(name, safe='')}/versions/{version}"


def _version_json(info: VersionInfo) -> dict[str, object]:
    return {
        "resource": info.resource,
        "version": info.version,
        "sha256": info.sha256,
        "size": info.size,
        "created_at": info.created_at,
        "location": info.location,
        "state": info.state,
    }


def _with_details(refused: web.StreamResponse, role: Role) -> web.StreamResponse:
    """The server's refusal, with ``details`` like every vault error."""
    if not isinstance(refused, web.Response) or refused.body is None:
        return refused
    try:
        body = json.loads(bytes(refused.body))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return refused
    body.setdefault("details", {"needed": role})
    headers = {k: v for k, v in refused.headers.items() if k.lower() == "www-authenticate"}
    return web.json_response(body, status=refused.status, headers=headers)
