"""The daemon takes every ``fiefdom.StopMode`` in ``request_stop`` (the control server's
port names only drain and cancel, the library's type has four): ``exit`` and
``restart`` drain, as for any component without messages of its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_harness import write_config

from fiefdom import StopMode
from fiefdom.daemon import Daemon, load_config

MODES: list[tuple[StopMode, StopMode]] = [
    ("drain", "drain"),
    ("cancel", "cancel"),
    ("exit", "drain"),
    ("restart", "drain"),
]


@pytest.mark.parametrize(("mode", "stops_as"), MODES, ids=[mode for mode, _ in MODES])
async def test_request_stop_takes_every_stop_mode(
    tmp_path: Path, mode: StopMode, stops_as: StopMode
) -> None:
    """request_stop(mode) on a running daemon (in this process) makes it unready and
    asks for a stop in the mode that fits: cancel cancels, the others drain."""
    config = load_config(write_config(tmp_path), environ={})
    async with Daemon(config) as daemon:
        daemon.request_stop(mode)
        assert await daemon.wait_stop_request() == stops_as
        assert daemon.draining
