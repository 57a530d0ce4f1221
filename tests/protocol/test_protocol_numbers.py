"""Numbers on the wire are bounded where they are decoded: a request id, a
subscription id or a protocol version past a signed 64-bit integer (or a JSON number
no float can hold) is "invalid_message" naming the field, never echoed back."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec
import pytest
from daemon_harness import DaemonProcess

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


async def _answer(daemon: DaemonProcess, frame: bytes, binary: bool) -> dict[str, Any]:
    """Send ``frame`` after a hello on a raw websocket and return the decoded answer."""
    async with aiohttp.ClientSession() as session, session.ws_connect(daemon.ws_url) as ws:
        await ws.send_json({"type": "hello", "id": 1, "token": daemon.token})
        assert (await ws.receive_json(timeout=10))["type"] == "welcome"
        if binary:
            await ws.send_bytes(frame)
        else:
            await ws.send_str(frame.decode())
        reply = await ws.receive(timeout=10)
        # The connection goes on after the error.
        await ws.send_json({"type": "ping", "id": 2})
        assert await ws.receive_json(timeout=10) == {"type": "pong", "id": 2}
    if binary:
        decoded: dict[str, Any] = msgspec.msgpack.decode(reply.data)
    else:
        decoded = msgspec.json.decode(reply.data)
    return decoded


# MessagePack carries integers from -2**63 to 2**64 - 1; JSON any integer at all.
BOTH = [
    ({"type": "ping", "id": INT64_MAX + 1}, "$.id"),
    ({"type": "ping", "id": 2**64 - 1}, "$.id"),
    ({"type": "unsubscribe", "id": 3, "subscription": INT64_MAX + 1}, "$.subscription"),
    ({"type": "hello", "id": 3, "version": 2**64 - 1}, "$.version"),
]
JSON_ONLY = [
    ({"type": "ping", "id": INT64_MIN - 1}, "$.id"),
    ({"type": "status", "id": 2**64}, "$.id"),
    ({"type": "hello", "id": 3, "version": 10**30}, "$.version"),
]
OUT_OF_RANGE = [
    pytest.param(frame, path, binary, id=f"{'msgpack' if binary else 'json'}-{frame}")
    for frame, path in BOTH + JSON_ONLY
    for binary in ([False, True] if (frame, path) in BOTH else [False])
]


@pytest.mark.parametrize(("frame", "path", "binary"), OUT_OF_RANGE)
async def test_integers_past_64_bits_are_invalid_messages(
    daemon: DaemonProcess, frame: dict[str, Any], path: str, binary: bool
) -> None:
    """An integer field past a signed 64-bit value is "invalid_message" naming its path;
    the error names the frame's id only when that id is itself in range."""
    data = msgspec.msgpack.encode(frame) if binary else msgspec.json.encode(frame)
    answer = await _answer(daemon, data, binary)
    assert (answer["type"], answer["code"]) == ("error", "invalid_message"), answer
    assert answer["details"]["path"] == path
    frame_id = frame["id"]
    assert answer["id"] == (frame_id if INT64_MIN <= frame_id <= INT64_MAX else None)


@pytest.mark.parametrize("frame_id", [INT64_MAX, INT64_MIN, 0], ids=["max", "min", "zero"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
async def test_ids_at_the_bounds_are_answered(
    daemon: DaemonProcess, frame_id: int, binary: bool
) -> None:
    """An id at either end of the signed 64-bit range is a valid id, named by its reply."""
    frame = {"type": "ping", "id": frame_id}
    data = msgspec.msgpack.encode(frame) if binary else msgspec.json.encode(frame)
    assert await _answer(daemon, data, binary) == {"type": "pong", "id": frame_id}


@pytest.mark.parametrize("text", ["1e400", "-1e400"])
async def test_a_json_number_no_float_holds_is_an_invalid_message(
    daemon: DaemonProcess, text: str
) -> None:
    """A JSON number past a float's range (1e400) in a known message is "invalid_message"
    naming the field and the frame's id, not an undecodable frame."""
    frame = b'{"type": "call", "id": 5, "target": "counter", "message_type": "GetCount", '
    frame += b'"timeout": ' + text.encode() + b"}"
    answer = await _answer(daemon, frame, binary=False)
    assert (answer["type"], answer["code"], answer["id"]) == ("error", "invalid_message", 5)
    assert answer["details"]["path"] == "$.timeout"
