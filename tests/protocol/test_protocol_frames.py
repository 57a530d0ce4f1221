"""The frame size limit of the control channel: a frame of exactly ``max_frame_bytes``
is read and answered; one byte more closes that connection with 1009 (message too
big), unanswered, while the other clients of the same daemon go on."""

from __future__ import annotations

import json
from collections.abc import Iterator

import aiohttp
import msgspec
import pytest
from daemon_harness import DaemonProcess, write_config

LIMIT = 32 * 1024


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon whose frames may be at most LIMIT bytes."""
    config = write_config(tmp_path_factory.mktemp("frames"), control=f"max_frame_bytes = {LIMIT}")
    with DaemonProcess(config) as proc:
        yield proc


def _hello(token: str, size: int, binary: bool) -> bytes:
    """A valid hello of exactly ``size`` bytes (its ``client`` field is the padding)."""
    encode = msgspec.msgpack.encode if binary else msgspec.json.encode

    def hello(pad: int) -> bytes:
        return encode({"type": "hello", "id": 1, "token": token, "client": "x" * pad})

    # Measured with a padding long enough to have the header (in MessagePack) that
    # the final one has, so that one correction gives the size exactly.
    pad = 1000 + size - len(hello(1000))
    frame = hello(pad)
    assert len(frame) == size
    return frame


async def _send(ws: aiohttp.ClientWebSocketResponse, frame: bytes, binary: bool) -> None:
    if binary:
        await ws.send_bytes(frame)
    else:
        await ws.send_str(frame.decode())


async def _ping(ws: aiohttp.ClientWebSocketResponse, frame_id: int) -> None:
    await ws.send_json({"type": "ping", "id": frame_id})
    assert await ws.receive_json(timeout=10) == {"type": "pong", "id": frame_id}


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
async def test_a_frame_exactly_at_the_limit_is_answered(
    daemon: DaemonProcess, binary: bool
) -> None:
    """A hello of exactly max_frame_bytes is read and welcomed; the connection goes on."""
    frame = _hello(daemon.token, LIMIT, binary)
    assert len(frame) == LIMIT
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(daemon.ws_url, max_msg_size=0) as ws,
    ):
        await _send(ws, frame, binary)
        reply = await ws.receive(timeout=10)
        assert reply.type is (aiohttp.WSMsgType.BINARY if binary else aiohttp.WSMsgType.TEXT)
        decoded = msgspec.msgpack.decode(reply.data) if binary else json.loads(reply.data)
        assert (decoded["type"], decoded["id"]) == ("welcome", 1)
        await _ping(ws, 2)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
async def test_one_byte_over_the_limit_closes_that_connection_only(
    daemon: DaemonProcess, binary: bool
) -> None:
    """A frame of max_frame_bytes + 1 gets no reply: its connection is closed with 1009;
    another client connected all along, and a new one, are served as before."""
    frame = _hello(daemon.token, LIMIT + 1, binary)
    bearer = {"Authorization": f"Bearer {daemon.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(daemon.ws_url, headers=bearer) as bystander,
        session.ws_connect(daemon.ws_url, headers=bearer, max_msg_size=0) as ws,
    ):
        await _ping(bystander, 1)
        await _ping(ws, 1)
        await _send(ws, frame, binary)
        closing = await ws.receive(timeout=10)
        assert closing.type is aiohttp.WSMsgType.CLOSE, closing
        assert closing.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        await _ping(bystander, 2)
        async with session.ws_connect(daemon.ws_url, headers=bearer) as newcomer:
            await _ping(newcomer, 1)
