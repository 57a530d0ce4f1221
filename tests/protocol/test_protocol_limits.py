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
from fiefdom.protocol import ControlSettings, EventHub


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


async def test_rate_limit_gives_one_typed_error_then_recovers(daemon: DaemonProcess) -> None:
    """Past its burst a connection gets one "rate_limited" error (id null: the frame is not
    read) saying when to retry, its frames are then read only as the rate allows (those
    still past it dropped unanswered), and it recovers as the bucket refills (the
    per-window details and the backpressure: test_protocol_fairness)."""
    async with aiohttp.ClientSession() as session, session.ws_connect(daemon.ws_url) as ws:
        await ws.send_json({"type": "hello", "id": 0, "token": daemon.token})
        assert (await ws.receive_json())["type"] == "welcome"
        for i in range(1, 41):
            await ws.send_json({"type": "ping", "id": i})
        pongs: list[dict[str, object]] = []
        while (reply := await ws.receive_json(timeout=10))["type"] == "pong":
            pongs.append(reply)
        # The burst less the hello, or a little more if the bucket refilled meanwhile.
        assert pongs == [{"type": "pong", "id": i} for i in range(1, len(pongs) + 1)]
        assert len(pongs) >= 19
        error = reply
        assert (error["type"], error["code"], error["id"]) == ("error", "rate_limited", None)
        assert error["details"]["retry_after"] > 0
        with anyio.fail_after(10):
            while True:
                await ws.send_json({"type": "ping", "id": 99})
                try:
                    reply = await ws.receive_json(timeout=0.1)
                except TimeoutError:
                    continue  # the bucket refills with time; retry under a deadline
                # Some of the 40 pings may have been read after a refill: their pongs.
                if reply == {"type": "pong", "id": 99}:
                    break
                assert reply["type"] == "pong", reply


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
    """Idle unauthenticated websockets fill only their own budget: a browser-style client
    (token in its hello) still gets in, the oldest idle socket making room (closed with
    1013), and clients with a header token are never counted against that budget."""
    config = write_config(
        tmp_path, control="max_connections = 2\nmax_unauthenticated = 2\nhello_timeout = 600.0"
    )
    async with aiohttp.ClientSession() as session:
        with DaemonProcess(config) as daemon:
            idle = [await session.ws_connect(daemon.ws_url) for _ in range(2)]
            # Proof that both idle sockets are open and counted before the newcomer comes.
            for ws in idle:
                await ws.send_json({"type": "ping", "id": 1})
                assert (await ws.receive_json(timeout=10))["code"] == "unauthenticated"
            async with session.ws_connect(daemon.ws_url) as browser:
                await browser.send_json({"type": "hello", "id": 1, "token": daemon.token})
                assert (await browser.receive_json(timeout=10))["type"] == "welcome"
                evicted = await idle[0].receive(timeout=10)
                assert evicted.type is aiohttp.WSMsgType.CLOSE, evicted
                assert evicted.data == aiohttp.WSCloseCode.TRY_AGAIN_LATER
                assert "waiting to authenticate" in evicted.extra
                # The younger idle socket is still there.
                await idle[1].send_json({"type": "ping", "id": 2})
                assert (await idle[1].receive_json(timeout=10))["id"] == 2
                bearer = {"Authorization": f"Bearer {daemon.token}"}
                async with session.ws_connect(daemon.ws_url, headers=bearer) as raw:
                    await raw.send_json({"type": "hello", "id": 1})
                    assert (await raw.receive_json(timeout=10))["type"] == "welcome"
                    # Both authenticated slots are taken: a waiting socket's hello is refused.
                    await idle[1].send_json({"type": "hello", "id": 3, "token": daemon.token})
                    reply = await idle[1].receive_json(timeout=10)
                    assert (reply["type"], reply["code"]) == ("error", "unavailable")
            for ws in idle:
                await ws.close()


async def test_a_socket_that_never_says_hello_is_closed_at_the_deadline(tmp_path: Path) -> None:
    """An unauthenticated websocket is closed with 1008 once hello_timeout has passed
    without a valid hello (waited on as the close frame, under a hang guard)."""
    config = write_config(tmp_path, control="hello_timeout = 0.2")
    async with aiohttp.ClientSession() as session:
        with DaemonProcess(config) as daemon:
            async with session.ws_connect(daemon.ws_url) as ws:
                closing = await ws.receive(timeout=30)
                assert closing.type is aiohttp.WSMsgType.CLOSE, closing
                assert closing.data == aiohttp.WSCloseCode.POLICY_VIOLATION
                assert closing.extra == "no hello within the deadline"


def test_the_hello_deadline_is_short_by_default() -> None:
    """A socket that has not said hello is held for seconds, not minutes, by default."""
    assert ControlSettings().hello_timeout <= 5.0
