"""How deeply a frame nests, measured before it is decoded: msgspec decodes (and
skips) nested values recursively, so a frame of 100,000 ``[`` would end in a
``RecursionError``. Both measures are linear in the frame's size; the common frame,
with fewer openers than the limit, costs one pass of ``bytes.count``."""

from __future__ import annotations

import array
import itertools
import re
from typing import Final

# JSON: only brackets outside strings nest.
_JSON_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_JSON_SQUARE: Final = bytes.maketrans(b"{}", b"[]")
_JSON_STRING: Final = re.compile(rb'"[^"]*"')
_JSON_STEPS: Final = bytes.maketrans(b"[]", b"\x01\xff")  # +1 and -1 as signed bytes
_SLICE: Final = 4096

# MessagePack: the type bytes of arrays and maps, and of the values that are one byte
# long (fixints, nil, booleans, the empty string), skipped by the run.
_MSGPACK_NOT_CONTAINERS: Final = bytes(
    b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF)
)
_MSGPACK_ONE_BYTE_RUN: Final = re.compile(rb"[\x00-\x7f\xa0\xc0\xc2\xc3\xe0-\xff]*")
# Values of a fixed size: the byte count after the type byte.
_FIXED: Final[dict[int, int]] = {
    0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,  # uint 8-64
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,  # int 8-64
    0xCA: 4, 0xCB: 8,  # float 32, 64
    0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,  # fixext 1-16 (type byte + data)
}  # fmt: skip
# Values with a length: (bytes of the length, bytes after it besides the data).
_SIZED: Final[dict[int, tuple[int, int]]] = {
    0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0),  # bin 8-32
    0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0),  # str 8-32
    0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),  # ext 8-32 (a type byte)
}  # fmt: skip
# Arrays and maps with a length: (bytes of the length, items per entry).
_CONTAINERS: Final[dict[int, tuple[int, int]]] = {
    0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2),
}  # fmt: skip


def json_too_deep(data: bytes, limit: int) -> bool:
    """True when arrays and objects nest more than ``limit`` deep in the JSON ``data``
    (an upper bound for text that is not JSON: it is refused either way)."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    # Escaped backslashes first, then escaped quotes: what is left of each string
    # holds no quote, and a string is a quote, anything, a quote.
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = _JSON_STRING.sub(b"", unescaped).translate(_JSON_SQUARE, _JSON_NOT_BRACKETS)
    if brackets.count(b"[") <= limit:
        return False
    if b"[" * (limit + 1) in brackets or brackets.count(b"[") - brackets.count(b"]") > limit:
        return True  # the usual attacks, found without counting
    # The deepest point is the largest running sum of +1 per opener, -1 per closer,
    # summed a slice at a time so that a frame too deep early stops early.
    steps = array.array("b", brackets.translate(_JSON_STEPS))
    level = 0
    for start in range(0, len(steps), _SLICE):
        sums = list(itertools.accumulate(steps[start : start + _SLICE], initial=level))
        if max(sums) > limit:
            return True
        level = sums[-1]
    return False


def msgpack_too_deep(data: bytes, limit: int) -> bool:
    """True when arrays and maps nest more than ``limit`` deep in the MessagePack
    ``data`` (its first value; what follows it is the decoder's to refuse)."""
    if len(data.translate(None, _MSGPACK_NOT_CONTAINERS)) <= limit:
        return False
    open_counts: list[int] = []  # items still to read in each enclosing container
    remaining = 1  # items still to read at this level: the frame is one value
    i, end = 0, len(data)
    while i < end:
        while remaining == 0:
            if not open_counts:
                return False
            remaining = open_counts.pop()
        run = _MSGPACK_ONE_BYTE_RUN.match(data, i).end() - i  # type: ignore[union-attr]
        if run:
            taken = min(run, remaining)
            remaining -= taken
            i += taken
            continue
        remaining -= 1
        kind = data[i]
        i += 1
        if 0xA1 <= kind <= 0xBF:  # fixstr
            i += kind & 0x1F
            continue
        if kind in _FIXED:
            i += _FIXED[kind]
            continue
        if kind in _SIZED:
            width, extra = _SIZED[kind]
            i += width + extra + int.from_bytes(data[i : i + width], "big")
            continue
        if 0x90 <= kind <= 0x9F:
            items = kind & 0x0F
        elif 0x80 <= kind <= 0x8F:
            items = 2 * (kind & 0x0F)
        elif kind in _CONTAINERS:
            width, per_entry = _CONTAINERS[kind]
            items = per_entry * int.from_bytes(data[i : i + width], "big")
            i += width
        else:
            return False  # 0xc1 is never used: the decoder refuses the frame
        if len(open_counts) + 1 > limit:
            return True
        if items:
            open_counts.append(remaining)
            remaining = items
    return False
