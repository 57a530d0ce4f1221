"""A ping flood against a real daemon, measured from a well-behaved client: its
``jobs.list`` latencies alone and while one other connection floods pings, printed as
figures (GUARANTEES 004/7: fairness is fixed and asserted in tests/protocol; here it is
only measured, so that runs can be compared, and nothing about speed is asserted)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from chaos_helpers import Control, control, daemon_config, logged_errors, ms, percentile
from daemon_harness import DaemonProcess

SAMPLES = 200
HERE = Path(__file__).resolve().parent


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon hosting the test app on SQLite."""
    proc = DaemonProcess(daemon_config(tmp_path / "daemon", None))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


async def _latencies(ctl: Control) -> list[float]:
    out = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        reply = await ctl.request("jobs.list", limit=10)
        out.append(time.perf_counter() - started)
        assert reply["type"] == "jobs.reply", reply
    return out


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_ping_flood_measured_from_a_well_behaved_client(
    daemon: DaemonProcess, figures: Any
) -> None:
    """A well-behaved client's latencies alone and under another's ping flood are printed."""
    async with control(daemon.url, daemon.token) as ctl:
        await _latencies(ctl)  # warm up: first requests pay for imports and caches
        solo = await _latencies(ctl)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        async with await anyio.open_process(
            [sys.executable, str(HERE / "chaos_flooder.py"), daemon.ws_url, daemon.token],
            env=env,
            stderr=None,  # inherited: a flooder that fails shows its traceback
        ) as flooder:
            assert flooder.stdout is not None
            assert flooder.stdin is not None
            output = b""
            while b"flooding" not in output:
                output += await flooder.stdout.receive()
            flooded = await _latencies(ctl)
            await flooder.stdin.aclose()
            async for chunk in flooder.stdout:
                output += chunk
        answered = json.loads(output.decode().splitlines()[-1])
    errors = logged_errors(daemon)
    figures(
        samples=SAMPLES,
        solo_p50_ms=ms(percentile(solo, 50)),
        solo_p99_ms=ms(percentile(solo, 99)),
        flooded_p50_ms=ms(percentile(flooded, 50)),
        flooded_p99_ms=ms(percentile(flooded, 99)),
        p99_ratio=round(percentile(flooded, 99) / percentile(solo, 99), 2),
        flood_pings_answered=answered["pong"],
        flood_other_answers=answered["other"],
    )
    assert answered["pong"] > 0
    assert not errors, "\n".join(errors[:20])
