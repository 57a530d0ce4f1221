"""Resource names (GUARANTEES 001/15): hostile names are refused with an InvalidName
that says what is wrong, good names come back NFC-normalised, and no name reaches a
path on disk (blob paths are made of hashes only)."""

from __future__ import annotations

import unicodedata

import pytest

from fiefdom import FiefdomError
from fiefdom.vault import MAX_NAME_BYTES, InvalidName, validate_name

HOSTILE: list[tuple[str, object, str]] = [
    ("empty", "", "empty"),
    ("not a str", b"report.pdf", "not bytes"),
    ("None", None, "not NoneType"),
    ("traversal", "../etc/passwd", "'/'"),
    ("traversal alone", "..", "'..'"),
    ("dot", ".", "dot"),
    ("traversal with backslashes", "..\\..\\windows\\system32", "'\\\\'"),
    ("double dot inside", "a..b", "'..'"),
    ("absolute path", "/etc/passwd", "'/'"),
    ("windows absolute path", "C:\\Windows\\win.ini", "'\\\\'"),
    ("UNC path", "\\\\server\\share", "'\\\\'"),
    ("device CON", "CON", "Windows device"),
    ("device nul with extension", "nul.txt", "Windows device"),
    ("device com1 lowercase", "com1", "Windows device"),
    ("device LPT9 with spaces", "LPT9 .log", "Windows device"),
    ("device with superscript digit", "COM\u00b9", "Windows device"),
    ("device conin$", "CONIN$", "Windows device"),
    ("overlong ascii", "a" * (MAX_NAME_BYTES + 1), "bytes of UTF-8"),
    ("overlong utf-8", "\u00e9" * (MAX_NAME_BYTES // 2 + 1), "bytes of UTF-8"),
    ("RTL override", "invoice\u202egpj.exe", "U+202E"),
    ("RTL isolate", "a\u2067b", "U+2067"),
    ("left-to-right mark", "a\u200eb", "U+200E"),
    ("lone high surrogate", "a\ud800b", "lone surrogate"),
    ("lone low surrogate", "\udfffname", "lone surrogate"),
    ("NUL", "a\x00b", "U+0000"),
    ("newline", "a\nb", "control character"),
    ("escape", "a\x1b[31mb", "control character"),
    ("DEL", "a\x7fb", "control character"),
    ("C1 control", "a\x85b", "control character"),
    ("line separator", "a\u2028b", "line separator"),
    ("private use", "a\ue000b", "private-use"),
    ("unassigned", "a\U000e0080b", "unassigned"),
    ("leading space", " name", "space"),
    ("trailing space", "name ", "space"),
    ("trailing tab", "name\t", "control character"),
    ("leading dot", ".hidden", "dot"),
    ("trailing dot", "name.", "dot"),
]


@pytest.mark.parametrize(("case", "name", "reason"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_names_are_refused_with_the_reason(case: str, name: object, reason: str) -> None:
    """Each hostile name gets InvalidName (a FiefdomError and a ValueError) whose message
    names what was wrong (GUARANTEES 001/15)."""
    with pytest.raises(InvalidName) as info:
        validate_name(name)
    assert isinstance(info.value, FiefdomError)
    assert isinstance(info.value, ValueError)
    assert reason in str(info.value), (case, str(info.value))
    assert "invalid resource name" in str(info.value)


GOOD = [
    "report.pdf",
    "photos 2024",
    "a.b.c",
    "con-artist.txt",  # a device name only when it is the whole stem
    "COM10",
    "\u65e5\u672c\u8a9e.txt",
    "emoji \U0001f600",
    "family \U0001f468\u200d\U0001f469\u200d\U0001f467",  # ZWJ sequence is fine
    "x" * MAX_NAME_BYTES,
]


@pytest.mark.parametrize("name", GOOD)
def test_good_names_pass_unchanged(name: str) -> None:
    """Ordinary names, non-ASCII ones and one of exactly MAX_NAME_BYTES bytes are
    accepted as they are."""
    assert validate_name(name) == name


def test_names_are_nfc_normalised() -> None:
    """A decomposed name ("e" + combining acute) comes back composed: the two spellings
    are one resource."""
    decomposed = "cafe\u0301.txt"
    assert validate_name(decomposed) == "caf\u00e9.txt"
    assert validate_name(decomposed) == unicodedata.normalize("NFC", decomposed)


def test_the_length_limit_counts_bytes_after_normalisation() -> None:
    """The limit is in bytes of UTF-8 of the normalised name: a name of few characters
    but many bytes is refused."""
    name = "\U0001f600" * (MAX_NAME_BYTES // 4 + 1)  # 4 bytes each
    assert len(name) < MAX_NAME_BYTES
    with pytest.raises(InvalidName, match="bytes of UTF-8"):
        validate_name(name)
