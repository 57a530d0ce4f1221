"""Admission of HTTP connections to the control port, so that slow or idle sockets
cannot use up the daemon's file descriptors nor lock out its health probes:

- at most ``max_http_connections`` connections (websockets included); a newcomer
  past it closes the oldest connection with no request under way (one still
  sending its headers, or idle between requests), else it may only probe:
  ``probe_connections`` more are kept for ``/healthz`` and ``/readyz``, and past
  those a connection is answered 503 and closed at once (accepted one at a time,
  see ``_listener``, so that no burst of accepts holds more sockets than that);
- ``RepeatFilter``: a storm of one error (``accept()`` failing with EMFILE, say)
  is logged once per interval with a count, not once per occurrence.

The read timeouts are aiohttp's own settings (see ``ControlServer.start``)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ._listener import Listener, bind

PROBES: Final = frozenset({"/healthz", "/readyz"})
_REFUSAL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
    b"Content-Type: application/json\r\nContent-Length: 64\r\n\r\n"
    b'{"code": "unavailable", "message": "too many connections"}      '
)
# The loggers of the libraries that log per connection or per accept().
_LIBRARY_LOGGERS: Final = (
    "asyncio",
    "fiefdom.control.accept",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.websocket",
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Refused(asyncio.Protocol):
    """A connection past every limit: a 503, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_REFUSAL)
        transport.close()


def _close_once_made(handler: RequestHandler, server: web.Server, tries: int = 10) -> None:
    """Close ``handler`` now if its connection is made, else once it is (a handler
    closed before its ``connection_made`` would leave the socket open)."""
    if handler.transport is not None:
        handler.force_close()
    elif handler not in server.connections and tries > 0:
        asyncio.get_running_loop().call_soon(_close_once_made, handler, server, tries - 1)


class Admission:
    """Counts the connections of one server and decides who gets in."""

    def __init__(self, limit: int, probes: int, on_refused: Callable[[str], None]) -> None:
        self.limit = limit
        self.probes = probes
        self._on_refused = on_refused
        self._busy: set[RequestHandler] = set()  # a request (or websocket) under way
        self._probe_only: set[RequestHandler] = set()
        self._closing: set[RequestHandler] = set()  # closed here, not yet gone
        # Made by the factory, connection_made not yet called (it is scheduled soon).
        self._pending: list[RequestHandler] = []

    def factory(self, server: web.Server) -> Callable[[], asyncio.BaseProtocol]:
        """The protocol factory to listen with, in place of aiohttp's ``server``."""

        def accept() -> asyncio.BaseProtocol:
            live = server.connections
            known = set(live) | set(self._pending)
            self._closing &= known
            self._probe_only &= known
            count = len(live) + len(self._pending) - len(self._closing)
            if count >= self.limit:
                # The oldest first: those the server lists, then those made since
                # (one per listening socket: each accepts one connection at a time,
                # and a probe behind slow sockets must still find one to close).
                idle = next(
                    (
                        h
                        for h in (*live, *self._pending)
                        if h not in self._busy and h not in self._closing
                    ),
                    None,
                )
                if idle is not None:
                    self._closing.add(idle)
                    _close_once_made(idle, server)
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
        if not self._pending:
            # connection_made is called soon after the factory: by then, the handler
            # is in the server's own list.
            asyncio.get_running_loop().call_soon(self._pending.clear)
        self._pending.append(handler)
        return handler

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
        )
        self._server = listener  # what BaseSite.stop closes
        sockets = listener.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        listener = self._server
        await super().stop()
        if listener is not None:
            await listener.wait_closed()  # the accept loops and handshakes are over


class RepeatFilter(logging.Filter):
    """Lets one record of a kind (logger, message, exception type) through per
    ``interval``; the first one after it says how many were held back, in one line."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._seen: dict[tuple[str, str, str], list[float]] = {}  # kind: [since, held]

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        kind = (record.name, str(record.msg), exc)
        now = self._clock()
        seen = self._seen.get(kind)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            return False
        if len(self._seen) >= 1000:
            self._seen.clear()  # bounded: kinds are few, unless messages embed values
        self._seen[kind] = [now, 0]
        if seen is not None and seen[1]:
            record.msg = (
                f"{record.getMessage()} ({int(seen[1])} more like it in the last "
                f"{self.interval:g}s)"
            )
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


_REPEATS: Final = RepeatFilter()
_attached = 0


def quiet_repeats() -> None:
    """Rate-limit the repeated errors of the libraries' loggers (until ``loud_repeats``;
    counted, so two servers in one process share it)."""
    global _attached
    if _attached == 0:
        for name in _LIBRARY_LOGGERS:
            logging.getLogger(name).addFilter(_REPEATS)
    _attached += 1


def loud_repeats() -> None:
    global _attached
    _attached -= 1
    if _attached == 0:
        for name in _LIBRARY_LOGGERS:
            logging.getLogger(name).removeFilter(_REPEATS)
