"""The control port's accept loop on real sockets (GUARANTEES 004/7, a flood of
connections): a connection waiting while the process has no file descriptor left is
accepted once one is free, the failure logged meanwhile; TLS handshakes past the
limit cut off the oldest ones, even in one burst; a connection whose admission fails
is closed and the port goes on; a TLS connection still in its handshake counts
against the admission's limit, and when it is the one chosen to make room, it is
closed as soon as its handshake completes."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import resource
import socket
import ssl
from collections.abc import Iterator

import aiohttp
import anyio
import trustme
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from fiefdom._admission import Admission, CappedSite, Listener, bind
from slow_sockets import close_writers

GUARD = 30.0  # a hang guard, never a speed requirement


class Made(asyncio.Protocol):
    """Hands over the connections made, and says when they are gone."""

    made: asyncio.Queue[asyncio.BaseTransport]
    lost: asyncio.Queue[None]

    @classmethod
    def reset(cls) -> None:
        cls.made, cls.lost = asyncio.Queue(), asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Made.made.put_nowait(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        Made.lost.put_nowait(None)


class Signal(logging.Handler):
    """Sets ``event`` on a record of its logger."""

    def __init__(self, event: asyncio.Event) -> None:
        super().__init__()
        self.event = event
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.event.set()


@contextlib.contextmanager
def _no_file_descriptor_left() -> Iterator[list[int]]:
    """Every file descriptor this process may open, open (the soft limit lowered to
    just past the highest one in use, the gaps filled); yields those it opened."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    held: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    try:
        with contextlib.suppress(OSError):
            while True:
                held.append(os.dup(0))
        yield held
    finally:
        for fd in held:
            with contextlib.suppress(OSError):
                os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (before, hard))


async def test_a_connection_waiting_while_no_descriptor_is_left_is_accepted_once_one_is() -> None:
    loop = asyncio.get_running_loop()
    addresses = await loop.getaddrinfo("127.0.0.1", 0, type=socket.SOCK_STREAM)
    sockets = bind(addresses, 8)
    Made.reset()
    failed = asyncio.Event()
    signal = Signal(failed)
    logger = logging.getLogger("fiefdom.accept")
    logger.addHandler(signal)
    # In the backlog before the listener runs: connected as far as the client knows.
    client = socket.create_connection(sockets[0].getsockname()[:2])
    listener: Listener | None = None
    try:
        with _no_file_descriptor_left() as held:
            listener = Listener(
                sockets, Made, ssl_context=None, handshake_timeout=None, max_handshakes=1
            )
            with anyio.fail_after(GUARD):
                await failed.wait()
            assert Made.made.empty()
            os.close(held.pop())  # one descriptor free
            with anyio.fail_after(GUARD):
                transport = await Made.made.get()
        assert "accepting a connection failed: Too many open files" in signal.messages
        transport.close()
    finally:
        logger.removeHandler(signal)
        client.close()
        if listener is not None:
            listener.close()
            await listener.wait_closed()
        for sock in sockets:
            sock.close()


async def test_past_its_handshakes_the_listener_cuts_off_the_oldest_ones() -> None:
    """With two TLS handshakes allowed, five connections that send nothing, all in the
    backlog when the listener starts, leave the two newest: the three oldest are closed
    (their clients read the end), and the fourth completes its handshake when it
    starts one."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    loop = asyncio.get_running_loop()
    sockets = bind(await loop.getaddrinfo("127.0.0.1", 0, type=socket.SOCK_STREAM), 8)
    host, port = sockets[0].getsockname()[:2]
    Made.reset()
    clients = [await asyncio.open_connection(host, port) for _ in range(5)]
    listener = Listener(
        sockets, Made, ssl_context=server_context, handshake_timeout=600.0, max_handshakes=2
    )
    try:
        with anyio.fail_after(GUARD):
            for reader, _ in clients[:3]:
                assert await reader.read() == b""
            await clients[3][1].start_tls(client_context, server_hostname="127.0.0.1")
            transport = await Made.made.get()
            transport.close()
            await Made.lost.get()
    finally:
        await close_writers([writer for _, writer in clients])
        listener.close()
        await listener.wait_closed()


async def test_a_connection_whose_admission_fails_is_closed_and_the_next_one_served() -> None:
    """A bug admitting one connection (``admit`` raises) closes that connection and
    logs it; the listener goes on and serves the next one."""
    loop = asyncio.get_running_loop()
    sockets = bind(await loop.getaddrinfo("127.0.0.1", 0, type=socket.SOCK_STREAM), 8)
    host, port = sockets[0].getsockname()[:2]
    Made.reset()
    calls = 0

    def admit() -> asyncio.BaseProtocol:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a broken admission")
        return Made()

    logged = asyncio.Event()
    signal = Signal(logged)
    logger = logging.getLogger("fiefdom.accept")
    logger.addHandler(signal)
    listener = Listener(sockets, admit, ssl_context=None, handshake_timeout=None, max_handshakes=1)
    writers: list[asyncio.StreamWriter] = []
    try:
        with anyio.fail_after(GUARD):
            first, writer = await asyncio.open_connection(host, port)
            writers.append(writer)
            assert await first.read() == b""
            _, writer = await asyncio.open_connection(host, port)
            writers.append(writer)
            transport = await Made.made.get()
            transport.close()
            await Made.lost.get()
        assert signal.messages == ["admitting an accepted connection failed"]
    finally:
        logger.removeHandler(signal)
        await close_writers(writers)
        listener.close()
        await listener.wait_closed()


class Watched(Admission):
    """An admission that hands over each connection it lets in."""

    def __init__(self, limit: int, probes: int) -> None:
        self.refused: collections.Counter[str] = collections.Counter()
        super().__init__(limit, probes, lambda reason: self.refused.update([reason]))
        self.admitted: asyncio.Queue[RequestHandler] = asyncio.Queue()

    def _made(self, handler: RequestHandler) -> RequestHandler:
        self.admitted.put_nowait(handler)
        return super()._made(handler)


async def test_a_connection_chosen_to_make_room_during_its_tls_handshake_is_closed_once_made() -> (
    None
):
    """Room for one connection (and one probe), TLS: a client that connects and does
    not start its handshake holds the one place. The next client's request is served,
    and the first, which has no request under way, is the one chosen to make room:
    as it cannot be closed before its connection is made, it is closed as soon as its
    handshake completes (its client reads the end) instead of staying open for good."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    admission = Watched(limit=1, probes=1)
    app = web.Application(middlewares=[admission.middleware])
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = CappedSite(
        runner, "127.0.0.1", 0, admission, ssl_context=server_context, handshake_timeout=600.0
    )
    await site.start()
    writers: list[asyncio.StreamWriter] = []
    try:
        with anyio.fail_after(GUARD):
            first, writer = await asyncio.open_connection("127.0.0.1", site.port)
            writers.append(writer)
            await admission.admitted.get()  # in its handshake, which it has not begun
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"https://127.0.0.1:{site.port}/", ssl=client_context) as response,
            ):
                assert response.status == 200
                assert await response.text() == "ok"
            assert admission.refused == {"idle_closed": 1}
            await writer.start_tls(client_context, server_hostname="127.0.0.1")
            assert await first.read() == b""
    finally:
        await close_writers(writers)
        await runner.cleanup()
