"""Fixtures of the daemon tests: a real daemon subprocess per module."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
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
