"""The configuration reference in docs/daemon.md is checked against the settings
Structs: every field of every section (``fiefdom.daemon.Config`` and the Structs it
nests) has a row in its section's table, and a default written there as a TOML value
is the field's default.

Run as a script, this module prints the reference generated from the Structs (each
section, each key, its type and its default), for writing new rows::

    python tests/docs/test_config_reference.py
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from fiefdom.daemon import Config

DOC = Path(__file__).resolve().parents[2] / "docs" / "daemon.md"
# Fields of Config that are not settings of the file.
NOT_SETTINGS = {"base_dir": "set by load_config to the configuration file's folder"}

_UNSET = object()  # a field without a plain default (default_factory, or required)


@dataclass(frozen=True)
class Setting:
    """One setting: the section whose table documents it (``jobs.retention``), its
    key there (``completed``, or ``queues.<name>.concurrency``), its type and default;
    ``key`` None stands for a free-form table that only needs its heading."""

    section: str
    key: str | None
    type: str
    default: Any


def _type_name(info: mi.Type) -> str:
    match info:
        case mi.StrType():
            return "string"
        case mi.BoolType():
            return "boolean"
        case mi.IntType():
            return "integer"
        case mi.FloatType():
            return "number"
        case mi.AnyType():
            return "any"
        case mi.NoneType():
            return "unset"
        case mi.LiteralType(values=values):
            return " | ".join(repr(v) for v in values)
        case mi.UnionType(types=types):
            return " | ".join(_type_name(t) for t in types)
        case mi.ListType(item_type=item):
            return f"list of {_type_name(item)}"
        case mi.DictType(value_type=value):
            return f"table of {_type_name(value)}"
        case mi.StructType(cls=cls):
            return cls.__name__
    return type(info).__name__


def _default(field: mi.Field) -> Any:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return _UNSET


def walk(struct: type[msgspec.Struct], section: str = "", prefix: str = "") -> Iterator[Setting]:
    """Every setting of ``struct``: a nested Struct is a section of its own
    (``jobs.retention``), a list of Structs too (``control.tokens``, an array of
    tables), a table of Structs gives keys with ``<name>`` (``queues.<name>.paused``);
    a free-form table at the top gives only its heading (``app.<module>``)."""
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    for field in info.fields:
        if not section and field.name in NOT_SETTINGS:
            continue
        ftype = field.type
        if isinstance(ftype, mi.UnionType):  # an optional Struct is still a Struct
            structs = [t for t in ftype.types if isinstance(t, mi.StructType)]
            ftype = structs[0] if structs else ftype
        name = f"{prefix}{field.name}"
        joined = f"{section}.{name}" if section else name
        match ftype:
            case mi.StructType(cls=cls):
                yield from walk(cls, joined)
            case mi.ListType(item_type=mi.StructType(cls=cls)):
                yield from walk(cls, joined)
            case mi.DictType(value_type=mi.StructType(cls=cls)):
                yield from walk(cls, section, f"{name}.<name>.")
            case mi.DictType(value_type=mi.AnyType()) if not section:
                yield Setting(f"{joined}.<module>", None, _type_name(ftype), _default(field))
            case _:
                yield Setting(section, name, _type_name(ftype), _default(field))


def documented(text: str) -> dict[str, dict[str, str]]:
    """The tables of the Settings part of ``text``: for each section heading
    (``### `[jobs.retention]` ``, ``### `[[control.tokens]]` ``), each row's key and
    its default cell."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    settings_part = False
    for line in text.splitlines():
        if line.startswith("## "):
            settings_part = line.strip() == "## Settings"
            current = None
        elif settings_part and line.startswith("### "):
            name = line[4:].strip().strip("`").strip("[]")
            current = sections.setdefault(name, {})
        elif current is not None and line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            key = re.fullmatch(r"`([^`]+)`", cells[0])
            if key is not None and len(cells) >= 2:
                current[key.group(1)] = cells[1]
    return sections


def _written_default(cell: str) -> tuple[bool, Any]:
    """The default written in a cell when it starts with a TOML value in backticks
    (`` `30.0` ``, `` `"auto"` ``, `` `[]` ``); other cells ("unset", prose) say
    nothing checkable."""
    match = re.match(r"`([^`]+)`", cell)
    if match is None:
        return False, None
    try:
        return True, tomllib.loads(f"v = {match.group(1)}")["v"]
    except tomllib.TOMLDecodeError:
        return False, None


def problems(struct: type[msgspec.Struct], text: str) -> list[str]:
    """What the reference ``text`` misses or gets wrong about the settings of
    ``struct``: one line each."""
    tables = documented(text)
    found: list[str] = []
    for setting in walk(struct):
        heading = f"[{setting.section}]"
        if setting.section not in tables:
            found.append(f"{heading}: no section in the reference ({setting.key or 'a table'})")
            continue
        if setting.key is None:
            continue
        cell = tables[setting.section].get(setting.key)
        if cell is None:
            found.append(
                f"{heading} {setting.key}: not documented "
                f"(type {setting.type}, default {setting.default!r})"
            )
            continue
        checkable, written = _written_default(cell)
        if checkable and setting.default is not _UNSET:
            default = msgspec.to_builtins(setting.default)
            if written != default or type(written) is not type(default):
                found.append(
                    f"{heading} {setting.key}: the reference says the default is "
                    f"{written!r}, the setting's is {default!r}"
                )
    return found


def render(struct: type[msgspec.Struct]) -> str:
    """The reference generated from ``struct``: a table per section, key, type, default."""
    sections: dict[str, list[Setting]] = {}
    for setting in walk(struct):
        sections.setdefault(setting.section, []).append(setting)
    lines: list[str] = []
    for section, settings in sections.items():
        lines += ["", f"### `[{section}]`", "", "| key | type | default |", "| --- | --- | --- |"]
        for setting in settings:
            if setting.key is not None:
                default = "" if setting.default is _UNSET else repr(setting.default)
                lines.append(f"| `{setting.key}` | {setting.type} | {default} |")
    return "\n".join(lines).strip() + "\n"


def test_every_setting_is_documented() -> None:
    """Every field of every section of Config (daemon, store, control and its tokens,
    jobs, jobs.queues, jobs.retention, recorder, cluster, vault, app) has a row in
    docs/daemon.md's settings tables, and no written default disagrees with the code."""
    assert problems(Config, DOC.read_text(encoding="utf-8")) == []


def test_the_walk_reaches_every_section() -> None:
    """The walk goes through nested Structs, tables of Structs and arrays of tables:
    the check covers the sections the issue names, not only the top ones."""
    settings = list(walk(Config))
    sections = {s.section for s in settings}
    assert {
        "daemon",
        "store",
        "control",
        "control.tokens",
        "jobs",
        "jobs.retention",
        "recorder",
        "cluster",
        "vault",
        "app.<module>",
    } <= sections
    keys = {(s.section, s.key) for s in settings}
    assert ("jobs", "queues.<name>.concurrency") in keys
    assert ("control", "max_frame_depth") in keys
    assert all(s.key != "base_dir" for s in settings)


class _Inner(msgspec.Struct, kw_only=True):
    documented_one: int = 1
    forgotten: float = 2.5


class _Outer(msgspec.Struct, kw_only=True):
    inner: _Inner = msgspec.field(default_factory=_Inner)
    level: str = "info"


_FAKE_DOC = """
## Settings

### `[]`

| key | default | meaning |
| --- | --- | --- |
| `level` | `"info"` | how much to say |

### `[inner]`

| key | default | meaning |
| --- | --- | --- |
| `documented_one` | `1` | a documented setting |
"""


def test_an_undocumented_setting_fails_the_check() -> None:
    """Fed a Struct with a field that has no row (``inner.forgotten``), the check
    reports it by section and key; documenting it clears the report."""
    found = problems(_Outer, _FAKE_DOC)
    assert len(found) == 1, found
    assert "[inner] forgotten: not documented" in found[0]
    with pytest.raises(AssertionError):
        assert problems(_Outer, _FAKE_DOC) == []
    fixed = _FAKE_DOC + "| `forgotten` | `2.5` | now documented |\n"
    assert problems(_Outer, fixed) == []


def test_a_wrong_default_fails_the_check() -> None:
    """A default written as a TOML value that is not the field's default is reported."""
    wrong = _FAKE_DOC.replace('`"info"`', '`"debug"`') + "| `forgotten` | `2.5` | x |\n"
    found = problems(_Outer, wrong)
    assert len(found) == 1, found
    assert "level" in found[0]
    assert "'debug'" in found[0]


def test_a_missing_section_fails_the_check() -> None:
    """A section of the Struct with no heading in the reference is reported."""
    text = _FAKE_DOC.split("### `[inner]`")[0]
    found = problems(_Outer, text)
    assert found
    assert all("[inner]: no section" in line for line in found), found


if __name__ == "__main__":
    sys.stdout.write(render(Config))
