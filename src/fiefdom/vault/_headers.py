"""The vault's HTTP headers: ``Content-Digest`` (RFC 9530), ``Range`` (RFC 9110),
``If-None-Match`` and ``Content-Disposition`` (RFC 6266)."""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse

from .._errors import BadRange
from ._tus import Refusal

DIGITS = re.compile(r"[0-9]{1,19}")


def parse_content_digest(header: str | None) -> str | None:
    """The sha-256 of ``Content-Digest`` (RFC 9530) as hex, None when the header is
    absent or names only other algorithms; a malformed sha-256 entry is a 400."""
    if header is None:
        return None
    for member in header.split(","):
        key, sep, value = member.strip().partition("=")
        if key.strip().lower() != "sha-256":
            continue
        value = value.strip()
        if not sep or len(value) < 2 or value[0] != ":" or value[-1] != ":":
            raise Refusal(
                400, "invalid_header", "Content-Digest: sha-256 must be a byte sequence :<base64>:"
            )
        try:
            digest = base64.b64decode(value[1:-1], validate=True)
        except binascii.Error:
            raise Refusal(400, "invalid_header", "Content-Digest: sha-256 is not base64") from None
        if len(digest) != 32:
            raise Refusal(400, "invalid_header", "Content-Digest: a sha-256 digest is 32 bytes")
        return digest.hex()
    return None


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range of ``Range`` as (offset, length), or None to send the whole
    (no header, another unit, several ranges, or a malformed one: RFC 9110 lets a
    server ignore those). A range past the end is ``BadRange`` (416)."""
    if header is None:
        return None
    unit, sep, specs = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = [p.strip() for p in specs.split(",") if p.strip()]
    if len(parts) != 1:
        return None
    first, dash, last = parts[0].partition("-")
    first, last = first.strip(), last.strip()
    if not dash:
        return None
    if not first:
        if not DIGITS.fullmatch(last):
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise BadRange(f"range {header!r} selects no byte of {size}", size)
        return max(0, size - suffix), min(suffix, size)
    if not DIGITS.fullmatch(first) or (last and not DIGITS.fullmatch(last)):
        return None
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise BadRange(f"range {header!r} starts past the end ({size} bytes)", size)
    end = min(end, size - 1)
    return start, end - start + 1


def etag_matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False


def content_disposition(name: str, disposition: str = "attachment") -> str:
    """``disposition`` (``attachment``; ``form-data; name="file"`` for a part of a
    multipart upload) with the name: an ASCII fallback and RFC 6266's ``filename*``,
    which the vault reads first."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    quoted = urllib.parse.quote(name, safe="")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quoted}"
