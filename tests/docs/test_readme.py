"""The README stays true: its embedding example runs, and its test command is the
one CI runs (CI extracts it from between the test-command markers)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_embedding_example_runs() -> None:
    """The README's Python example runs to completion with exit status 0."""
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README has no python example"
    result = subprocess.run(
        [sys.executable, "-c", blocks[0]], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr


def test_test_command_is_marked_for_ci() -> None:
    """The test command sits between the markers CI reads, and runs pytest."""
    match = re.search(
        r"<!-- test-command -->\n```sh\n(.*?)\n```\n<!-- /test-command -->", README, flags=re.S
    )
    assert match is not None
    assert "pytest" in match.group(1)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci
