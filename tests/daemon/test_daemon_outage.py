"""A database outage in the daemon's log: a private PostgreSQL instance (its own data
folder and port, never the shared server) is stopped under a running daemon, then
started again. The log says once that the outage began and once that the database is
back; asyncpg's pool, which retries its connections all along, adds no traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from daemon_harness import DaemonProcess, write_config

import fiefdom

# The private server of the chaos suite: initdb and pg_ctl, run as the postgres user
# when the tests run as root, on a free port, in a folder of its own.
sys.path.insert(0, str(Path(__file__).parent.parent / "chaos"))

from chaos_helpers import PrivatePostgres, running_private_postgres, wait_until

pytestmark = pytest.mark.slow

BEGAN = "database outage began"
BACK = "database is back"
ATTEMPT = "database reconnect failed"


private_postgres = pytest.fixture(running_private_postgres, name="private_postgres")


def _lines(daemon: DaemonProcess, text: str) -> list[str]:
    return [line for line in daemon.log_path.read_text().splitlines() if text in line]


async def _recorded(daemon: DaemonProcess, event: str) -> int:
    """How many events named ``event`` the daemon's flight recorder holds (debug
    included, whatever the log level)."""
    async with fiefdom.connect(daemon.url, token=daemon.token) as client:
        reply = await client.dump()
    lines = (await anyio.Path(reply.path).read_text()).splitlines()
    return sum(json.loads(line)["event"] == event for line in lines)


@pytest.mark.parametrize("stop_mode", ["fast", "immediate"])
async def test_an_outage_logs_one_line_as_it_begins_and_one_as_it_ends(
    private_postgres: PrivatePostgres, tmp_path: Path, stop_mode: str
) -> None:
    """PostgreSQL stopped (cleanly, or as a crash), then started, under a daemon: one
    warning when the outage begins, one when the database is back, and no traceback,
    though asyncpg's pool failed to reconnect several times meanwhile (each attempt a
    debug event)."""
    server = private_postgres
    config = write_config(tmp_path, extra=f'[store]\nurl = "{server.url}"\n')
    daemon = DaemonProcess(config).start()
    try:

        async def pool_failed_twice() -> bool:
            # Each failed attempt of the pool would have been a traceback in the log
            # (the first on losing its connections, the next a second later).
            return _noisy(daemon) or await _recorded(daemon, ATTEMPT) >= 2

        await anyio.to_thread.run_sync(server.stop, stop_mode)
        await wait_until(pool_failed_twice, what="two failed reconnects of the pool", poll=0.2)
        await wait_until(
            lambda: bool(_lines(daemon, BEGAN)) or _noisy(daemon), what="the outage's line"
        )
        await anyio.to_thread.run_sync(server.start)
        await wait_until(
            lambda: bool(_lines(daemon, BACK)) or _noisy(daemon), what="the database back"
        )
        await wait_until(lambda: daemon.http("/readyz")[0] == 200, what="/readyz 200")
    finally:
        daemon.stop()
    assert not _noisy(daemon), daemon.log()
    assert len(_lines(daemon, BEGAN)) == 1, daemon.log()
    assert len(_lines(daemon, BACK)) == 1, daemon.log()
    (began,) = _lines(daemon, BEGAN)
    assert "[warning" in began
    assert "url=postgresql://postgres@127.0.0.1" in began


def _noisy(daemon: DaemonProcess) -> bool:
    text = daemon.log_path.read_text()
    return "Traceback" in text or "Failed to restore the pool connection floor" in text
