"""Hypothesis fuzzing of control-channel frames against a real daemon: random bytes,
random JSON, and known messages with a field set to a random value. Each frame gets
the answer the protocol prescribes for it, worked out here from the frame alone:
``invalid_frame`` (not an object), ``unknown_type``, ``invalid_message`` (a known
type, ill-formed), ``forbidden`` (too weak a token), or for a well-formed request
its reply or one of the errors it may meet. ``internal`` is never one of them.
Oversized frames close their connection with 1009. The daemon keeps serving."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest
from daemon_harness import TOKENS, TOKENS_TOML, DaemonProcess, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_samples import RANK, REPLIES, ROLES, SAMPLES

from fiefdom.protocol import ClientMessage

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


@dataclass(frozen=True)
class Expected:
    """How the daemon must answer a frame: ``reply`` (a frame type) or an error with
    one of ``codes``, naming ``frame_id``; ``closes`` when the connection then ends."""

    frame_id: int | None
    codes: frozenset[str]
    reply: str | None = None
    closes: bool = False


def _request_id(value: object) -> int | None:
    """The id an error must name: the frame's, when it is a valid id (a signed 64-bit integer)."""
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    return None


def expected(data: bytes, binary: bool, role: str) -> Expected:
    """The answer the protocol prescribes for ``data``, sent after a hello with ``role``."""
    decode = msgspec.msgpack.decode if binary else msgspec.json.decode
    try:
        value = decode(data)
    except msgspec.DecodeError:
        return Expected(None, frozenset({"invalid_frame"}))
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        return Expected(None, frozenset({"invalid_frame"}))
    frame_id = _request_id(value.get("id"))
    tag = value.get("type")
    if not isinstance(tag, str) or tag not in ROLES:
        return Expected(frame_id, frozenset({"unknown_type"}))
    try:
        request = decode(data, type=ClientMessage)
    except msgspec.ValidationError:
        return Expected(frame_id, frozenset({"invalid_message"}))
    if RANK[ROLES[tag]] > RANK[role]:
        return Expected(request.id, frozenset({"forbidden"}))
    if tag == "hello":
        if value.get("version", 1) != 1:
            return Expected(request.id, frozenset({"version_mismatch"}))
        token = value.get("token")
        if token is not None and token not in TOKENS.values():
            return Expected(request.id, frozenset({"unauthenticated"}), closes=True)
    reply, codes = REPLIES[tag]
    return Expected(request.id, codes - {"version_mismatch", "unauthenticated"}, reply)


async def _hello(ws: aiohttp.ClientWebSocketResponse, role: str = "read") -> None:
    await ws.send_json({"type": "hello", "id": 0, "token": TOKENS[role]})
    assert (await ws.receive_json())["type"] == "welcome"


def _decoded(msg: aiohttp.WSMessage) -> dict[str, Any]:
    data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
    decoded: dict[str, Any] = (
        msgspec.msgpack.decode(data) if msg.type is aiohttp.WSMsgType.BINARY else json.loads(data)
    )
    return decoded


async def _reply(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    """The next frame that is not a subscription event (a fuzzed subscribe may start some)."""
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY) and _decoded(msg).get(
            "type"
        ) in ("event", "dropped"):
            continue
        return msg


async def _exchange(daemon: DaemonProcess, frame: bytes | str, role: str = "read") -> None:
    data = frame.encode() if isinstance(frame, str) else frame
    binary = isinstance(frame, bytes)
    want = expected(data, binary, role)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(daemon.ws_url, max_msg_size=0) as ws:
            await _hello(ws, role)
            if binary:
                await ws.send_bytes(data)
            else:
                await ws.send_str(frame if isinstance(frame, str) else frame.decode())
            msg = await _reply(ws)
            assert msg.type is (aiohttp.WSMsgType.BINARY if binary else aiohttp.WSMsgType.TEXT)
            answer = _decoded(msg)
            if answer["type"] == "error":
                assert answer["code"] != "internal", answer
                assert answer["code"] in want.codes, (answer, want)
                assert answer["id"] == want.frame_id, (answer, want)
            else:
                assert (answer["type"], answer["id"]) == (want.reply, want.frame_id), answer
            if want.closes:
                closing = await _reply(ws)
                assert closing.type is aiohttp.WSMsgType.CLOSE
            else:
                # The same connection is still usable.
                await ws.send_json({"type": "ping", "id": 424242})
                pong = await _reply(ws)
                assert json.loads(pong.data) == {"type": "pong", "id": 424242}
        # And the daemon still serves other clients.
        async with session.ws_connect(daemon.ws_url) as other:
            await _hello(other)


def test_the_oracle_knows_every_request_type() -> None:
    """The expectations above cover every request type, each with its role and reply."""
    assert set(ROLES) == set(REPLIES) == set(SAMPLES)
    assert all("internal" not in codes for _, codes in REPLIES.values())


@FUZZ
@given(frame=st.binary(max_size=512))
def test_random_bytes_in_binary_frames(daemon: DaemonProcess, frame: bytes) -> None:
    """Random bytes as a MessagePack frame get the error their content calls for."""
    asyncio.run(_exchange(daemon, frame))


@FUZZ
@given(value=json_values)
def test_random_json_in_text_frames(daemon: DaemonProcess, value: Any) -> None:
    """Random JSON values as a text frame get the error their content calls for."""
    asyncio.run(_exchange(daemon, json.dumps(value)))


FIELDS = st.sampled_from(["id", "target", "job_id", "queue", "topics", "version", "token", "x"])
# Fuzzed with an admin token, every handler sees the frames, except "stop" and "drain":
# a fuzzed frame that happens to be valid would stop (or drain) the daemon the other
# examples run against. A read token is refused them before any handler runs.
ADMIN_TAGS = sorted(set(SAMPLES) - {"stop", "drain"})


def _known_type_exchange(
    daemon: DaemonProcess, role: str, tag: str, field: str, value: Any, binary: bool
) -> None:
    frame = {"type": tag, "id": 7, **SAMPLES[tag], field: value}
    encoded: bytes | str = msgspec.msgpack.encode(frame) if binary else json.dumps(frame)
    asyncio.run(_exchange(daemon, encoded, role))


@FUZZ
@given(tag=st.sampled_from(sorted(SAMPLES)), field=FIELDS, value=json_values, binary=st.booleans())
def test_known_types_with_wrong_field_types(
    daemon: DaemonProcess, tag: str, field: str, value: Any, binary: bool
) -> None:
    """A known message with a field set to a random value gets "invalid_message" naming
    the frame's id when ill-formed; a well-formed one is refused or answered per its role."""
    _known_type_exchange(daemon, "read", tag, field, value, binary)


@FUZZ
@given(tag=st.sampled_from(ADMIN_TAGS), field=FIELDS, value=json_values, binary=st.booleans())
def test_known_types_with_wrong_field_types_reach_the_handlers(
    daemon: DaemonProcess, tag: str, field: str, value: Any, binary: bool
) -> None:
    """With an admin token the operate and admin handlers get the fuzzed frames: each is
    answered with its reply or an error it may meet, never "internal"."""
    _known_type_exchange(daemon, "admin", tag, field, value, binary)


@pytest.mark.parametrize(
    ("tag", "field", "value", "code"),
    [
        ("jobs.get", "job_id", 2**63, "invalid_message"),
        ("jobs.get", "job_id", 0, "invalid_message"),
        ("jobs.retry", "job_id", 2**64 - 1, "invalid_message"),
        ("jobs.cancel", "job_id", -1, "invalid_message"),
        ("jobs.list", "queue", "", "invalid_message"),
        ("jobs.list", "state", "asleep", "invalid_message"),
        ("jobs.list", "after_id", 2**63, "invalid_message"),
        ("jobs.list", "limit", 0, "invalid_message"),
        ("jobs.enqueue", "queue", "q" * 201, "invalid_message"),
        ("jobs.enqueue", "priority", 2**15, "invalid_message"),
        ("jobs.enqueue", "delay", -1.0, "invalid_message"),
        ("jobs.enqueue", "delay", 1e300, "invalid_message"),
        ("call", "timeout", 1e300, "invalid_message"),
        ("queues.pause", "queue", "", "invalid_message"),
        ("queues.drain", "timeout", -5, "invalid_message"),
        ("actors.stop", "timeout", -5, "invalid_message"),
        ("jobs.get", "job_id", 2**63 - 1, "not_found"),
        ("jobs.retry", "job_id", 2**63 - 1, "not_found"),
        ("jobs.cancel", "job_id", 2**63 - 1, "not_found"),
        ("queues.pause", "queue", "nobody-serves-this", "job_error"),
        ("unsubscribe", "subscription", 2**63, "invalid_message"),
        ("unsubscribe", "subscription", 2**63 - 1, "not_found"),
    ],
    ids=lambda v: str(v)[:12],
)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
async def test_values_the_store_cannot_take_are_named_errors(
    daemon: DaemonProcess, tag: str, field: str, value: object, code: str, binary: bool
) -> None:
    """Values past what the store and the engine take (64-bit ids, 16-bit priorities,
    queue names, huge or negative seconds) are refused with a specific code, not internal."""
    frame = {"type": tag, "id": 9, **SAMPLES[tag], field: value}
    async with aiohttp.ClientSession() as session, session.ws_connect(daemon.ws_url) as ws:
        await _hello(ws, "admin")
        if binary:
            await ws.send_bytes(msgspec.msgpack.encode(frame))
        else:
            await ws.send_str(json.dumps(frame))
        answer = _decoded(await _reply(ws))
    assert (answer["type"], answer["code"], answer["id"]) == ("error", code, 9), answer
    if code == "invalid_message":
        assert answer["details"]["path"] == f"$.{field}"


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(extra=st.integers(min_value=1, max_value=MAX_FRAME), binary=st.booleans())
def test_oversized_frames_close_the_connection_only(
    daemon: DaemonProcess, extra: int, binary: bool
) -> None:
    """A frame over the size limit closes that connection with 1009, unanswered; other
    clients are served."""
    size = MAX_FRAME + extra

    async def exchange() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(daemon.ws_url, max_msg_size=0) as ws:
                await _hello(ws)
                if binary:
                    await ws.send_bytes(b"\x00" * size)
                else:
                    await ws.send_str(json.dumps({"type": "ping", "id": 1, "pad": "x" * size}))
                closing = await ws.receive(timeout=10)
                assert closing.type is aiohttp.WSMsgType.CLOSE, closing
                assert closing.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
            async with session.ws_connect(daemon.ws_url) as other:
                await _hello(other)

    asyncio.run(exchange())
