"""Signals on the real daemon: SIGTERM drains (running jobs finish, or past the
deadline are cancelled and given back), a second signal cancels at once, the
process exits 0, and after a restart every job ends completed."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import anyio
import pytest
from daemon_harness import READY_DEADLINE, DaemonProcess, write_config

import fiefdom
from fiefdom.protocol import JobEvent
from fiefdom.storage import open_store

pytestmark = pytest.mark.slow


async def _start_naps(daemon: DaemonProcess, seconds: float, count: int) -> list[int]:
    """Enqueue ``count`` naps and return once every one of them is running."""
    async with (
        fiefdom.connect(daemon.url, token=daemon.token) as client,
        client.subscribe(["jobs"]) as events,
    ):
        ids = [(await client.enqueue("nap", {"seconds": seconds})).id for _ in range(count)]
        running: set[int] = set()
        async for event in events:
            if isinstance(event, JobEvent) and event.state == "running":
                running.add(event.job_id)
            if running >= set(ids):
                return ids
    raise AssertionError("the event stream ended before the naps ran")


async def _states(daemon: DaemonProcess, ids: list[int]) -> dict[int, str]:
    async with fiefdom.connect(daemon.url, token=daemon.token) as client:
        return {job_id: (await client.job(job_id)).state for job_id in ids}


async def _until_completed(daemon: DaemonProcess, ids: list[int], deadline: float = 30) -> None:
    """Wait (on job events, under a deadline) until every job is completed."""
    async with (
        fiefdom.connect(daemon.url, token=daemon.token) as client,
        client.subscribe(["jobs"]) as events,
    ):
        # Subscribed first, then read: a completion between the two is not missed.
        pending = {job_id for job_id in ids if (await client.job(job_id)).state != "completed"}
        if not pending:
            return
        with anyio.fail_after(deadline):
            async for event in events:
                if isinstance(event, JobEvent) and event.state == "completed":
                    pending.discard(event.job_id)
                if not pending:
                    return


async def _stored_states(daemon: DaemonProcess, ids: list[int]) -> set[str]:
    """The jobs' states as the database holds them while the daemon is down."""
    async with open_store(f"sqlite:///{daemon.data / 'fiefdom.db'}") as store:
        jobs = [await store.get_job(job_id) for job_id in ids]
    return {str(job.state) for job in jobs if job is not None}


def _daemon(folder: Path, shutdown_timeout: float) -> DaemonProcess:
    return DaemonProcess(write_config(folder, shutdown_timeout=shutdown_timeout))


async def test_sigterm_lets_running_jobs_finish_and_exits_zero(tmp_path: Path) -> None:
    """SIGTERM while jobs run: they finish within the deadline and the exit code is 0."""
    daemon = _daemon(tmp_path, shutdown_timeout=30.0).start()
    try:
        ids = await _start_naps(daemon, seconds=1.0, count=4)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.log()
        assert "draining" in daemon.log()
        assert await _stored_states(daemon, ids) == {"completed"}
        daemon.start()
        assert set((await _states(daemon, ids)).values()) == {"completed"}
    finally:
        daemon.stop()


async def test_sigterm_past_the_deadline_gives_jobs_back(tmp_path: Path) -> None:
    """Jobs running past the shutdown deadline are cancelled, given back, and complete
    after a restart; the exit code is 0."""
    daemon = _daemon(tmp_path, shutdown_timeout=0.5).start()
    try:
        ids = await _start_naps(daemon, seconds=300.0, count=3)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.log()
        # Cancelled at the deadline and given back to the queue, not lost or failed.
        assert await _stored_states(daemon, ids) == {"available"}
        daemon.start()
        await _until_completed(daemon, ids)
        assert set((await _states(daemon, ids)).values()) == {"completed"}
    finally:
        daemon.stop()


async def test_second_signal_cancels_at_once(tmp_path: Path) -> None:
    """A second SIGINT cancels running jobs without waiting for the long deadline."""
    daemon = _daemon(tmp_path, shutdown_timeout=600.0).start()
    try:
        ids = await _start_naps(daemon, seconds=300.0, count=2)
        daemon.signal(signal.SIGINT)
        # The second signal must reach a daemon that is already draining.
        with anyio.fail_after(30):
            # Polling the log for a condition, under a deadline (no event to wait on).
            while "signal received: draining" not in daemon.log():  # noqa: ASYNC110
                await anyio.sleep(0.02)
        daemon.signal(signal.SIGINT)
        assert daemon.wait(60) == 0, daemon.log()
        assert "second signal received" in daemon.log()
        assert await _stored_states(daemon, ids) == {"available"}
        daemon.start()
        await _until_completed(daemon, ids)
    finally:
        daemon.stop()


async def test_stop_request_over_the_channel_exits_zero(tmp_path: Path) -> None:
    """An admin "stop" drains and exits 0, like SIGTERM."""
    daemon = _daemon(tmp_path, shutdown_timeout=30.0).start()
    try:
        async with fiefdom.connect(daemon.url, token=daemon.token) as client:
            await client.stop_daemon()
        assert daemon.wait(60) == 0, daemon.log()
    finally:
        daemon.stop()


async def test_drain_leaves_no_queue_paused_and_a_restart_runs_jobs(tmp_path: Path) -> None:
    """drain stops only this daemon claiming: no queue is left paused; a restart runs jobs."""
    daemon = _daemon(tmp_path, shutdown_timeout=30.0).start()
    try:
        ids = await _start_naps(daemon, seconds=0.2, count=2)
        async with fiefdom.connect(daemon.url, token=daemon.token) as client:
            await client.drain(timeout=30)
            # The running jobs finished before the drain returned.
            assert set((await _states(daemon, ids)).values()) == {"completed"}
            assert not any(queue.paused for queue in await client.queues())
            await client.stop_daemon()
        assert daemon.wait(60) == 0, daemon.log()
        async with open_store(f"sqlite:///{daemon.data / 'fiefdom.db'}") as store:
            assert await store.paused_queues() == set()
        daemon.start()
        async with fiefdom.connect(daemon.url, token=daemon.token) as client:
            job = await client.enqueue("nap", {"seconds": 0.0})
        await _until_completed(daemon, [job.id])
    finally:
        daemon.stop()


async def test_drain_outlasting_the_reply_timeout_waits_for_its_own(tmp_path: Path) -> None:
    """A drain waits up to its own timeout, not the client's shorter default reply timeout."""
    # The nap outlasts the shutdown deadline: the drain ends when the engine gives it
    # back, seconds after the half-second default reply timeout the client has for it.
    daemon = _daemon(tmp_path, shutdown_timeout=3.0).start()
    try:
        ids = await _start_naps(daemon, seconds=300.0, count=1)
        async with fiefdom.connect(daemon.url, token=daemon.token) as client:
            # Only the drain has the short default: the hello before it and the read
            # after it keep the generous one, so a daemon held up for half a second (a
            # loaded machine) cannot fail them.
            generous, client.timeout = client.timeout, 0.5
            try:
                await client.drain(timeout=30)
            finally:
                client.timeout = generous
            job = await client.job(ids[0])
            # Cancelled at the deadline and given back, as a SIGTERM's drain does.
            assert job.state == "available"
    finally:
        daemon.stop()


def _free_port() -> int:
    # The OS picks a free port; the daemon binds it at once (a fixed address lets the
    # test reach the control channel before the daemon writes its control.json).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_drain_during_startup_leaves_no_engine_running(tmp_path: Path) -> None:
    """A drain sent once the channel answers stops the engine; the daemon stays up, unready."""
    port = _free_port()
    config = write_config(
        tmp_path,
        listen=f"127.0.0.1:{port}",
        # A paused queue: building the engine awaits its pause, after the channel is up.
        extra="[jobs.queues.held]\npaused = true\n",
    )
    daemon = DaemonProcess(config)
    daemon.launch()
    try:
        daemon.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_DEADLINE
        # The channel answers (with any status) once the control child has started.
        while daemon.http("/healthz", token=None)[0] == 0:
            daemon._check_alive(deadline, "answer /healthz")
        daemon.token = (daemon.data / "admin.token").read_text().strip()
        async with fiefdom.connect(daemon.url, token=daemon.token) as client:
            await client.drain(timeout=30)
            # Up and answering, but not ready: the engine was not started or was stopped.
            status, body = daemon.http("/readyz")
            assert status == 503, (status, body)
            checks = json.loads(body)["checks"]
            assert checks["jobs"] is False, checks
            assert checks["accepting"] is False, checks
            assert daemon.proc is not None
            assert daemon.proc.poll() is None, daemon.log()
            await client.stop_daemon()
        assert daemon.wait(60) == 0, daemon.log()
        log = daemon.log()
        assert "drained: the job engine has stopped" in log
        assert "daemon failed" not in log
    finally:
        daemon.stop()
