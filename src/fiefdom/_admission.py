"""Admission of connections to a listening HTTP port (the control port, a cluster
node's peer server), so that slow, idle or many sockets cannot use up the process's
file descriptors nor lock out the connections that matter:

- ``Listener``: accepts one connection at a time and admits it before the next. The
  event loops accept a backlog in bursts (asyncio a whole ``backlog`` at once, and
  another burst before the first one's refused sockets are closed), so a process
  that stalled for a moment under a flood of connections could hold hundreds of
  sockets more than it admits. TLS handshakes run beside the loop, at most as many
  as admission allows connections; past that, the oldest one still in its
  handshake is cut off.
- ``Admission``: at most ``limit`` connections (websockets included, and TLS ones
  still in their handshake); a newcomer past it closes the oldest connection with no
  request under way (one still sending its headers, idle between requests, or in its
  handshake, closed as soon as that completes), else it may only probe: ``probes`` more
  are kept for ``/healthz`` and ``/readyz``, and past those a connection is
  answered 503 and closed at once.

The read timeouts are aiohttp's own settings (its keep-alive timeout covers a
request's headers)."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

PROBES: Final = frozenset({"/healthz", "/readyz"})
_REFUSAL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
    b"Content-Type: application/json\r\nContent-Length: 64\r\n\r\n"
    b'{"code": "unavailable", "message": "too many connections"}      '
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_log: Final = logging.getLogger("fiefdom.accept")
# How long to wait when accept() fails for want of resources (EMFILE, ENOBUFS...):
# the connections wait in the kernel's backlog meanwhile.
ACCEPT_RETRY_DELAY: Final = 0.1
# Failures of one connection, not of the listening socket: the next one is accepted.
_GONE: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN})

Addresses = Sequence[tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]]


def bind(addresses: Addresses, backlog: int | None) -> list[socket.socket]:
    """A socket bound to each of ``addresses`` (resolved by ``getaddrinfo``; duplicates
    once), with the options asyncio's ``create_server`` sets; listening, non-blocking,
    when ``backlog`` is given. Nothing stays open when one of them fails."""
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            if backlog is not None:
                sock.listen(backlog)
                sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Listener(asyncio.AbstractServer):
    """Accepts on ``sockets`` one connection at a time; ``admit()`` gives each one's
    protocol, and ``settled(protocol)`` is told when its connection is made (its
    ``connection_made`` called) or has failed (a handshake refused or cut off). It
    serves from creation (in a running loop) until ``close()``."""

    def __init__(
        self,
        sockets: list[socket.socket],
        admit: Callable[[], asyncio.BaseProtocol],
        *,
        ssl_context: ssl.SSLContext | None,
        handshake_timeout: float | None,
        max_handshakes: int,
        settled: Callable[[asyncio.BaseProtocol], None] | None = None,
    ) -> None:
        self.sockets = sockets
        self._admit = admit
        self._settled = settled
        self._ssl = ssl_context
        self._handshake_timeout = handshake_timeout
        self._max_handshakes = max(1, max_handshakes)
        # Oldest first (dicts keep their order): the one cut off when there are too many.
        self._handshakes: dict[asyncio.Task[None], None] = {}
        self._loop = asyncio.get_running_loop()
        self._loops: list[asyncio.Task[None]] = []
        for sock in sockets:
            task = asyncio.create_task(self._accept(sock))
            # Closed once its loop is over: not while the loop still waits on it.
            task.add_done_callback(functools.partial(_close, sock))
            self._loops.append(task)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return any(not task.done() for task in self._loops)

    async def start_serving(self) -> None:
        """It serves from creation already."""

    async def serve_forever(self) -> None:
        await asyncio.gather(*self._loops)

    def close(self) -> None:
        """Stop accepting and close the listening sockets (admitted connections stay)."""
        for task in (*self._loops, *self._handshakes):
            task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._loops, *self._handshakes, return_exceptions=True)

    async def _accept(self, sock: socket.socket) -> None:
        loop = self._loop
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in _GONE:
                    continue
                # Out of file descriptors or memory: a storm of these is logged once
                # per interval (see RepeatFilter), and the backlog waits meanwhile.
                _log.error("accepting a connection failed: %s", exc.strerror or exc)
                await asyncio.sleep(ACCEPT_RETRY_DELAY)
                continue
            try:
                protocol = self._admit()
            except Exception:
                conn.close()  # a bug, but one connection's: the port goes on accepting
                _log.exception("admitting an accepted connection failed")
                continue
            if self._ssl is None:
                try:
                    await _connect(loop, conn, protocol, None, None)
                finally:
                    self._settle(protocol)
                continue
            task = asyncio.create_task(
                _connect(loop, conn, protocol, self._ssl, self._handshake_timeout)
            )
            self._handshakes[task] = None
            task.add_done_callback(functools.partial(self._handshake_done, conn, protocol))
            if len(self._handshakes) > self._max_handshakes:
                oldest = next(iter(self._handshakes))
                del self._handshakes[oldest]
                oldest.cancel()
                await asyncio.sleep(0)  # its socket closed before the next accept

    def _handshake_done(
        self, conn: socket.socket, protocol: asyncio.BaseProtocol, task: asyncio.Task[None]
    ) -> None:
        self._handshakes.pop(task, None)
        if task.cancelled():
            conn.close()  # a task cancelled before it ran has not closed it
        self._settle(protocol)

    def _settle(self, protocol: asyncio.BaseProtocol) -> None:
        if self._settled is not None:
            try:
                self._settled(protocol)
            except Exception:
                _log.exception("settling an accepted connection failed")


def _close(sock: socket.socket, _: object) -> None:
    sock.close()


async def _connect(
    loop: asyncio.AbstractEventLoop,
    conn: socket.socket,
    protocol: asyncio.BaseProtocol,
    ssl_context: ssl.SSLContext | None,
    handshake_timeout: float | None,
) -> None:
    """Make ``conn``'s transport for ``protocol`` (its ``connection_made`` has been
    called on return); a connection that fails or is cut off is closed."""
    try:
        await loop.connect_accepted_socket(
            lambda: protocol, conn, ssl=ssl_context, ssl_handshake_timeout=handshake_timeout
        )
    except OSError:  # refused, reset, timed out, a bad handshake
        conn.close()  # the client's failure, not the daemon's
    except Exception:
        conn.close()  # a bug, but one connection's: the port goes on accepting
        _log.exception("setting up an accepted connection failed")
    except BaseException:
        conn.close()
        raise


class _Refused(asyncio.Protocol):
    """A connection past every limit: a 503, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_REFUSAL)
        transport.close()


class Admission:
    """Counts the connections of one server and decides who gets in."""

    def __init__(self, limit: int, probes: int, on_refused: Callable[[str], None]) -> None:
        self.limit = limit
        self.probes = probes
        self._on_refused = on_refused
        self._busy: set[RequestHandler] = set()  # a request (or websocket) under way
        self._probe_only: set[RequestHandler] = set()
        self._closing: set[RequestHandler] = set()  # closed here, not yet gone
        # Made by the factory and not yet settled (see ``Listener``): a connection
        # being made, a TLS one for as long as its handshake lasts. Oldest first.
        self._pending: dict[RequestHandler, None] = {}
        # Pending ones chosen to be closed: closed as soon as their connection is
        # made (a handler closed before its ``connection_made`` would leave its
        # socket open), forgotten if it never is.
        self._doomed: set[RequestHandler] = set()

    def factory(self, server: web.Server) -> Callable[[], asyncio.BaseProtocol]:
        """The protocol factory to listen with, in place of aiohttp's ``server``."""

        def accept() -> asyncio.BaseProtocol:
            live = server.connections
            made = set(live)
            waiting = [h for h in self._pending if h not in made]
            known = made.union(waiting)
            self._closing &= known
            self._probe_only &= known
            count = len(live) + len(waiting) - len(self._closing)
            if count >= self.limit:
                # The oldest first: those the server lists, then those still being
                # made (a TLS one for as long as its handshake lasts), so that a
                # probe behind slow sockets still finds one to close.
                idle = next(
                    (
                        h
                        for h in (*live, *waiting)
                        if h not in self._busy and h not in self._closing
                    ),
                    None,
                )
                if idle is not None:
                    self._closing.add(idle)
                    if idle.transport is not None:
                        idle.force_close()
                    else:
                        self._doomed.add(idle)
                    self._on_refused("idle_closed")
                elif count < self.limit + self.probes:
                    handler = self._made(server())
                    self._probe_only.add(handler)
                    return handler
                else:
                    self._on_refused("too_many_http_connections")
                    return _Refused()
            return self._made(server())

        return accept

    def _made(self, handler: RequestHandler) -> RequestHandler:
        self._pending[handler] = None
        return handler

    def settled(self, protocol: asyncio.BaseProtocol) -> None:
        """``protocol``'s connection is made, or failed (the listener's
        ``settled``): no longer pending; closed now if it was chosen to be."""
        if not isinstance(protocol, RequestHandler):
            return
        self._pending.pop(protocol, None)
        if protocol in self._doomed:
            self._doomed.discard(protocol)
            if protocol.transport is not None:
                protocol.force_close()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        protocol = request.protocol
        probe_only = protocol in self._probe_only
        response: web.StreamResponse
        if probe_only and request.path not in PROBES:
            self._on_refused("probe_only")
            response = web.json_response(
                {
                    "code": "unavailable",
                    "message": f"too many connections (limit {self.limit}); "
                    "this one may only probe /healthz and /readyz",
                },
                status=503,
            )
            response.force_close()
            return response
        self._busy.add(protocol)
        try:
            response = await handler(request)
        finally:
            self._busy.discard(protocol)
        if probe_only:
            response.force_close()  # the probes' spare slot is free again
        return response


class CappedSite(web.TCPSite):
    """A TCP site whose connections go through ``admission`` first; with
    ``ssl_context``, TLS, each handshake within ``handshake_timeout`` seconds."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        admission: Admission,
        *,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
    ) -> None:
        super().__init__(runner, host, port, reuse_address=True, ssl_context=ssl_context)
        self._admission = admission
        self._handshake_timeout = handshake_timeout if ssl_context is not None else None

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        addresses = await loop.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        listener = Listener(
            bind(addresses, self._backlog),
            self._admission.factory(server),
            ssl_context=self._ssl_context,
            handshake_timeout=self._handshake_timeout,
            max_handshakes=self._admission.limit + self._admission.probes,
            settled=self._admission.settled,
        )
        self._server = listener  # what BaseSite.stop closes
        sockets = listener.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        listener = self._server
        await super().stop()
        if listener is not None:
            await listener.wait_closed()  # the accept loops and handshakes are over
