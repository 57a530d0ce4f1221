"""Authentication at the boundary: every endpoint but /healthz and every message type
is refused without a token and with a wrong token (too weak a role: test_protocol_roles)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import msgspec
import pytest
from daemon_harness import TOKENS, TOKENS_TOML, DaemonProcess, write_config
from protocol_samples import SAMPLES

import fiefdom
from fiefdom.protocol._messages import CLIENT_TYPES, ENDPOINT_ROLE


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon with one token per role."""
    config = write_config(tmp_path_factory.mktemp("auth"), control=TOKENS_TOML)
    with DaemonProcess(config, token=TOKENS["admin"]) as proc:
        yield proc


def test_every_message_type_has_a_sample() -> None:
    """The samples cover every request type of the union (so the tests below send each)."""
    assert set(SAMPLES) == set(CLIENT_TYPES)


@pytest.mark.parametrize("path", sorted(set(ENDPOINT_ROLE) - {"/metrics"}))
@pytest.mark.parametrize(
    "token", [None, "wrong-token-0123456789", ""], ids=["none", "wrong", "empty"]
)
def test_endpoints_refuse_a_missing_or_wrong_token(
    daemon: DaemonProcess, path: str, token: str | None
) -> None:
    """Each guarded endpoint answers 401 with a typed body without a valid token
    (/metrics only when it is guarded: tests/daemon/test_daemon_operator.py)."""
    status, body = daemon.http(path, token=token)
    assert status == 401
    assert msgspec.json.decode(body)["code"] == "unauthenticated"


@pytest.mark.parametrize("path", ["/metrics", "/schema"])
def test_endpoints_accept_the_weakest_role(daemon: DaemonProcess, path: str) -> None:
    """Every guarded endpoint needs only "read" (the weakest role), and "read" passes."""
    assert ENDPOINT_ROLE[path] == "read"
    assert daemon.http(path, token=TOKENS["read"])[0] == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_need_no_token(daemon: DaemonProcess, path: str) -> None:
    """/healthz and /readyz answer without a token (load balancers and supervisors
    carry none)."""
    assert daemon.http(path, token=None)[0] == 200


async def test_websocket_upgrade_with_a_wrong_header_token_is_refused(
    daemon: DaemonProcess,
) -> None:
    """A websocket upgrade carrying a wrong bearer token is refused with 401."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(
                daemon.ws_url, headers={"Authorization": "Bearer wrong-token-0123456789"}
            )
    assert info.value.status == 401


async def _frame(ws: aiohttp.ClientWebSocketResponse, tag: str, frame_id: int) -> dict[str, Any]:
    await ws.send_json({"type": tag, "id": frame_id, **SAMPLES[tag]})
    reply: dict[str, Any] = await ws.receive_json()
    return reply


async def test_every_message_type_is_refused_before_hello(daemon: DaemonProcess) -> None:
    """Without a hello, every request gets "unauthenticated" and the connection stays open."""
    async with aiohttp.ClientSession() as session, session.ws_connect(daemon.ws_url) as ws:
        for frame_id, tag in enumerate(sorted(SAMPLES), start=1):
            if tag == "hello":
                continue
            reply = await _frame(ws, tag, frame_id)
            assert (reply["type"], reply["code"], reply["id"]) == (
                "error",
                "unauthenticated",
                frame_id,
            ), tag
        await ws.send_json({"type": "hello", "id": 99, "token": TOKENS["read"]})
        assert (await ws.receive_json())["type"] == "welcome"


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789"], ids=["none", "wrong"])
async def test_hello_with_a_missing_or_wrong_token_is_refused(
    daemon: DaemonProcess, token: str | None
) -> None:
    """A hello without a valid token gets "unauthenticated" and the connection is closed."""
    async with aiohttp.ClientSession() as session, session.ws_connect(daemon.ws_url) as ws:
        await ws.send_json({"type": "hello", "id": 1, "token": token})
        reply = await ws.receive_json()
        assert (reply["code"], reply["id"]) == ("unauthenticated", 1)
        closing = await ws.receive()
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    with pytest.raises(fiefdom.ControlError) as info:
        async with fiefdom.connect(daemon.url, token=token):
            pass
    assert info.value.code == "unauthenticated"


def test_admin_token_is_not_written_when_tokens_are_configured(daemon: DaemonProcess) -> None:
    """With tokens in the configuration the daemon writes no admin.token of its own."""
    assert not (daemon.data / "admin.token").exists()
