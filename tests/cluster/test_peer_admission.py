"""The peer server's admission, on real sockets (GUARANTEES 004/7, a flood of
connections): sockets that never present the cluster's secret (sending half a
request, or nothing) are closed oldest first once there are too many, a peer's link
stays up and answers through the flood, and a connection idle past the header
timeout is closed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import anyio
from peer_app import Account

import fiefdom
from fiefdom.actors import Domain
from fiefdom.cluster._peer_server import MAX_PEER_CONNECTIONS, PeerServer
from fiefdom.cluster._peer_wire import DECODER, ENCODER, PEER_PATH, AskFrame, ErrorFrame
from fiefdom.storage import leases
from slow_sockets import close_writers, slow_sockets

GUARD = 30.0  # a hang guard, never a speed requirement
SECRET = "s3cret"
HALF_A_REQUEST = b"GET /peer HTTP/1.1\r\nHost: x\r\n"


class Host:
    """A node with no domains: every ask is answered with an error frame."""

    node = "node-under-test"

    @property
    def domains(self) -> Mapping[str, Domain[Any, Any]]:
        return {}

    def authorized(self, header: str) -> bool:
        return header == f"Bearer {SECRET}"


@contextlib.asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[tuple[PeerServer, int]]:
    server = PeerServer(Host(), **settings)
    port = await server.start("127.0.0.1", 0)
    try:
        yield server, port
    finally:
        await server.stop()


async def _ask_nowhere(ws: aiohttp.ClientWebSocketResponse, frame_id: int) -> ErrorFrame:
    """An ask for a domain the node does not have: its error frame comes back."""
    frame = AskFrame(
        id=frame_id, domain="nowhere", key="k", type="t", body=b"", timeout=5.0, chain=[]
    )
    await ws.send_bytes(ENCODER.encode([frame]))
    message = await ws.receive()
    assert message.type is aiohttp.WSMsgType.BINARY, message
    (reply,) = DECODER.decode(message.data)
    assert isinstance(reply, ErrorFrame), reply
    return reply


async def test_a_flood_of_silent_sockets_closes_the_oldest_and_the_peer_link_stays_up() -> None:
    """With room for 5 connections, a peer's link and 9 sockets holding half a request:
    the 5 oldest of those are closed at once (long before the 600 s header timeout),
    the 4 newest stay open, and the link still answers, before and after."""
    async with (
        serving(max_connections=5, header_timeout=600.0) as (server, port),
        aiohttp.ClientSession() as session,
    ):
        url = f"http://127.0.0.1:{port}{PEER_PATH}"
        headers = {"Authorization": f"Bearer {SECRET}"}
        async with session.ws_connect(url, headers=headers) as link:
            assert (await _ask_nowhere(link, 1)).code
            async with slow_sockets("127.0.0.1", port, 9, HALF_A_REQUEST) as opened:
                with anyio.fail_after(GUARD):
                    for reader, _ in opened[:5]:
                        assert await reader.read() == b""
                    assert (await _ask_nowhere(link, 2)).code
                assert server.refused["idle_closed"] == 5
                for reader, _ in opened[5:]:
                    assert not reader.at_eof()


async def test_a_socket_that_sends_nothing_is_closed_after_the_header_timeout() -> None:
    async with serving(header_timeout=0.3) as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            with anyio.fail_after(GUARD):
                assert await reader.read() == b""
            assert not server.refused  # closed by the timeout, not by admission
        finally:
            await close_writers([writer])


async def test_an_engine_counts_the_connections_its_peer_server_refused(
    store: fiefdom.Store,
) -> None:
    """An engine's peer server (256 connections at most) flooded with 260 sockets
    holding half a request closes the 4 oldest, and the engine's cluster counters
    (``fiefdom_cluster_peer_connections_refused_total`` on /metrics) count them."""
    async with fiefdom.ActorSystem(name="flooded") as system:
        domain = system.domain("acct", Account, idle_timeout=None)
        engine = fiefdom.JobEngine(store, domains={"acct": domain}, name="flooded")
        async with engine:
            (address,) = (await leases(store).addresses()).values()
            assert address is not None
            host, port = address.rsplit(":", 1)
            flood = MAX_PEER_CONNECTIONS + 4
            async with slow_sockets(host, int(port), flood, HALF_A_REQUEST) as opened:
                with anyio.fail_after(GUARD):
                    for reader, _ in opened[:4]:
                        assert await reader.read() == b""
                cluster = engine.statistics().cluster
                assert cluster is not None
                assert cluster.counters.peer_connections_refused == 4
