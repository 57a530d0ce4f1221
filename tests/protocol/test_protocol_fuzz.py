"""Hypothesis fuzzing of control-channel frames against a real daemon: random bytes,
random JSON, known messages with wrong field types and oversized frames. Each gets
a typed error (or, for an oversized frame, a close), and the daemon keeps serving."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import msgspec
import pytest
from daemon_harness import TOKENS, TOKENS_TOML, DaemonProcess, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_samples import SAMPLES

from fiefdom.protocol import ErrorCode, ServerMessage

MAX_FRAME = 64 * 1024
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon with a small frame limit and a token of each role."""
    config = write_config(
        tmp_path_factory.mktemp("fuzz"),
        control=f"max_frame_bytes = {MAX_FRAME}\n" + TOKENS_TOML,
    )
    with DaemonProcess(config, token=TOKENS["admin"]) as proc:
        yield proc


async def _hello(ws: aiohttp.ClientWebSocketResponse, role: str = "read") -> None:
    await ws.send_json({"type": "hello", "id": 0, "token": TOKENS[role]})
    assert (await ws.receive_json())["type"] == "welcome"


async def _reply(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    """The next frame that is not a subscription event (a fuzzed subscribe may start some)."""
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type is aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("type") in (
            "event",
            "dropped",
        ):
            continue
        return msg


async def _exchange(
    daemon: DaemonProcess, frame: bytes | str, frame_id: Any = None, role: str = "read"
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(daemon.ws_url, max_msg_size=0) as ws:
            await _hello(ws, role)
            if isinstance(frame, str):
                await ws.send_str(frame)
            else:
                await ws.send_bytes(frame)
            msg = await _reply(ws)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                assert len(frame) > MAX_FRAME, "only an oversized frame may close the connection"
            else:
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                decoded = (
                    msgspec.msgpack.decode(data, type=ServerMessage)
                    if msg.type is aiohttp.WSMsgType.BINARY
                    else msgspec.json.decode(data, type=ServerMessage)
                )
                if decoded.__struct_config__.tag == "error":
                    assert ErrorCode(decoded.code)
                    assert decoded.id in (None, frame_id)
                else:
                    # A fuzzed frame that happened to be a valid request gets its reply.
                    assert decoded.id == frame_id
                # The same connection is still usable.
                await ws.send_json({"type": "ping", "id": 424242})
                pong = await _reply(ws)
                assert json.loads(pong.data) == {"type": "pong", "id": 424242}
        # And the daemon still serves other clients.
        async with session.ws_connect(daemon.ws_url) as other:
            await _hello(other)


@FUZZ
@given(frame=st.binary(max_size=512))
def test_random_bytes_in_binary_frames(daemon: DaemonProcess, frame: bytes) -> None:
    """Random bytes as a MessagePack frame get a typed error."""
    asyncio.run(_exchange(daemon, frame))


@FUZZ
@given(value=json_values)
def test_random_json_in_text_frames(daemon: DaemonProcess, value: Any) -> None:
    """Random JSON values as a text frame get a typed error."""
    asyncio.run(
        _exchange(daemon, json.dumps(value), value.get("id") if isinstance(value, dict) else None)
    )


FIELDS = st.sampled_from(["id", "target", "job_id", "queue", "topics", "version", "token", "x"])
# Fuzzed with an admin token, every handler sees the frames, except "stop" and "drain":
# a fuzzed frame that happens to be valid would stop (or drain) the daemon the other
# examples run against. A read token is refused them before any handler runs.
ADMIN_TAGS = sorted(set(SAMPLES) - {"stop", "drain"})


def _known_type_exchange(
    daemon: DaemonProcess, role: str, tag: str, field: str, value: Any, binary: bool
) -> None:
    frame = {"type": tag, "id": 7, **SAMPLES[tag], field: value}
    frame_id = value if field == "id" else 7
    encoded: bytes | str = msgspec.msgpack.encode(frame) if binary else json.dumps(frame)
    asyncio.run(_exchange(daemon, encoded, frame_id, role))


@FUZZ
@given(tag=st.sampled_from(sorted(SAMPLES)), field=FIELDS, value=json_values, binary=st.booleans())
def test_known_types_with_wrong_field_types(
    daemon: DaemonProcess, tag: str, field: str, value: Any, binary: bool
) -> None:
    """A known message with a field of a random value gets a typed error naming it (or a reply)."""
    _known_type_exchange(daemon, "read", tag, field, value, binary)


@FUZZ
@given(tag=st.sampled_from(ADMIN_TAGS), field=FIELDS, value=json_values, binary=st.booleans())
def test_known_types_with_wrong_field_types_reach_the_handlers(
    daemon: DaemonProcess, tag: str, field: str, value: Any, binary: bool
) -> None:
    """With an admin token the operate and admin handlers get the fuzzed frames: typed errors."""
    _known_type_exchange(daemon, "admin", tag, field, value, binary)


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(extra=st.integers(min_value=1, max_value=MAX_FRAME), binary=st.booleans())
def test_oversized_frames_close_the_connection_only(
    daemon: DaemonProcess, extra: int, binary: bool
) -> None:
    """A frame over the size limit closes that connection; other clients are served."""
    size = MAX_FRAME + extra
    frame: bytes | str = (
        b"\x00" * size if binary else json.dumps({"type": "ping", "pad": "x" * size})
    )
    asyncio.run(_exchange(daemon, frame))
