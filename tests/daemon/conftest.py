"""Fixtures of the daemon tests: a real daemon subprocess per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from daemon_harness import DaemonProcess, write_config


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon hosting the test app, shared by the tests of one module."""
    proc = DaemonProcess(write_config(tmp_path_factory.mktemp("daemon")))
    try:
        yield proc.start()
    finally:
        proc.stop()
