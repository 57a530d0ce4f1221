"""docs/cli.md is the command line's reference generated from its parser
(``fiefdom.cli._reference``), and stays so: it must equal what the parser renders now.
Every command, action and argument has a help text, and no help text carries reST
markup (it is printed by ``--help`` and copied into Markdown as it is)."""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fiefdom.cli._main import _parser
from fiefdom.cli._reference import REGENERATE, argument_helps, command_helps, render

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "cli.md"
REST = re.compile(r"``|:(?:class|func|meth|attr|mod|exc|data|obj|ref|py:\w+):`|^\.\. \w+::", re.M)


def stale(doc: str, rendered: str) -> str | None:
    """None when ``doc`` is ``rendered``; else what differs, with the command that
    regenerates the file."""
    if doc == rendered:
        return None
    diff = difflib.unified_diff(
        doc.splitlines(), rendered.splitlines(), "docs/cli.md", "generated", lineterm="", n=1
    )
    shown = "\n".join(list(diff)[:40])
    return f"docs/cli.md is stale: regenerate it with `{REGENERATE}`\n{shown}"


def missing_help(parser: argparse.ArgumentParser) -> list[str]:
    """The commands and arguments of ``parser`` without a help text."""
    helps = {**command_helps(parser), **argument_helps(parser)}
    return sorted(name for name, text in helps.items() if not text.strip())


def rest_markup(parser: argparse.ArgumentParser) -> list[str]:
    """The commands and arguments whose help text (or description) holds reST markup."""
    helps = {**command_helps(parser), **argument_helps(parser)}
    return sorted(name for name, text in helps.items() if REST.search(text))


def subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    """The parser of the command at ``path`` (``"jobs", "ls"``)."""
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_the_reference_is_current() -> None:
    """docs/cli.md is exactly what the parser renders (the message says how to
    regenerate it)."""
    problem = stale(DOC.read_text(encoding="utf-8"), render())
    assert problem is None, problem


def test_the_regeneration_command_prints_the_reference() -> None:
    """``python -m fiefdom.cli._reference`` prints what ``render()`` returns, so the
    command the failure names does regenerate the file."""
    result = subprocess.run(
        [sys.executable, "-m", "fiefdom.cli._reference"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == render()


def test_a_new_option_makes_the_reference_stale() -> None:
    """The comparison fires: a parser with one more option renders a reference that
    differs from the current one, and the report names the option and the command
    that regenerates the file."""
    current = render()
    parser = _parser()
    subparser(parser, "jobs", "ls").add_argument("--extra", help="an option added after the doc")
    problem = stale(current, render(parser))
    assert problem is not None
    assert "--extra" in problem
    assert REGENERATE in problem
    with pytest.raises(AssertionError):
        assert stale(current, render(parser)) is None


def test_the_reference_covers_every_command_and_argument() -> None:
    """Each command's path appears as a heading, and each argument of each command in
    its table: nothing of the parser is left out of the rendering."""
    text = render()
    for path in command_helps(_parser()):
        assert f"## `{path}`\n" in text, path
    for key in argument_helps(_parser()):
        if key.endswith("(description)"):
            continue
        flag = key.rsplit(" ", 1)[1].rstrip(",")
        assert f"`{flag}`" in text, key


def test_the_reference_does_not_depend_on_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendering is the same for a narrow and a wide terminal."""
    monkeypatch.setenv("COLUMNS", "40")
    narrow = render()
    monkeypatch.setenv("COLUMNS", "300")
    assert render() == narrow


def test_every_command_and_argument_has_help() -> None:
    """Every command, action, positional and option of the command line says what it
    is for."""
    assert missing_help(_parser()) == []


def test_no_help_text_holds_rest_markup() -> None:
    """No help text or description of the command line holds reST markup (double
    backticks, ``:class:``-style roles, directives)."""
    assert rest_markup(_parser()) == []


def test_the_help_checks_fire() -> None:
    """An option without help is reported by ``missing_help``, one whose help holds
    reST markup by ``rest_markup``; a command without help is reported too."""
    parser = _parser()
    ls = subparser(parser, "jobs", "ls")
    ls.add_argument("--bare")
    ls.add_argument("--marked", help="see :func:`fiefdom.open_store` and ``url``")
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action.add_parser("silent")
    assert missing_help(parser) == ["fiefdom jobs ls --bare", "fiefdom silent"]
    assert rest_markup(parser) == ["fiefdom jobs ls --marked"]
