"""Resource names: what the vault accepts, in one function. A name is only ever a
key in the database; no path on disk is derived from it (blobs live under their
hash), so these rules keep names safe to show, to send in a header and to use as a
file name when a client saves a download."""

from __future__ import annotations

import unicodedata

from .._errors import InvalidName

MAX_NAME_BYTES = 255
"""The longest name, in bytes of UTF-8 (after NFC normalisation), as most file
systems allow for one file name."""

# Bidirectional formatting characters: they make a name display differently from
# what it is ("evil\u202etxt.exe" shows as "evilexe.txt").
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Categories refused anywhere: control characters, lone surrogates, line and
# paragraph separators, private use and unassigned code points.
_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cs": "a lone surrogate",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
}
# Windows refuses these as a file's name, with any extension ("con.txt"), and
# superscript digits count as digits there ("COM¹").
_DEVICES = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$"}
    | {f"{port}{n}" for port in ("com", "lpt") for n in "123456789\u00b9\u00b2\u00b3"}
)


def validate_name(name: object) -> str:
    """Return ``name`` NFC-normalised, or raise ``InvalidName`` saying what is wrong.

    Refused: anything but a non-empty ``str``; lone surrogates; more than
    ``MAX_NAME_BYTES`` bytes of UTF-8; ``/``, ``\\`` and ``..``; NUL and other
    control characters, line and paragraph separators, bidirectional formatting
    characters (U+202E ...), private-use and unassigned code points; a leading or
    trailing space or dot; and Windows device names (``CON``, ``nul.txt``,
    ``COM1`` ...) in any case."""
    if not isinstance(name, str):
        raise InvalidName(name, f"a name is a str, not {type(name).__name__}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(name, "it holds a lone surrogate (not valid Unicode text)") from None
    normal = unicodedata.normalize("NFC", name)
    if not normal:
        raise InvalidName(name, "it is empty")
    size = len(normal.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise InvalidName(name, f"it is {size} bytes of UTF-8, over the {MAX_NAME_BYTES} allowed")
    for char in ("/", "\\"):
        if char in normal:
            raise InvalidName(name, f"it contains {char!r} (names are not paths)")
    if ".." in normal:
        raise InvalidName(name, "it contains '..' (names are not paths)")
    for index, char in enumerate(normal):
        if char in _BIDI:
            raise InvalidName(
                name, f"character {index} is the bidirectional control U+{ord(char):04X}"
            )
        what = _REFUSED_CATEGORIES.get(unicodedata.category(char))
        if what is not None:
            raise InvalidName(name, f"character {index} (U+{ord(char):04X}) is {what}")
    if normal[0].isspace() or normal[-1].isspace():
        raise InvalidName(name, "it starts or ends with a space")
    if normal[0] == "." or normal[-1] == ".":
        raise InvalidName(name, "it starts or ends with a dot")
    stem = normal.split(".", 1)[0].rstrip(" ").lower()
    if stem in _DEVICES:
        raise InvalidName(name, f"{stem.upper()} is a Windows device name")
    return normal
