"""docs/protocol.schema.json and docs/protocol.md stay true to the code: the schema file
is the one ``/schema`` serves (generated from the wire types), the roles table is the
one generated from the request union (and so names each request's role), the error
codes listed are those of ``ErrorCode``, and both Python examples run against a real
daemon and print what their comments say."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from fiefdom.protocol import REQUIRED_ROLE, ClientMessage, ErrorCode, json_schema
from fiefdom.protocol._reference import (
    REGENERATE_ROLES,
    REGENERATE_SCHEMA,
    roles_table,
    schema_text,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

from daemon_harness import DaemonProcess, write_config

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCHEMA = DOCS / "protocol.schema.json"
GUIDE = DOCS / "protocol.md"


def block(text: str, marker: str) -> str:
    """The text between ``<!-- marker -->`` and ``<!-- /marker -->``."""
    found = re.search(rf"<!-- {marker} -->\n(.*?)<!-- /{marker} -->", text, flags=re.S)
    assert found is not None, f"docs/protocol.md lost its {marker} block"
    return found.group(1)


def documented_roles(text: str) -> dict[str, str]:
    """Each request type of the roles table with the role its row names."""
    rows = re.findall(r"^\| `([a-z_.]+)` \| (\w+) \|", block(text, "roles"), flags=re.M)
    return dict(rows)


def documented_codes(text: str) -> set[str]:
    """The error codes of the error-codes table."""
    return set(re.findall(r"^\| `([a-z_]+)` \|", block(text, "error-codes"), flags=re.M))


def roles_problem(text: str) -> str | None:
    """What is wrong with the roles table of ``text``, naming the command that
    regenerates it; None when it is the generated one."""
    if block(text, "roles") == roles_table():
        return None
    return f"the roles table of docs/protocol.md is stale: put the output of `{REGENERATE_ROLES}`"


def code_roles() -> dict[str, str]:
    return {str(t.__struct_config__.tag): REQUIRED_ROLE[t] for t in typing.get_args(ClientMessage)}


def test_the_schema_file_is_the_generated_schema() -> None:
    """docs/protocol.schema.json is ``json_schema()`` as ``/schema`` serves it (the
    message names the regeneration command)."""
    text = SCHEMA.read_text(encoding="utf-8")
    assert text == schema_text(), f"docs/protocol.schema.json is stale: run `{REGENERATE_SCHEMA}`"
    assert json.loads(text) == json_schema()


def test_the_schema_regeneration_command_prints_the_schema() -> None:
    """``python -m fiefdom.protocol._reference schema`` prints the file's content, and
    ``roles`` the roles table."""
    for what, expected in (("schema", schema_text()), ("roles", roles_table())):
        result = subprocess.run(
            [sys.executable, "-m", "fiefdom.protocol._reference", what],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected


def test_the_roles_table_is_the_generated_one() -> None:
    """The table between the roles markers is the generated table, and so each row names
    the role its request declares; every request of the union has a row."""
    text = GUIDE.read_text(encoding="utf-8")
    problem = roles_problem(text)
    assert problem is None, problem
    assert documented_roles(text) == code_roles()


def test_a_wrong_role_in_the_table_is_caught() -> None:
    """The roles check fires: a row whose role is changed (``jobs.prune`` as
    ``operate``) is reported, and so is a missing row."""
    text = GUIDE.read_text(encoding="utf-8")
    changed = text.replace("| `jobs.prune` | admin |", "| `jobs.prune` | operate |")
    assert changed != text
    problem = roles_problem(changed)
    assert problem is not None
    assert REGENERATE_ROLES in problem
    assert documented_roles(changed) != code_roles()
    dropped = re.sub(r"^\| `dump` \|.*\n", "", text, flags=re.M)
    assert roles_problem(dropped) is not None


def test_the_error_codes_are_those_of_the_code() -> None:
    """The error-codes table lists every ``ErrorCode`` and nothing else."""
    assert documented_codes(GUIDE.read_text(encoding="utf-8")) == {str(c) for c in ErrorCode}


def test_a_missing_error_code_is_caught() -> None:
    """The error-codes check fires: a table without ``rate_limited`` differs from the
    codes."""
    text = GUIDE.read_text(encoding="utf-8")
    dropped = re.sub(r"^\| `rate_limited` \|.*\n", "", text, flags=re.M)
    assert dropped != text
    with pytest.raises(AssertionError):
        assert documented_codes(dropped) == {str(c) for c in ErrorCode}


def run_example(marker: str, folder: Path) -> str:
    """Run the guide's example ``marker`` from ``folder`` (a daemon's configuration
    folder); its stdout."""
    code = re.search(r"```python\n(.*?)```", block(GUIDE.read_text(encoding="utf-8"), marker), re.S)
    assert code is not None
    result = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_examples_run_against_a_daemon(tmp_path: Path) -> None:
    """Against a real daemon, run from its configuration's folder: the client example
    prints the daemon's name and the refused request, the raw websocket example the
    welcome, the queues and the refused frame as its comments say; the daemon's
    ``/schema`` is the published file."""
    with DaemonProcess(write_config(tmp_path, modules=())) as daemon:
        status, body = daemon.http("/schema")
        assert status == 200
        assert json.loads(body) == json.loads(SCHEMA.read_text(encoding="utf-8"))
        client = run_example("client-example", tmp_path).splitlines()
        assert client[0] == "test-daemon ready"
        assert "0 discarded jobs" in client
        assert client[-1] == "not_found no job 123456789"
        raw = run_example("raw-example", tmp_path).splitlines()
    assert raw == [
        "welcome admin",
        "['default', 'fiefdom']",
        "invalid_message {'path': '$.job_id'}",
    ]
