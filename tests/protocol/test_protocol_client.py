"""The control channel of a real daemon subprocess, driven by the Python client and
by a raw aiohttp websocket in both encodings."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import anyio
import msgspec
import pytest
from daemon_harness import DaemonProcess, write_config
from hosted_app import Balance, Crash, Deposit, Echo, GetCount, Increment

import fiefdom
import fiefdom.protocol
from fiefdom import JobEvent, JobState
from fiefdom.protocol import ActorEvent, LogEvent


async def test_status_shows_the_tree_and_the_exposed_targets(daemon: DaemonProcess) -> None:
    """status returns the supervisor tree with the hosted actors and their message types."""
    async with fiefdom.connect(daemon.url, token=daemon.token) as client:
        status = await client.status()
    assert status.name == "test-daemon"
    assert status.ready
    assert not status.draining
    paths = {child["path"] for child in status.tree["children"]}
    assert {"test-daemon/counter", "test-daemon/accounts", "test-daemon/echo"} <= paths
    targets = {t.name: t for t in status.targets}
    assert targets["counter"].messages == ["Crash", "GetCount", "Increment"]
    assert targets["accounts"].kind == "domain"


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_call_a_hosted_actor_and_a_domain_key(daemon: DaemonProcess, encoding: str) -> None:
    """A tell and a typed ask reach the hosted actor; a domain call reaches its key's actor."""
    async with fiefdom.connect(daemon.url, token=daemon.token, encoding=encoding) as client:
        before = await client.call("counter", GetCount())
        assert await client.call("counter", Increment(by=5)) is None
        after = await client.call("counter", GetCount())
        assert isinstance(after, int)
        assert after == before + 5
        key = f"alice-{encoding}"
        await client.call("accounts", Deposit(amount=7), key=key)
        await client.call("accounts", Deposit(amount=3), key=key)
        assert await client.call("accounts", Balance(), key=key) == 10
        echoed = await client.call("echo", Echo(payload={"nested": [1, 2.5, "x", None]}))
        assert echoed == {"nested": [1, 2.5, "x", None]}


async def test_call_errors_are_typed(daemon: DaemonProcess) -> None:
    """Unknown targets and types, a missing key and a crashing handler give typed errors."""
    async with fiefdom.connect(daemon.url, token=daemon.token) as client:
        with pytest.raises(fiefdom.ControlError) as info:
            await client.call("nobody", GetCount())
        assert info.value.code == "not_found"
        assert "counter" in info.value.details["known"]
        with pytest.raises(fiefdom.ControlError) as info:
            await client.call("echo", GetCount())
        assert info.value.code == "not_found"
        with pytest.raises(fiefdom.ControlError) as info:
            await client.call("accounts", Balance())
        assert info.value.code == "invalid_message"
        with pytest.raises(fiefdom.ControlError) as info:
            await client.call("counter", Crash())
        assert info.value.code == "actor_error"
        assert info.value.details["exception"] == "RuntimeError"
        # The connection stays usable, and the counter was restarted by its supervisor.
        assert isinstance(await client.call("counter", GetCount()), int)


async def test_subscription_receives_actor_crash_and_restart(daemon: DaemonProcess) -> None:
    """A subscriber to "actors" sees the crash and the restart of a hosted actor."""
    async with (
        fiefdom.connect(daemon.url, token=daemon.token) as client,
        client.subscribe(["actors", "logs"], level="error") as events,
    ):
        with pytest.raises(fiefdom.ControlError):
            await client.call("counter", Crash())
        seen: set[str] = set()
        logs: list[LogEvent] = []
        async for event in events:
            if isinstance(event, ActorEvent) and event.path.endswith("/counter"):
                seen.add(event.event)
            elif isinstance(event, LogEvent):
                logs.append(event)
            if {"crashed", "restarted"} <= seen and logs:
                break
    assert all(log.level in ("error", "critical") for log in logs)


async def test_raw_websocket_json_and_msgpack(daemon: DaemonProcess) -> None:
    """A raw websocket speaks the protocol: hello, then calls in JSON text and MessagePack."""
    async with aiohttp.ClientSession() as session, session.ws_connect(daemon.ws_url) as ws:
        await ws.send_json({"type": "hello", "id": 1, "version": 1, "token": daemon.token})
        welcome = await ws.receive_json()
        assert welcome["type"] == "welcome"
        assert welcome["id"] == 1
        assert welcome["role"] == "admin"
        await ws.send_json(
            {
                "type": "call",
                "id": 2,
                "target": "accounts",
                "key": "raw",
                "message_type": "Deposit",
                "message": {"amount": 4},
            }
        )
        assert await ws.receive_json() == {"type": "call.reply", "id": 2, "result": None}
        await ws.send_bytes(
            msgspec.msgpack.encode(
                {
                    "type": "call",
                    "id": 3,
                    "target": "accounts",
                    "key": "raw",
                    "message_type": "Balance",
                    "message": {},
                }
            )
        )
        reply = await ws.receive()
        assert reply.type is aiohttp.WSMsgType.BINARY
        assert msgspec.msgpack.decode(reply.data) == {"type": "call.reply", "id": 3, "result": 4}
        await ws.send_json({"type": "status", "id": 4})
        status = await ws.receive_json()
        assert status["type"] == "status.reply"
        assert status["id"] == 4


async def test_malformed_frames_get_typed_errors_and_the_connection_stays(
    daemon: DaemonProcess,
) -> None:
    """Malformed, unknown and ill-typed frames get an error naming the problem; ping still works."""
    async with aiohttp.ClientSession() as session, session.ws_connect(daemon.ws_url) as ws:
        await ws.send_json({"type": "hello", "id": 1, "token": daemon.token})
        assert (await ws.receive_json())["type"] == "welcome"
        await ws.send_str("{not json")
        error = await ws.receive_json()
        assert (error["type"], error["code"], error["id"]) == ("error", "invalid_frame", None)
        await ws.send_json({"type": "teleport", "id": 7})
        error = await ws.receive_json()
        assert (error["code"], error["id"]) == ("unknown_type", 7)
        await ws.send_json({"type": "jobs.get", "id": 8, "job_id": "seven"})
        error = await ws.receive_json()
        assert (error["code"], error["id"]) == ("invalid_message", 8)
        assert error["details"]["path"] == "$.job_id"
        await ws.send_json({"type": "ping", "id": 9})
        assert await ws.receive_json() == {"type": "pong", "id": 9}


async def _enqueue(client: fiefdom.protocol.Client, kind: str, **args: object) -> int:
    """Enqueue a job of ``kind`` and return its id (these kinds are not unique: always new)."""
    enqueued = await client.enqueue(kind, args)
    assert not enqueued.duplicate
    assert enqueued.id is not None
    return enqueued.id


async def _until_state(
    events: fiefdom.protocol.EventStream, job_id: int, state: JobState
) -> list[JobState]:
    """The states a job went through (from its events) until it reached ``state``."""
    seen: list[JobState] = []
    async for event in events:
        if isinstance(event, JobEvent) and event.job_id == job_id:
            seen.append(event.state)
            if event.state == state:
                return seen
    raise AssertionError(f"the event stream ended before job {job_id} was {state}")


async def test_job_enqueued_completes_and_its_events_arrive(daemon: DaemonProcess) -> None:
    """A job enqueued over the channel runs to completion; a subscriber sees its events,
    as the library's JobEvent, and the job reads back as the library's JobInfo."""
    async with (
        fiefdom.connect(daemon.url, token=daemon.token) as client,
        client.subscribe(["jobs"]) as events,
    ):
        enqueued = await client.enqueue("nap", {"seconds": 0.0})
        assert type(enqueued) is fiefdom.Enqueued
        assert not enqueued.duplicate
        assert enqueued.id is not None
        job_id = enqueued.id
        assert await _until_state(events, job_id, JobState.COMPLETED) == [
            JobState.RUNNING,
            JobState.COMPLETED,
        ]
        done = await client.get_job(job_id)
        assert type(done) is fiefdom.JobInfo
        assert (done.kind, done.queue, done.state) == ("nap", "default", JobState.COMPLETED)
        assert msgspec.json.decode(done.args) == {"seconds": 0.0}
        assert done.attempted_at is not None
        assert done.finished_at is not None
        assert done.run_at <= done.attempted_at <= done.finished_at
        listed = await client.list_jobs(kind="nap", state=JobState.COMPLETED)
        assert job_id in [j.id for j in listed]
        after = await client.list_jobs(kind="nap", after_id=job_id)
        assert all(j.id > job_id for j in after)
        again = await client.retry_job(job_id, force=True)
        # Read back after the retry committed: an engine may have claimed it already.
        assert again.id == job_id
        assert again.state in (JobState.AVAILABLE, JobState.RUNNING, JobState.COMPLETED)
        await _until_state(events, job_id, JobState.COMPLETED)
        queues = {q.name: q for q in await client.queues()}
        assert queues["default"].counts[JobState.COMPLETED] >= 1


async def test_job_failure_cancel_and_errors(daemon: DaemonProcess) -> None:
    """A failing job ends discarded with its error (an AttemptError, as in the library);
    a running job can be cancelled; missing jobs and kinds are "not_found"."""
    async with (
        fiefdom.connect(daemon.url, token=daemon.token) as client,
        client.subscribe(["jobs"]) as events,
    ):
        failing = await _enqueue(client, "fail", reason="boom")
        await _until_state(events, failing, JobState.DISCARDED)
        (error,) = (await client.get_job(failing)).errors
        assert type(error) is fiefdom.AttemptError
        assert (error.attempt, error.type, error.message) == (1, "builtins.RuntimeError", "boom")
        assert "RuntimeError: boom" in error.traceback
        long = await _enqueue(client, "nap", seconds=300.0)
        await _until_state(events, long, JobState.RUNNING)
        # The reply reads the job back once the request has committed: the engine
        # may have cancelled it by then (the request is done with, the job cancelled).
        cancelled = await client.cancel_job(long)
        assert cancelled.cancel_requested or cancelled.state is JobState.CANCELLED, cancelled
        await _until_state(events, long, JobState.CANCELLED)
        with pytest.raises(fiefdom.protocol.NotFound, match="no-such-kind"):
            await client.enqueue("no-such-kind")
        with pytest.raises(fiefdom.ControlError) as raised:
            await client.enqueue("nap", {"seconds": "long"})
        assert raised.value.code == "invalid_message"
        assert raised.value.details["path"] == "$.args.seconds"
        for missing in (client.get_job, client.retry_job, client.cancel_job):
            with pytest.raises(fiefdom.protocol.NotFound, match=f"no job {10**9}"):
                await missing(10**9)


async def test_pause_resume_and_drain_a_queue(daemon: DaemonProcess) -> None:
    """A paused queue claims nothing until resumed; draining waits for running jobs."""
    async with (
        fiefdom.connect(daemon.url, token=daemon.token) as client,
        client.subscribe(["jobs"]) as events,
    ):
        await client.pause("default")
        assert {q.name: q.paused for q in await client.queues()}["default"]
        job = await _enqueue(client, "nap", seconds=0.0)
        assert (await client.get_job(job)).state is JobState.AVAILABLE
        await client.resume("default")
        await _until_state(events, job, JobState.COMPLETED)
        short = await _enqueue(client, "nap", seconds=0.2)
        await _until_state(events, short, JobState.RUNNING)
        await client.drain_queue("default", timeout=30)
        assert (await client.get_job(short)).state is JobState.COMPLETED
        await client.resume("default")
        with pytest.raises(fiefdom.ControlError) as raised:
            await client.pause("no-such-queue")
        assert raised.value.code == "job_error"


async def _read_all(events: fiefdom.protocol.EventStream, into: list[object]) -> None:
    """Append every item of ``events`` to ``into`` until the stream ends or raises."""
    async for item in events:
        into.append(item)


async def _status_until_closed(client: fiefdom.protocol.Client) -> None:
    """Ask for the status until the connection has closed (which raises)."""
    while True:
        await client.status()
        await anyio.sleep(0.05)


async def test_a_full_event_buffer_still_ends_with_the_connection_error(tmp_path: Path) -> None:
    """A subscriber that read nothing gets its buffered events, then the disconnect as an error."""
    daemon = DaemonProcess(write_config(tmp_path)).start()
    try:
        slow = fiefdom.protocol.Client(daemon.url, token=daemon.token, event_buffer=2)
        async with slow, slow.subscribe(["jobs"]) as behind:
            async with (
                fiefdom.connect(daemon.url, token=daemon.token) as client,
                client.subscribe(["jobs"]) as events,
            ):
                # Three jobs: six events for a buffer of two.
                ids = [await _enqueue(client, "nap", seconds=0.0) for _ in range(3)]
                for job_id in ids:
                    await _until_state(events, job_id, JobState.COMPLETED)
                await client.stop_daemon()
            # The daemon answers reads while it drains: ask until the connection has
            # closed. Then the reader has routed every frame and seen the close, and
            # the stream's buffer is full, with nothing read from it.
            with anyio.fail_after(30), pytest.raises(fiefdom.ControlConnectionError):
                await _status_until_closed(slow)
            received: list[object] = []
            with anyio.fail_after(30), pytest.raises(fiefdom.ControlConnectionError):
                await _read_all(behind, received)
        assert await anyio.to_thread.run_sync(daemon.wait, 60) == 0, daemon.log()
        assert len([e for e in received if isinstance(e, JobEvent)]) == 2
        dropped = [e for e in received if isinstance(e, fiefdom.protocol.Dropped)]
        assert sum(d.count for d in dropped) >= 4
    finally:
        daemon.stop()
