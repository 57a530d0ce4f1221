"""The daemon's supervisor tree on a real daemon: the store, the user modules, the
control server and the job engine are children in start order; runtime events of
hosted actors reach websocket subscribers; and SIGTERM stops the tree in reverse
order, keeping the control channel up while jobs drain."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from daemon_harness import DaemonProcess, write_config
from hosted_app import Crash

import fiefdom
from fiefdom.protocol import ActorEvent, JobEvent, LogEvent


async def test_status_shows_the_services_in_start_order(daemon: DaemonProcess) -> None:
    """status lists the store, the vault's domain of resources, the module's actors, the
    control server, the engine and the vault's background service, in order (the last
    started is the first stopped: the vault's service before the store it uses)."""
    async with fiefdom.connect(daemon.url, token=daemon.token) as client:
        status = await client.status()
    children = status.tree["children"]
    assert [child["path"] for child in children] == [
        "test-daemon/store",
        "test-daemon/fiefdom.vault",
        "test-daemon/counter",
        "test-daemon/accounts",
        "test-daemon/echo",
        "test-daemon/scratch",
        "test-daemon/control",
        "test-daemon/jobs",
        "test-daemon/vault",
    ]
    services = [child for child in children if child["kind"] == "service"]
    names = [s["path"].rsplit("/", 1)[1] for s in services]
    assert names == ["store", "control", "jobs", "vault"]
    assert all(s["running"] and s["restarts"] == 0 for s in services)


async def _receive_until(
    ws: aiohttp.ClientWebSocketResponse, done: Any, deadline: float = 30.0
) -> list[dict[str, Any]]:
    """Frames from ``ws`` until ``done(frames)`` holds (under a deadline)."""
    frames: list[dict[str, Any]] = []
    with anyio.fail_after(deadline):
        while not done(frames):
            frames.append(await ws.receive_json())
    return frames


async def test_crash_and_restart_reach_a_raw_websocket_subscriber(daemon: DaemonProcess) -> None:
    """A hosted actor's crash and restart arrive as typed "actors" events on a raw websocket."""
    async with aiohttp.ClientSession() as session, session.ws_connect(daemon.ws_url) as ws:
        await ws.send_json({"type": "hello", "id": 1, "token": daemon.token})
        assert (await ws.receive_json())["type"] == "welcome"
        await ws.send_json({"type": "subscribe", "id": 2, "topics": ["actors"]})
        assert (await ws.receive_json())["type"] == "subscribed"
        await ws.send_json(
            {"type": "call", "id": 3, "target": "counter", "message_type": "Crash", "message": {}}
        )

        def counter_events(frames: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
            return {
                f["data"]["event"]: f["data"]
                for f in frames
                if f["type"] == "event" and f["data"]["path"] == "test-daemon/counter"
            }

        frames = await _receive_until(
            ws,
            lambda frames: (
                {"crashed", "restarted"} <= set(counter_events(frames))
                and any(f.get("id") == 3 for f in frames)
            ),
        )
    reply = next(f for f in frames if f.get("id") == 3)
    assert (reply["type"], reply["code"]) == ("error", "actor_error")
    events = counter_events(frames)
    crashed, restarted = events["crashed"], events["restarted"]
    assert crashed["topic"] == "actors"
    assert crashed["key"] is None
    assert crashed["error_type"] == "RuntimeError"
    assert crashed["error"] == "RuntimeError: asked to crash"
    assert restarted["restarts"] >= 1


async def test_a_domain_key_crash_names_its_key(daemon: DaemonProcess) -> None:
    """The crash of a domain key's actor reaches a client subscriber with the key."""
    async with (
        fiefdom.connect(daemon.url, token=daemon.token, encoding="msgpack") as client,
        client.subscribe(["actors"]) as events,
    ):
        with pytest.raises(fiefdom.ControlError):
            await client.call("accounts", Crash(), key="mallory")
        with anyio.fail_after(30):
            async for event in events:
                if isinstance(event, ActorEvent) and event.key == "mallory":
                    break
    assert event.event == "crashed"
    assert event.path == "test-daemon/accounts/mallory"
    assert event.error_type == "RuntimeError"


async def _until_job_state(events: fiefdom.protocol.EventStream, job_id: int, state: str) -> None:
    with anyio.fail_after(30):
        async for event in events:
            if isinstance(event, JobEvent) and event.job_id == job_id and event.state == state:
                return
    raise AssertionError(f"the event stream ended before job {job_id} was {state}")


async def test_sigterm_keeps_the_channel_up_while_jobs_drain(tmp_path: Path) -> None:
    """While SIGTERM drains a job, /readyz is 503 and the channel still reports, to the end."""
    daemon = DaemonProcess(write_config(tmp_path, shutdown_timeout=600.0)).start()
    try:
        async with (
            fiefdom.connect(daemon.url, token=daemon.token) as client,
            client.subscribe(["jobs", "logs"]) as events,
        ):
            job = await client.enqueue("nap", {"seconds": 300.0})
            await _until_job_state(events, job.id, "running")
            daemon.signal(signal.SIGTERM)
            with anyio.fail_after(30):
                # The daemon logs the signal in its handler, which then begins the drain.
                async for event in events:
                    if isinstance(event, LogEvent) and event.event.startswith("signal received"):
                        break
            status = await client.status()
            assert status.draining
            assert not status.ready
            readyz, _ = await anyio.to_thread.run_sync(daemon.http, "/readyz")
            assert readyz == 503
            jobs = next(c for c in status.tree["children"] if c["path"] == "test-daemon/jobs")
            assert jobs["running"]
            with pytest.raises(fiefdom.ControlError) as refused:
                await client.enqueue("nap", {"seconds": 0.0})
            assert refused.value.code == "unavailable"
            daemon.signal(signal.SIGTERM)
            # Given back to its queue (no attempt used), and still reported to the
            # subscriber before the control channel closes.
            await _until_job_state(events, job.id, "available")
        assert daemon.wait(60) == 0, daemon.log()
        log = daemon.log()
        order = ["job engine stopped", "control channel stopped", "store closed"]
        assert sorted(order, key=log.index) == order
    finally:
        daemon.stop()
