"""Frames handled where aiohttp parses them (``Connection.take_frame``: while the
connection's reading task waits with every earlier frame handled, a request it would
start without waiting is started there, without waking the task). Sent in one write,
so that they are parsed together and part of them go through the reading task: they
are still handled in the order sent (a ping is answered before the next frame is
read), within the rate (a frame past it is dropped, once told) and within
max_in_flight (reading stops while it is reached). The daemons run on the suite's
event loop. Speed is measured in bench/control.py, never asserted here."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from daemon_harness import DaemonProcess, write_config
from raw_websocket import open_websocket, read_frame, ws_frame

from fiefdom.protocol import _socket

HERE = Path(__file__).parent
GUARD = 30.0  # a hang guard, never a speed requirement


@pytest.fixture
def daemon_loop(request: pytest.FixtureRequest) -> str:
    """The daemon's event loop: the suite's own (``--loop``)."""
    return str(request.config.getoption("loop"))


def _daemon(tmp_path: Path, loop: str, control: str = "", rate: str = "") -> DaemonProcess:
    config = write_config(tmp_path, modules=("hosted_app", "calls_app"), control=control, loop=loop)
    if rate:
        text = config.read_text()
        config.write_text(text.replace("messages_per_second = 100000.0\nburst = 100000", rate))
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    return DaemonProcess(config, env={"PYTHONPATH": path})


class _RawSocket:
    """A websocket client over a plain TCP socket, to send many frames in one write."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, daemon: DaemonProcess) -> _RawSocket:
        return cls(*await open_websocket(daemon.url, daemon.token, nodelay=True))

    async def send(self, *frames: dict[str, Any]) -> None:
        """The frames, in one write."""
        self.writer.write(b"".join(ws_frame(json.dumps(f).encode()) for f in frames))
        await self.writer.drain()

    async def receive(self) -> Any:
        """The next server frame, decoded from JSON."""
        return json.loads(await read_frame(self.reader))

    def close(self) -> None:
        self.writer.transport.abort()


def _note(frame_id: int) -> dict[str, Any]:
    message = {"n": frame_id, "size": 0}
    return {
        "type": "call",
        "id": frame_id,
        "target": "keeper",
        "message_type": "Note",
        "message": message,
    }


def _wait(frame_id: int) -> dict[str, Any]:
    message = {"n": frame_id}
    return {
        "type": "call",
        "id": frame_id,
        "target": "waiter",
        "message_type": "Wait",
        "message": message,
    }


async def _call(
    ws: aiohttp.ClientWebSocketResponse, target: str, message_type: str, **fields: Any
) -> Any:
    frame = {"type": "call", "id": 1, "target": target, "message_type": message_type}
    await ws.send_json({**frame, "message": fields})
    reply = await ws.receive_json(timeout=GUARD)
    assert reply["type"] == "call.reply", reply
    return reply["result"]


async def _hello(ws: _RawSocket) -> None:
    await ws.send({"type": "hello", "id": 0})
    assert (await ws.receive())["type"] == "welcome"


def test_the_installed_aiohttp_is_one_the_frame_queue_was_checked_against() -> None:
    """The connection repeats aiohttp's websocket setup to put its own frame queue in
    (ControlSocket._post_start); with an aiohttp it was not checked against, every
    frame goes through the reading task instead. This fails on an upgrade, so that
    the copy is checked against the new release (then listed in _FRAMES_CHECKED_ON)."""
    assert _socket.TAKES_FRAMES, aiohttp.__version__


async def test_frames_read_together_are_handled_in_the_order_sent(
    tmp_path: Path, daemon_loop: str
) -> None:
    """Calls and pings in one write: each ping is answered before any frame after it
    is handled, so its pong comes before the replies to the calls sent after it, and
    the actor gets the calls in the order sent."""
    with _daemon(tmp_path, daemon_loop) as daemon:
        ws = await _RawSocket.connect(daemon)
        try:
            with anyio.fail_after(GUARD):
                await _hello(ws)
                await ws.send(
                    _note(1),
                    {"type": "ping", "id": 100},
                    _note(2),
                    _note(3),
                    {"type": "ping", "id": 101},
                    _note(4),
                )
                frames = [await ws.receive() for _ in range(6)]
            order = [(f["type"], f["id"]) for f in frames]
            first_pong = order.index(("pong", 100))
            second_pong = order.index(("pong", 101))
            assert first_pong < order.index(("call.reply", 2)), order
            assert first_pong < order.index(("call.reply", 3)), order
            assert second_pong < order.index(("call.reply", 4)), order
            async with aiohttp.ClientSession() as session:
                bearer = {"Authorization": f"Bearer {daemon.token}"}
                async with session.ws_connect(daemon.ws_url, headers=bearer) as other:
                    await other.send_json({"type": "hello", "id": 0})
                    assert (await other.receive_json(timeout=GUARD))["type"] == "welcome"
                    counts = await _call(other, "tally", "GetCounts")
            assert counts["noted"] == [1, 2, 3, 4]
        finally:
            ws.close()


async def test_calls_read_together_are_taken_within_the_rate(
    tmp_path: Path, daemon_loop: str
) -> None:
    """With a burst of 5 frames and a rate that does not refill within the test, ten
    calls in one write after the hello: four are taken (the actor gets exactly those),
    then one "rate_limited" error, and nothing more is read."""
    rate = "messages_per_second = 0.0001\nburst = 5"
    with _daemon(tmp_path, daemon_loop, rate=rate) as daemon:
        ws = await _RawSocket.connect(daemon)
        try:
            with anyio.fail_after(GUARD):
                await _hello(ws)
                await ws.send(*(_note(i) for i in range(1, 11)))
                frames = [await ws.receive() for _ in range(5)]
            replies = sorted(f["id"] for f in frames if f["type"] == "call.reply")
            errors = [f for f in frames if f["type"] == "error"]
            assert replies == [1, 2, 3, 4], frames
            assert [(e["code"], e["id"]) for e in errors] == [("rate_limited", None)]
            async with aiohttp.ClientSession() as session:
                bearer = {"Authorization": f"Bearer {daemon.token}"}
                async with session.ws_connect(daemon.ws_url, headers=bearer) as other:
                    await other.send_json({"type": "hello", "id": 0})
                    assert (await other.receive_json(timeout=GUARD))["type"] == "welcome"
                    # Time for the daemon to read on, were it to: turns of its loop
                    # (as many as this connection's own burst allows).
                    for _ in range(4):
                        assert (await _call(other, "tally", "GetCounts"))["noted"] == [1, 2, 3, 4]
        finally:
            ws.close()


async def test_calls_read_together_stop_at_max_in_flight(tmp_path: Path, daemon_loop: str) -> None:
    """With max_in_flight = 2, five waiting calls and a ping in one write: the third
    call is read only once one of the first two has ended, and the ping once three
    calls have ended."""
    with _daemon(tmp_path, daemon_loop, "max_in_flight = 2") as daemon:
        ws = await _RawSocket.connect(daemon)
        try:
            async with aiohttp.ClientSession() as session:
                bearer = {"Authorization": f"Bearer {daemon.token}"}
                async with session.ws_connect(daemon.ws_url, headers=bearer) as keeper:
                    await keeper.send_json({"type": "hello", "id": 0})
                    assert (await keeper.receive_json(timeout=GUARD))["type"] == "welcome"
                    with anyio.fail_after(GUARD):
                        await _hello(ws)
                        await ws.send(*(_wait(i) for i in range(1, 6)), {"type": "ping", "id": 99})
                    ended: list[int] = []
                    for _ in range(3):
                        assert await _call(keeper, "keeper", "Release") == 1
                        with anyio.fail_after(GUARD):
                            reply = await ws.receive()
                        # Not the pong: the ping is not read yet.
                        assert reply["type"] == "call.reply", (reply, ended)
                        ended.append(reply["id"])
                    with anyio.fail_after(GUARD):
                        assert await ws.receive() == {"type": "pong", "id": 99}
                    assert await _call(keeper, "keeper", "Release", count=2) == 2
                    with anyio.fail_after(GUARD):
                        ended += [(await ws.receive())["id"] for _ in range(2)]
            assert ended == [1, 2, 3, 4, 5]
        finally:
            ws.close()
