"""``POST /vault/batch``: many files in one ``multipart/form-data`` request. Each part
is a file whose ``filename`` (``filename*`` for a name beyond ASCII) is the resource
name, with its own ``Content-Digest`` if the client has one. Parts are read one
after the other as they arrive, never buffered whole, and each is stored on its own,
exactly as ``PUT`` stores one: the reply holds one result per part, in order, and a
part refused (a bad name, too large, a wrong digest) is skipped to its end without
holding back the parts after it.

If the request itself breaks off (the body stalls or is cut short, or the multipart
framing is malformed), the parts before stay stored, the broken one gets the error,
and reading stops there: the reply still says what became of every part received."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from aiohttp import BodyPartReader, MultipartReader, StreamReader
from aiohttp.http_exceptions import HttpProcessingError

from .._errors import FiefdomError
from ._headers import parse_content_digest
from ._model import PutResult, error_status
from ._tus import Refusal
from ._vault import Vault

MAX_ITEMS = 1000
"""Parts of one batch that are stored; the next one is answered ``too_many_items`` and
the rest of the body is not read."""

_CHUNK = 1 << 20


async def read_batch(
    vault: Vault,
    reader: MultipartReader,
    body: StreamReader,
    *,
    max_upload: int | None,
    idle_timeout: float,
) -> list[PutResult]:
    """Store the parts of ``reader`` (over the request's ``body``) one by one; a
    result for each."""
    results: list[PutResult] = []
    while True:
        try:
            with anyio.fail_after(idle_timeout):
                part = await reader.next()
        except (TimeoutError, ValueError, HttpProcessingError, ConnectionError) as exc:
            results.append(_broken(exc))
            return results
        if part is None:
            return results
        index = len(results)
        if not isinstance(part, BodyPartReader):
            results.append(_refused("", "invalid_request", f"part {index} is a nested multipart"))
            broken = await _skip(part, idle_timeout)
        elif index >= MAX_ITEMS:
            # One answer for the rest, and reading stops: a body of endless tiny parts
            # cannot grow the reply (nor the server's memory) with it.
            message = (
                f"a batch stores at most {MAX_ITEMS} parts; part {index} and any after it "
                "were not read"
            )
            results.append(_refused(part.filename or "", "too_many_items", message))
            return results
        else:
            result = await _store(vault, part, body, index, max_upload, idle_timeout)
            results.append(result)
            broken = result.code in ("body_timeout", "body_incomplete")
            if not broken:
                broken = await _skip(part, idle_timeout)
        if broken:
            return results


async def _store(
    vault: Vault,
    part: BodyPartReader,
    body: StreamReader,
    index: int,
    max_upload: int | None,
    idle_timeout: float,
) -> PutResult:
    name = part.filename
    if not name:
        message = (
            f"part {index} has no filename: a part's filename (or filename*) is the name "
            "of the resource it becomes"
        )
        return _refused("", "invalid_request", message)
    try:
        expected = parse_content_digest(part.headers.get("Content-Digest"))
        info = await vault.put(
            name, _chunks(part, body, idle_timeout), expected_sha256=expected, max_size=max_upload
        )
    except (FiefdomError, ValueError, Refusal, TimeoutError, ConnectionError) as exc:
        return _outcome(name, exc)
    return PutResult(name=info.resource, version=info)


async def _chunks(
    part: BodyPartReader, body: StreamReader, idle_timeout: float
) -> AsyncIterator[bytes]:
    while True:
        try:
            with anyio.fail_after(idle_timeout):
                chunk = await part.read_chunk(_CHUNK)
        except HttpProcessingError as exc:
            raise ConnectionResetError(f"the request body was cut short: {exc}") from exc
        if chunk:
            yield chunk
            continue
        # A part ends at the next boundary, which the reader leaves in the body for
        # the next part: a body already at its end means the part was cut short.
        if body.at_eof():
            raise ConnectionResetError("the multipart body ended inside this part")
        return


async def _skip(part: BodyPartReader | MultipartReader, idle_timeout: float) -> bool:
    """Read ``part`` to its end (what is left of a refused part); True when the
    request broke off meanwhile."""
    try:
        with anyio.fail_after(idle_timeout):
            await part.release()
    except (TimeoutError, ValueError, HttpProcessingError, ConnectionError):
        return True
    return False


def _outcome(name: str, exc: BaseException) -> PutResult:
    if isinstance(exc, Refusal):  # a malformed Content-Digest
        return _refused(name, exc.code, exc.message)
    if isinstance(exc, TimeoutError) and not isinstance(exc, FiefdomError):
        return _refused(name, "body_timeout", "the request body stalled; it was abandoned")
    if isinstance(exc, ConnectionError):
        return _refused(name, "body_incomplete", str(exc) or "the request body was cut short")
    status = error_status(exc)
    return _refused(name, "unavailable" if status is None else status[1], str(exc))


def _broken(exc: BaseException) -> PutResult:
    if isinstance(exc, TimeoutError):
        return _refused("", "body_timeout", "the request body stalled; reading stopped")
    return _refused("", "body_incomplete", f"the multipart body broke off: {exc}")


def _refused(name: str, code: str, message: str) -> PutResult:
    return PutResult(name=name, code=code, error=message)
