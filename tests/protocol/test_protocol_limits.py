"""Limits of the control channel: connections, frames per second, and the bounded
buffer of a slow event subscriber (drops counted and reported, memory bounded)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import anyio
import pytest
from daemon_harness import DaemonProcess, write_config

import fiefdom
from fiefdom import JobEvent, JobState
from fiefdom.protocol import EventHub


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon that takes 3 connections and 20 frames per second per connection."""
    config = write_config(tmp_path_factory.mktemp("limits"))
    text = config.read_text().replace(
        "messages_per_second = 100000.0\nburst = 100000",
        "messages_per_second = 20.0\nburst = 20\nmax_connections = 3",
    )
    config.write_text(text)
    with DaemonProcess(config) as proc:
        yield proc


async def test_rate_limit_gives_typed_errors_then_recovers(daemon: DaemonProcess) -> None:
    """Past its burst a connection gets "rate_limited" errors with the frame's id; it
    recovers as the bucket refills."""
    async with aiohttp.ClientSession() as session, session.ws_connect(daemon.ws_url) as ws:
        await ws.send_json({"type": "hello", "id": 0, "token": daemon.token})
        assert (await ws.receive_json())["type"] == "welcome"
        for i in range(1, 41):
            await ws.send_json({"type": "ping", "id": i})
        replies = [await ws.receive_json() for _ in range(40)]
        limited = [r for r in replies if r["type"] == "error"]
        assert limited
        assert {r["code"] for r in limited} == {"rate_limited"}
        assert all(isinstance(r["id"], int) for r in limited)
        with anyio.fail_after(10):
            while True:
                await ws.send_json({"type": "ping", "id": 99})
                if (await ws.receive_json())["type"] == "pong":
                    break
                await anyio.sleep(0.1)  # the bucket refills with time; retry under a deadline


async def test_connection_limit_refuses_the_extra_client(daemon: DaemonProcess) -> None:
    """Past max_connections a new websocket is refused (HTTP 503); the others work."""
    clients = [fiefdom.connect(daemon.url, token=daemon.token) for _ in range(3)]
    async with clients[0] as a, clients[1] as b, clients[2] as c:
        with pytest.raises(fiefdom.ControlConnectionError) as info:
            async with fiefdom.connect(daemon.url, token=daemon.token):
                pass
        assert "503" in str(info.value)
        for client in (a, b, c):
            await client.ping()


def _completed(job_id: int) -> JobEvent:
    return JobEvent(job_id=job_id, kind="k", queue="q", state=JobState.COMPLETED, attempt=1, at=0.0)


async def test_slow_subscriber_buffer_is_bounded_and_reports_drops() -> None:
    """A subscriber that does not read keeps at most its capacity; the rest is counted
    as dropped and reported with the next batch."""
    hub = EventHub(capacity=10)
    sub = hub.subscribe(["jobs"])
    for i in range(25):
        hub.publish(_completed(i))
    events, dropped = await sub.next_batch()
    assert [e.job_id for e in events] == list(range(10))
    assert dropped == 15
    hub.publish(_completed(99))
    events, dropped = await sub.next_batch()
    assert [e.job_id for e in events] == [99]
    assert dropped == 0
    hub.unsubscribe(sub)
    assert await sub.next_batch() == ([], 0)


async def test_sockets_that_never_say_hello_do_not_lock_clients_out(tmp_path: Path) -> None:
    """Idle unauthenticated websockets fill only their own limit; authenticated clients get in."""
    config = write_config(
        tmp_path, control="max_connections = 2\nmax_unauthenticated = 2\nhello_timeout = 600.0"
    )
    async with aiohttp.ClientSession() as session:
        with DaemonProcess(config) as daemon:
            idle = [await session.ws_connect(daemon.ws_url) for _ in range(2)]
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await session.ws_connect(daemon.ws_url)
            assert info.value.status == 503
            bearer = {"Authorization": f"Bearer {daemon.token}"}
            async with (
                fiefdom.connect(daemon.url, token=daemon.token) as client,
                session.ws_connect(daemon.ws_url, headers=bearer) as raw,
            ):
                await client.ping()
                await raw.send_json({"type": "hello", "id": 1})
                assert (await raw.receive_json())["type"] == "welcome"
                # Both authenticated slots are taken: a waiting socket's hello is refused.
                await idle[0].send_json({"type": "hello", "id": 1, "token": daemon.token})
                reply = await idle[0].receive_json()
                assert (reply["type"], reply["code"]) == ("error", "unavailable")
            for ws in idle:
                await ws.close()
