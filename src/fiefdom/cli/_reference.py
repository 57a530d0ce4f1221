"""The command line's reference in Markdown, generated from its parser: every command
and action with its usage, its description, and each argument with its help text
and default. The text depends on nothing but the parser (no terminal width, no
version), so that a test can hold ``docs/cli.md`` to it::

    python -m fiefdom.cli._reference > docs/cli.md
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence

from ._main import _parser

REGENERATE = "python -m fiefdom.cli._reference > docs/cli.md"

_INTRO = """\
# Command line reference

<!-- Generated from the parser by `{regenerate}`: edit the help texts in
src/fiefdom/cli/, not this file. tests/docs/test_cli_reference.py fails when it is stale. -->

{description}

`fiefdom COMMAND [ACTION] [arguments]`, also `python -m fiefdom`. Every command
takes the global options below, before or after its name, and `-h` (`--help`).
Output is a table by default and JSON with `--json`. An error is one line on stderr
and exit status 1; `fiefdom serve` exits with status 2 when it cannot start.

## Global options
"""


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The Markdown reference of ``parser`` (default: the ``fiefdom`` command line)."""
    root = parser if parser is not None else _parser()
    shared = _global_actions(root)
    out = [_INTRO.format(regenerate=REGENERATE, description=_sentence(root.description or ""))]
    out.append(_arguments(shared))
    out.append(_command_list(("fiefdom",), _subcommands(root), "command"))
    for path, sub, text in _commands(root):
        level = len(path)
        own = [a for a in _arguments_of(sub) if not _is_global(a, shared)]
        title = f"`{' '.join(path)}`"
        out.append(_section(level, title, text, sub, own))
        if own:
            out.append(_arguments(own))
        children = _subcommands(sub)
        if children:
            out.append(_command_list(path, children))
    return "\n".join(part.rstrip("\n") + "\n" for part in out if part)


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ("fiefdom",)
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Every command and action under ``parser``, depth first in the order they were
    added: its path (``("fiefdom", "jobs", "ls")``), its parser and its help text."""
    for name, sub, text in _subcommands(parser):
        yield (*path, name), sub, text
        yield from _commands(sub, (*path, name))


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    found: list[tuple[str, argparse.ArgumentParser, str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, sub, helps.get(name, "")))
    return found


def command_helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each command's and action's help text by its path (``"fiefdom jobs ls"``)."""
    return {" ".join(path): text for path, _, text in _commands(parser)}


def argument_helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each argument's help text, keyed ``"fiefdom jobs ls --state"`` (the global
    options under ``"fiefdom"``), and each command's description."""
    found = {f"fiefdom {_name(a)}": _help(a) for a in _arguments_of(parser)}
    for path, sub, _ in _commands(parser):
        prefix = " ".join(path)
        if sub.description:
            found[f"{prefix} (description)"] = sub.description
        for action in _arguments_of(sub):
            found[f"{prefix} {_name(action)}"] = _help(action)
    return found


def _arguments_of(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments a reader passes: not ``-h``, ``--version`` or the subcommands."""
    return [
        a
        for a in parser._actions
        if not isinstance(
            a, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction
        )
    ]


def _global_actions(root: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in _arguments_of(root) if a.option_strings]


def _is_global(action: argparse.Action, shared: Sequence[argparse.Action]) -> bool:
    """Whether ``action`` is one of the global options, repeated on a command (the
    same flags, destination and help; ``call --json`` is its own)."""
    return any(
        a.option_strings == action.option_strings
        and a.dest == action.dest
        and a.help == action.help
        for a in shared
    )


def _section(
    level: int,
    title: str,
    text: str,
    parser: argparse.ArgumentParser | None,
    own: Sequence[argparse.Action],
) -> str:
    lines = [f"{'#' * level} {title}", ""]
    if parser is not None:
        lines += ["```text", _usage(parser, own), "```", ""]
    description = parser.description if parser is not None and parser.description else text
    if description:
        lines += [_sentence(description), ""]
    return "\n".join(lines)


def _usage(parser: argparse.ArgumentParser, own: Sequence[argparse.Action]) -> str:
    """A usage line written out here (argparse wraps its own to the terminal)."""
    words = [parser.prog]
    options = [a for a in own if a.option_strings]
    positionals = [a for a in own if not a.option_strings]
    for action in options:
        flag = _long(action)
        word = flag if action.nargs == 0 else f"{flag} {_metavar(action)}"
        words.append(word if action.required else f"[{word}]")
    if _subcommands(parser):
        words.append("ACTION" if parser.prog.count(" ") else "COMMAND")
    for action in positionals:
        words.append(_positional(action))
    if parser.prog != "fiefdom":
        words.append("[global options]")
    return " ".join(words)


def _long(action: argparse.Action) -> str:
    """The option's first long flag (``--output`` of ``-o, --output``)."""
    return next((f for f in action.option_strings if f.startswith("--")), action.option_strings[0])


def _metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, str):
        return action.metavar
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def _positional(action: argparse.Action) -> str:
    name = _metavar(action)
    match action.nargs:
        case "?":
            return f"[{name}]"
        case "+":
            return f"{name} [{name} ...]"
        case "*":
            return f"[{name} ...]"
    return name


def _name(action: argparse.Action) -> str:
    return ", ".join(action.option_strings) if action.option_strings else _metavar(action)


def _help(action: argparse.Action) -> str:
    """The help text as ``--help`` prints it (``%(default)s`` and the like filled in)."""
    text = action.help
    if not text or text is argparse.SUPPRESS:
        return ""
    params = {**vars(action), "prog": ""}
    if isinstance(params.get("choices"), list | tuple):
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    return text % params if "%" in text else text


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    default = action.default
    if default is None or default is argparse.SUPPRESS or action.nargs == 0:
        return ""
    if isinstance(default, list | tuple) and not default:
        return ""
    return f"`{default}`"


def _arguments(actions: Sequence[argparse.Action]) -> str:
    rows = ["| argument | meaning | default |", "| --- | --- | --- |"]
    for action in actions:
        names = ", ".join(f"`{n}`" for n in action.option_strings) or f"`{_metavar(action)}`"
        if action.option_strings and action.nargs != 0:
            names += f" `{_metavar(action)}`"
        if not action.option_strings and action.nargs in ("?", "*"):
            names += " (optional)"
        meaning = _help(action)
        if isinstance(action, argparse._AppendAction):
            meaning += " (repeatable)"
        rows.append(f"| {_cell(names)} | {_cell(meaning)} | {_cell(_default(action))} |")
    return "\n".join(rows) + "\n"


def _command_list(
    path: Sequence[str], children: Sequence[tuple[str, object, str]], what: str = "action"
) -> str:
    rows = [f"| {what} | what it does |", "| --- | --- |"]
    for name, _, text in children:
        rows.append(f"| [`{name}`](#{_anchor([*path, name])}) | {_cell(text)} |")
    return "\n".join(rows) + "\n"


def _anchor(path: Sequence[str]) -> str:
    """The anchor GitHub gives the heading of ``path`` (backticks and spaces)."""
    return "-".join(path)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", ":", "?", "!")) else text + "."


def main(argv: Sequence[str] | None = None) -> int:
    """Print the reference on stdout."""
    if argv is None:
        argv = sys.argv[1:]
    if argv:
        print(f"usage: {REGENERATE}", file=sys.stderr)
        return 2
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
