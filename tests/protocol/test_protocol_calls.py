"""A call to a spawned actor is started by the connection's reader and answered from
its ask's callback, without a task of its own: what a task gave it still holds. Its
handler is cancelled when the client leaves (and its queued calls never run), its
deadline answers it with a timeout, a connection's calls in flight are capped, and a
call stays in flight until its reply is written (a client that reads nothing stops
being read). The daemons run on the suite's event loop (CI runs the suite on both).
Speed is measured in bench/control.py, never asserted here."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from daemon_harness import DaemonProcess, write_config
from raw_websocket import open_websocket, read_frame, ws_frame

from fiefdom.protocol import _requests as requests
from fiefdom.protocol._codec import CLIENT_JSON, SERVER_JSON, SERVER_MSGPACK, Codec
from fiefdom.protocol._messages import Call, ClientMessage
from fiefdom.protocol._replies import CallReply

HERE = Path(__file__).parent
GUARD = 30.0  # a hang guard, never a speed requirement


@pytest.fixture
def daemon_loop(request: pytest.FixtureRequest) -> str:
    """The daemon's event loop: the suite's own (``--loop``), so that the suite's pass
    on uvloop runs these daemons on uvloop too."""
    return str(request.config.getoption("loop"))


def _daemon(tmp_path: Path, loop: str, control: str = "") -> DaemonProcess:
    config = write_config(tmp_path, modules=("hosted_app", "calls_app"), control=control, loop=loop)
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    return DaemonProcess(config, env={"PYTHONPATH": path})


@contextlib.asynccontextmanager
async def _client(daemon: DaemonProcess) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A raw websocket that has said hello."""
    bearer = {"Authorization": f"Bearer {daemon.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(daemon.ws_url, headers=bearer) as ws,
    ):
        await ws.send_json({"type": "hello", "id": 0})
        assert (await ws.receive_json(timeout=GUARD))["type"] == "welcome"
        yield ws


def _wait(frame_id: int, n: int, timeout: float = 600) -> dict[str, Any]:
    return {
        "type": "call",
        "id": frame_id,
        "target": "waiter",
        "message_type": "Wait",
        "message": {"n": n},
        "timeout": timeout,
    }


async def _keeper(ws: aiohttp.ClientWebSocketResponse, message_type: str, **fields: Any) -> Any:
    frame = {"type": "call", "id": 1, "target": "keeper", "message_type": message_type}
    await ws.send_json({**frame, "message": fields})
    reply = await ws.receive_json(timeout=GUARD)
    assert reply["type"] == "call.reply", reply
    return reply["result"]


async def _counts(ws: aiohttp.ClientWebSocketResponse) -> dict[str, list[int]]:
    """The counts, from the tally actor: a call to the keeper (a Note) that found a
    GetCounts in the keeper's mailbox would run in a task instead of without one."""
    frame = {"type": "call", "id": 1, "target": "tally", "message_type": "GetCounts"}
    await ws.send_json({**frame, "message": {}})
    reply = await ws.receive_json(timeout=GUARD)
    assert reply["type"] == "call.reply", reply
    result: dict[str, list[int]] = reply["result"]
    return result


async def _counts_until(ws: aiohttp.ClientWebSocketResponse, done: Any) -> dict[str, list[int]]:
    """The keeper's counts, asked again until ``done(counts)`` (within the hang guard)."""
    with anyio.fail_after(GUARD):
        while True:
            counts = await _counts(ws)
            if done(counts):
                return counts
            await asyncio.sleep(0.01)


async def test_a_call_running_when_its_client_leaves_is_cancelled(
    tmp_path: Path, daemon_loop: str
) -> None:
    """A client leaves with one call running and one queued behind it: the running
    handler is cancelled, the queued call never starts, and the actor answers the next
    client's call."""
    with _daemon(tmp_path, daemon_loop) as daemon:
        async with _client(daemon) as keeper:
            async with _client(daemon) as leaving:
                await leaving.send_json(_wait(1, 1))
                await leaving.send_json(_wait(2, 2))
                await _counts_until(keeper, lambda c: c["started"] == [1])
            counts = await _counts_until(keeper, lambda c: c["cancelled"] == [1])
            assert counts["finished"] == []
            async with _client(daemon) as staying:
                await staying.send_json(_wait(3, 3))
                await _counts_until(keeper, lambda c: c["started"] == [1, 3])
                assert await _keeper(keeper, "Release") == 1
                reply = await staying.receive_json(timeout=GUARD)
            assert reply == {"type": "call.reply", "id": 3, "result": 3}
            counts = await _counts(keeper)
            assert counts == {"started": [1, 3], "cancelled": [1], "finished": [3], "noted": []}


async def test_a_call_past_its_deadline_is_answered_with_a_timeout(
    tmp_path: Path, daemon_loop: str
) -> None:
    """A call queued behind a running one past its own timeout is removed unrun
    (``queued``); a running call past its timeout is cancelled and answered
    ``timeout`` (phase ``running``, its handler exited)."""
    with _daemon(tmp_path, daemon_loop) as daemon:
        async with _client(daemon) as ws, _client(daemon) as keeper:
            await ws.send_json(_wait(1, 1, timeout=600))
            await _counts_until(keeper, lambda c: c["started"] == [1])
            # The actor is busy with call 1 until it is released: call 2 waits queued.
            await ws.send_json(_wait(2, 2, timeout=0.25))
            reply = await ws.receive_json(timeout=GUARD)
            assert reply["id"] == 2, reply
            assert reply["code"] == "timeout", reply
            assert reply["details"]["phase"] == "queued"
            assert await _keeper(keeper, "Release") == 1
            assert await ws.receive_json(timeout=GUARD) == {
                "type": "call.reply",
                "id": 1,
                "result": 1,
            }
            # The actor is idle: call n starts on its next turn and runs past its
            # timeout. Its 1 s deadline starts as the daemon reads the call: a daemon
            # held up that long before the actor took it (a loaded machine) removes it
            # unrun, as a queued timeout, which is not the case under test. Such a
            # call must never have started; the test calls again, with a new n, until
            # one started before its deadline.
            with anyio.fail_after(GUARD):
                for n in itertools.count(3):
                    await ws.send_json(_wait(n, n, timeout=1.0))
                    reply = await ws.receive_json(timeout=GUARD)
                    assert (reply["id"], reply["code"]) == (n, "timeout"), reply
                    if reply["details"]["phase"] != "queued":
                        break
            assert reply["details"] == {"phase": "running", "handler_exited": True}
            counts = await _counts(keeper)
            assert counts == {"started": [1, n], "cancelled": [n], "finished": [1], "noted": []}


async def test_calls_in_flight_are_capped(tmp_path: Path, daemon_loop: str) -> None:
    """With max_in_flight = 3, six calls to one actor and a ping: the daemon reads the
    next frame only when a call ends, so the ping is answered after exactly 6 - 3 of
    them have ended."""
    with _daemon(tmp_path, daemon_loop, "max_in_flight = 3") as daemon:
        async with _client(daemon) as ws, _client(daemon) as keeper:
            for i in range(1, 7):
                await ws.send_json(_wait(i, i))
            await ws.send_json({"type": "ping", "id": 99})
            ended: list[int] = []
            for _ in range(3):
                assert await _keeper(keeper, "Release") == 1
                reply = await ws.receive_json(timeout=GUARD)
                assert reply["type"] == "call.reply", (reply, ended)  # not the pong: not read yet
                ended.append(reply["id"])
            assert await ws.receive_json(timeout=GUARD) == {"type": "pong", "id": 99}
            assert await _keeper(keeper, "Release", count=3) == 3
            for _ in range(3):
                ended.append((await ws.receive_json(timeout=GUARD))["id"])
    assert ended == [1, 2, 3, 4, 5, 6]


class _RawSocket:
    """A websocket client over a plain TCP socket with a small receive buffer: what it
    does not read backs up in the daemon's socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, daemon: DaemonProcess) -> _RawSocket:
        return cls(*await open_websocket(daemon.url, daemon.token, rcvbuf=4096))

    def send(self, payload: bytes) -> None:
        """One masked text frame."""
        self.writer.write(ws_frame(payload))

    async def receive(self) -> Any:
        """The next server frame, decoded from JSON."""
        return json.loads(await read_frame(self.reader))

    def vanish(self) -> None:
        """Leave with a RST."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


def _note(target: str, frame_id: int, size: int = 0) -> bytes:
    frame = {
        "type": "call",
        "id": frame_id,
        "target": target,
        "message_type": "Note",
        "message": {"n": frame_id, "size": size},
    }
    if target == "notes":
        frame["key"] = str(frame_id)
    return json.dumps(frame, separators=(",", ":")).encode()


BIG = 8 * 2**20  # more than the socket buffers hold (the daemon's send buffer: 4 MiB)


@pytest.mark.parametrize(("target", "running"), [("keeper", 2), ("keeper", 1), ("notes", 2)])
async def test_a_call_whose_reply_cannot_be_written_stays_in_flight(
    tmp_path: Path, daemon_loop: str, target: str, running: int
) -> None:
    """With max_in_flight = 2, a client that reads nothing makes two calls whose
    replies are too large for the socket buffers, then a third: the first two stay in
    flight until their replies are written, so the third is not started while the
    client reads nothing (the actor never gets it); it is once the client reads. With
    two running slots, calls to a spawned actor both start without a task; with one,
    the first holds it until its reply is written, and the second waits for it (in a
    task). Calls to a domain's keys run in tasks."""
    # A slice longer than the test: a request past its slice gives its slot back while
    # another waits (fairness), and on a slow machine the checks below can outlast the
    # default 0.1 s, which would start the second call with the first's reply unwritten.
    control = (
        f"max_in_flight = 2\nmax_running_per_connection = {running}\nrunning_request_slice = 600.0"
    )
    started = [1, 2][:running]
    with _daemon(tmp_path, daemon_loop, control) as daemon:
        ws = await _RawSocket.connect(daemon)
        try:
            async with _client(daemon) as keeper:
                with anyio.fail_after(GUARD):
                    ws.send(b'{"type": "hello", "id": 0}')
                    assert (await ws.receive())["type"] == "welcome"
                    for frame in (_note(target, 1, BIG), _note(target, 2, BIG), _note(target, 3)):
                        ws.send(frame)
                await _counts_until(keeper, lambda c: c["noted"] == started)
                # Time for the daemon to read on, were it to: turns of its loop.
                for _ in range(20):
                    assert (await _counts(keeper))["noted"] == started
                with anyio.fail_after(GUARD):
                    replies = [await ws.receive() for _ in range(3)]
                assert [(r["type"], r["id"]) for r in replies] == [
                    ("call.reply", 1),
                    ("call.reply", 2),
                    ("call.reply", 3),
                ]
                assert replies[0]["result"] == replies[1]["result"] == "x" * BIG
                assert replies[2]["result"] == ""
                assert (await _counts(keeper))["noted"] == [1, 2, 3]
        finally:
            ws.vanish()


@pytest.mark.parametrize("result", [None, 7, "text", [1, {"a": 2.5}], {"nested": {"x": [True]}}])
@pytest.mark.parametrize("codec", [SERVER_JSON, SERVER_MSGPACK])
def test_a_result_is_written_as_the_call_reply_frame(
    codec: Codec[ClientMessage], result: Any
) -> None:
    """The reply to a call started without a task is encoded in one pass, to the bytes
    of its ``CallReply`` frame (the result encoded first, then copied in)."""
    msg = Call(id=12, target="t", message_type="M")
    frame = requests.call_reply(msg, codec, result)
    assert codec.encode(requests.CallResult(id=12, result=result)) == codec.encode(frame)
    written = SERVER_JSON.encode(requests.CallResult(id=12, result=result))
    assert CLIENT_JSON.decode(written) == CallReply(
        id=12, result=msgspec.Raw(SERVER_JSON.encode(result))
    )
