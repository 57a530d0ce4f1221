"""A drain tells what it does: progress lines while jobs run (how many, seconds left)
and a summary (finished, given back, cancelled), on the daemon's log and on the
control channel's ``logs`` topic; a drain past ``jobs.drain_timeout`` cancels the
jobs still running and gives them back, as the README says; the daemon's last log
line sums up the stop."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from daemon_harness import DaemonProcess, write_config

import fiefdom
from fiefdom.protocol import Client, JobEvent, LogEvent

pytestmark = pytest.mark.slow

DRAINING = "draining: jobs still running"
DRAINED = "drained: the job engine has stopped"


def _daemon(folder: Path, *, extra: str = "", shutdown_timeout: float = 600.0) -> DaemonProcess:
    config = write_config(
        folder,
        modules=("hosted_app", "drain_gate_app"),
        shutdown_timeout=shutdown_timeout,
        extra=extra,
        log_format="json",
    )
    return DaemonProcess(config)


async def _until_running(client: Client, ids: set[int]) -> None:
    """Return once every job of ``ids`` is running: on job events, and on the jobs'
    states read again whenever no event came for a while (under a hang guard)."""
    async with client.subscribe(["jobs"]) as events:
        running: set[int] = set()
        with anyio.fail_after(60):
            while True:
                running |= {i for i in ids if (await client.job(i)).state == "running"}
                if running >= ids:
                    return
                with anyio.move_on_after(0.5):
                    async for event in events:
                        if isinstance(event, JobEvent) and event.state == "running":
                            running.add(event.job_id)
                        if running >= ids:
                            return


def _log_lines(daemon: DaemonProcess) -> list[dict[str, Any]]:
    lines = []
    for line in daemon.log_path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


async def test_drain_reports_progress_then_finished_and_cancelled(tmp_path: Path) -> None:
    """While a drain waits, the logs topic carries progress lines naming the jobs still
    running and the seconds left; a job that ends meanwhile counts as finished, one
    cut short by `stop --cancel` as cancelled, in the summary that ends the drain and
    in the line that ends the daemon's log."""
    # No pruning job: the counts below are the test's jobs alone.
    daemon = _daemon(tmp_path, extra="[jobs.retention]\nenabled = false\n").start()
    try:
        progress: list[dict[str, Any]] = []
        async with (
            fiefdom.connect(daemon.url, token=daemon.token) as client,
            client.subscribe(["logs"]) as logs,
        ):
            gate = (await client.enqueue("gate", {"name": "a"})).id
            nap = (await client.enqueue("nap", {"seconds": 300.0})).id
            await _until_running(client, {gate, nap})
            async with anyio.create_task_group() as tg:
                # The drain request waits for the drain; it is given up below (the
                # drain goes on without it).
                tg.start_soon(client.drain)
                with anyio.fail_after(60):
                    async for event in logs:
                        if not isinstance(event, LogEvent) or event.event != DRAINING:
                            continue
                        progress.append(event.fields)
                        if event.fields["running"] == 2:
                            # Let the gated job finish; the nap runs on.
                            (daemon.data / "gates" / "a").touch()
                        elif event.fields["running"] == 1:
                            break
                tg.cancel_scope.cancel()
        async with fiefdom.connect(daemon.url, token=daemon.token) as client:
            await client.stop_daemon("cancel")
        assert daemon.wait(60) == 0, daemon.log()
        assert progress[0]["running"] == 2
        assert all(0 < p["seconds_left"] <= 600 for p in progress)
        lines = _log_lines(daemon)
        (drained,) = [line for line in lines if line["event"] == DRAINED]
        assert (drained["finished"], drained["given_back"], drained["cancelled"]) == (1, 0, 1)
        stopped = lines[-1]
        assert stopped["event"] == "daemon stopped"
        assert (stopped["jobs_run"], stopped["finished"], stopped["cancelled"]) == (1, 1, 1)
        assert stopped["stop_took"] >= 0
    finally:
        daemon.stop()


async def test_drain_past_its_deadline_cancels_and_gives_back(tmp_path: Path) -> None:
    """`drain` with `jobs.drain_timeout` set: a job still running at the deadline is
    cancelled and given back to its queue (no attempt used), the summary says so, and
    the daemon stays up, draining, until it is stopped."""
    # No pruning job: the counts below are the test's job alone.
    extra = "[jobs]\ndrain_timeout = 0.5\n\n[jobs.retention]\nenabled = false\n"
    daemon = _daemon(tmp_path, extra=extra).start()
    try:
        async with fiefdom.connect(daemon.url, token=daemon.token) as client:
            nap = (await client.enqueue("nap", {"seconds": 300.0})).id
            await _until_running(client, {nap})
            await client.drain(timeout=60)
            job = await client.job(nap)
            assert (job.state, job.attempt) == ("available", 0)
            assert (await client.status()).draining is True
        (drained,) = [line for line in _log_lines(daemon) if line["event"] == DRAINED]
        assert (drained["finished"], drained["given_back"], drained["cancelled"]) == (0, 0, 1)
        assert daemon.proc is not None
        assert daemon.proc.poll() is None
    finally:
        daemon.stop()


async def test_sigterm_ends_the_log_with_one_summary_line(tmp_path: Path) -> None:
    """After SIGTERM the daemon's last line says what ran, what the stop finished, gave
    back and cancelled, and how long it took."""
    daemon = _daemon(tmp_path).start()
    try:
        async with fiefdom.connect(daemon.url, token=daemon.token) as client:
            gate = (await client.enqueue("gate", {"name": "b"})).id
            await _until_running(client, {gate})
        (daemon.data / "gates" / "b").touch()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.log()
        last = _log_lines(daemon)[-1]
        assert last["event"] == "daemon stopped"
        assert last["name"] == "test-daemon"
        assert last["jobs_run"] >= 1
        assert set(last) >= {"finished", "given_back", "cancelled", "stop_took", "uptime"}
    finally:
        daemon.stop()
