"""Fixtures of the protocol tests: a real daemon subprocess per module (the harness
lives with the daemon tests and is shared from there)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "daemon"))

from daemon_harness import APP_DIR, DaemonProcess, write_config

# The hosted test app is imported by the tests too (its message types).
sys.path.insert(0, str(APP_DIR))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon hosting the test app, shared by the tests of one module."""
    proc = DaemonProcess(write_config(tmp_path_factory.mktemp("daemon")))
    try:
        yield proc.start()
    finally:
        proc.stop()
