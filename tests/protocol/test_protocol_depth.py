"""Deeply nested frames: each encoding's nesting is measured before the frame is
decoded, so that a frame nested past ``max_frame_depth`` (100,000 ``[`` included) is
an "invalid_frame" error naming the limit, before authentication too, the connection
goes on, and nothing reaches the decoder's recursion or the daemon's log."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec
import pytest
from daemon_harness import DaemonProcess

from fiefdom.protocol import ControlSettings
from fiefdom.protocol._depth import json_too_deep, msgpack_too_deep

LIMIT = ControlSettings().max_frame_depth


def _nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


async def _receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=10)
    assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
    if msg.type is aiohttp.WSMsgType.BINARY:
        decoded: dict[str, Any] = msgspec.msgpack.decode(msg.data)
    else:
        decoded = msgspec.json.decode(msg.data)
    return decoded


def _assert_too_deep(answer: dict[str, Any]) -> None:
    assert (answer["type"], answer["code"], answer["id"]) == ("error", "invalid_frame", None)
    assert answer["details"]["max_depth"] == LIMIT
    assert str(LIMIT) in answer["message"]


@pytest.mark.parametrize(
    "frame",
    [
        b"[" * 100_000,
        b"{" * 100_000,
        b'{"type": "ping", "id": ' + b"[" * 100_000,
        b"\x91" * 100_000,
    ],
    ids=["json-arrays", "json-objects", "json-in-a-field", "msgpack-arrays"],
)
async def test_a_deep_frame_before_hello_is_an_invalid_frame(
    daemon: DaemonProcess, frame: bytes
) -> None:
    """100,000 opening brackets sent before authenticating get "invalid_frame" naming the
    depth limit; the same connection then says hello and is served."""
    async with aiohttp.ClientSession() as session, session.ws_connect(daemon.ws_url) as ws:
        if frame.startswith(b"\x91"):
            await ws.send_bytes(frame)
        else:
            await ws.send_str(frame.decode())
        _assert_too_deep(await _receive(ws))
        await ws.send_json({"type": "hello", "id": 1, "token": daemon.token})
        assert (await ws.receive_json(timeout=10))["type"] == "welcome"
        await ws.send_json({"type": "ping", "id": 2})
        assert await ws.receive_json(timeout=10) == {"type": "pong", "id": 2}
    assert "RecursionError" not in daemon.log()
    assert "Traceback" not in daemon.log()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
async def test_the_limit_is_exact_in_a_request_field(daemon: DaemonProcess, binary: bool) -> None:
    """A call whose message makes the frame nest exactly max_frame_depth deep reaches its
    handler; one level more is refused as "invalid_frame"."""
    encode = msgspec.msgpack.encode if binary else msgspec.json.encode
    async with aiohttp.ClientSession() as session, session.ws_connect(daemon.ws_url) as ws:
        await ws.send_json({"type": "hello", "id": 1, "token": daemon.token})
        assert (await ws.receive_json(timeout=10))["type"] == "welcome"
        for extra, refused in ((0, False), (1, True)):
            # The frame itself is one level, its message the others.
            message = _nested(LIMIT - 1 + extra)
            frame = {"type": "call", "id": 7, "target": "echo", "message_type": "Echo"}
            data = encode({**frame, "message": message})
            if binary:
                await ws.send_bytes(data)
            else:
                await ws.send_str(data.decode())
            answer = await _receive(ws)
            if refused:
                _assert_too_deep(answer)
            else:
                # Through the depth check: the handler decodes it (an Echo's payload
                # is an object, so this nesting is the handler's invalid_message).
                assert answer["id"] == 7, answer
                assert answer.get("code") != "invalid_frame", answer


async def test_brackets_inside_strings_do_not_nest(daemon: DaemonProcess) -> None:
    """A string full of brackets (and escaped quotes) counts for nothing: such a hello is
    welcomed."""
    # Encoded, each quote is escaped (\\") and the backslash too (\\\\).
    client = '[{"' * 1000 + "\\" + "[" * 1000
    frame = {"type": "hello", "id": 1, "token": daemon.token, "client": client}
    async with aiohttp.ClientSession() as session, session.ws_connect(daemon.ws_url) as ws:
        await ws.send_str(msgspec.json.encode(frame).decode())
        assert (await ws.receive_json(timeout=10))["type"] == "welcome"


def test_the_depth_measures_agree_with_the_decoders_on_nested_values() -> None:
    """Each measure says "too deep" exactly when a value nests past the limit, for arrays,
    maps, strings with brackets, and empty containers side by side."""
    values: list[Any] = [_nested(depth) for depth in range(LIMIT - 3, LIMIT + 3)] + [
        [[]] * 500,
        [{"a": "[[[[" * 50}] * 100,
        {"k": [[1, [2, [3]]]] * 100, "s": "]]]]" * 100},
        ["x" * 40, b"y" * 300, 1.5, -1, 2**40, None, True] * 50,
    ]
    for value in values:
        depth = _depth(value)
        for limit in (1, 2, 4, LIMIT):
            assert json_too_deep(msgspec.json.encode(value), limit) is (depth > limit), value
            assert msgpack_too_deep(msgspec.msgpack.encode(value), limit) is (depth > limit)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0
