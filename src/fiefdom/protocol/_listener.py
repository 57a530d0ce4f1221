"""The control port's listening sockets and their accept loops.

The event loops accept a backlog in bursts (asyncio a whole ``backlog`` at once, and
another burst before the first one's refused sockets are closed), so a daemon that
stalled for a moment under a flood of connections could hold hundreds of sockets more
than it admits, and run out of file descriptors. Here one connection is accepted at a
time and admitted (the oldest idle one closed, say) before the next, so the port holds
at most the connections admission allows, plus the one being accepted and those
being closed. TLS handshakes run beside the loop, at most as many as admission allows
connections; past that, the oldest one still in its handshake is cut off."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any, Final

_log: Final = logging.getLogger("fiefdom.control.accept")
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
    protocol. It serves from creation (in a running loop) until ``close()``."""

    def __init__(
        self,
        sockets: list[socket.socket],
        admit: Callable[[], asyncio.BaseProtocol],
        *,
        ssl_context: ssl.SSLContext | None,
        handshake_timeout: float | None,
        max_handshakes: int,
    ) -> None:
        self.sockets = sockets
        self._admit = admit
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
                await _connect(loop, conn, protocol, None, None)
                continue
            task = asyncio.create_task(
                _connect(loop, conn, protocol, self._ssl, self._handshake_timeout)
            )
            self._handshakes[task] = None
            task.add_done_callback(functools.partial(self._handshake_done, conn))
            if len(self._handshakes) > self._max_handshakes:
                oldest = next(iter(self._handshakes))
                del self._handshakes[oldest]
                oldest.cancel()
                await asyncio.sleep(0)  # its socket closed before the next accept

    def _handshake_done(self, conn: socket.socket, task: asyncio.Task[None]) -> None:
        self._handshakes.pop(task, None)
        if task.cancelled():
            conn.close()  # a task cancelled before it ran has not closed it


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
