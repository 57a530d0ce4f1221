"""A domain's keys paused on their own, as ``fiefdom status`` shows them from a real
daemon: listed by name in the tree and in the targets table while paused, gone once
resumed, and bounded (the first few by name and how many in all)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import fiefdom as fiefdom_client

sys.path.insert(0, str(Path(__file__).parent / "daemon"))

from daemon_harness import DaemonProcess, write_config

FIEFDOM = str(Path(sys.executable).parent / "fiefdom")


def fiefdom(*args: str) -> str:
    """Run the command line and return its output (it must succeed)."""
    environ = {k: v for k, v in os.environ.items() if k != "FIEFDOM_TOKEN"}
    result = subprocess.run(
        [FIEFDOM, *args], capture_output=True, text=True, timeout=60, env=environ
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon hosting the test app (its ``accounts`` domain), shared by the module."""
    with DaemonProcess(write_config(tmp_path_factory.mktemp("paused-keys"))) as proc:
        yield proc


def _accounts(tree: dict[str, Any]) -> dict[str, Any]:
    """The ``accounts`` domain's node of a status tree."""
    if tree.get("kind") == "domain" and tree["path"].endswith("/accounts"):
        return tree
    for child in tree.get("children", []):
        found = _accounts(child)
        if found:
            return found
    return {}


def _line(output: str, first: str) -> str:
    """The line of a printed table whose first cell is ``first``."""
    return next(line for line in output.splitlines() if line.split()[:1] == [first])


def _keys(daemon: DaemonProcess, keys: list[str], *, pause: bool) -> None:
    """Pause (or resume) ``keys`` of the accounts domain through the Python client."""

    async def run() -> None:
        with anyio.fail_after(60):
            async with fiefdom_client.connect(daemon.url, token=daemon.token) as client:
                for key in keys:
                    if pause:
                        await client.pause_actor("accounts", key=key)
                    else:
                        await client.resume_actor("accounts", key=key)

    anyio.run(run)


def test_a_paused_key_is_listed_until_resumed(daemon: DaemonProcess) -> None:
    """After ``actors pause accounts --key K``, ``status`` names K in the domain's row
    of the tree and in the accounts row of the targets table (PAUSED: keys: K), as
    ``actors ls`` does, and
    --json carries it with its count; after ``actors resume``, K is gone from all."""
    config = ("--config", str(daemon.config))
    fiefdom("actors", "pause", "accounts", "--key", "alice", *config)
    status = fiefdom("status", *config)
    assert "(paused keys: alice)" in _line(status, "test-daemon/accounts")
    assert "keys: alice" in _line(status, "accounts")
    assert "keys: alice" in _line(fiefdom("actors", "ls", *config), "accounts")
    node = _accounts(json.loads(fiefdom("status", "--json", *config))["tree"])
    assert node["paused_keys"] == ["alice"]
    assert node["paused_keys_total"] == 1

    fiefdom("actors", "resume", "accounts", "--key", "alice", *config)
    status = fiefdom("status", *config)
    assert "paused" not in _line(status, "test-daemon/accounts")
    assert _line(status, "accounts").split()[:3] == ["accounts", "domain", "no"]
    node = _accounts(json.loads(fiefdom("status", "--json", *config))["tree"])
    assert node["paused_keys"] == []
    assert node["paused_keys_total"] == 0


def test_many_paused_keys_are_listed_with_their_count(daemon: DaemonProcess) -> None:
    """With 105 keys paused, the domain's statistics list the first 100 (sorted) and
    count all 105; ``status`` prints the first ten and "(105 in all)"."""
    config = ("--config", str(daemon.config))
    keys = [f"k{n:03d}" for n in range(105)]
    _keys(daemon, keys, pause=True)
    try:
        node = _accounts(json.loads(fiefdom("status", "--json", *config))["tree"])
        assert node["paused_keys"] == keys[:100]
        assert node["paused_keys_total"] == 105
        status = fiefdom("status", *config)
        row = _line(status, "test-daemon/accounts")
        assert "k000, k001" in row
        assert "k009, ... (105 in all)" in row
        assert "k010" not in row
    finally:
        _keys(daemon, keys, pause=False)
    node = _accounts(json.loads(fiefdom("status", "--json", *config))["tree"])
    assert node["paused_keys_total"] == 0
