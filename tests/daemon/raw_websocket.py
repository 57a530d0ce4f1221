"""A websocket spoken by hand over a TCP stream, for the tests that need what a client
library will not do: send many frames in one write, half a frame, or none of its
replies read, and leave without a closing handshake. Shared by the protocol and chaos
tests (the daemon tests' folder is on their path)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct


def ws_frame(payload: bytes, *, binary: bool = False) -> bytes:
    """One masked client frame (RFC 6455), FIN set."""
    opcode = 0x2 if binary else 0x1
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + masked


async def read_frame_with_opcode(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The opcode and payload of the next server frame (servers do not mask)."""
    first, second = await reader.readexactly(2)
    n = second & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(n)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """The payload of the next server frame."""
    return (await read_frame_with_opcode(reader))[1]


async def open_websocket(
    url: str, token: str, *, rcvbuf: int | None = None, nodelay: bool = False
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to the daemon at ``url`` upgraded to its ``/ws`` websocket
    (``rcvbuf``: the socket's receive buffer, fixed before connecting; ``nodelay``:
    TCP_NODELAY). ``ConnectionError`` if the upgrade is refused; the connection is
    aborted on any failure."""
    host, _, port = url.removeprefix("http://").partition(":")
    if rcvbuf is None:
        reader, writer = await asyncio.open_connection(host, int(port))
    else:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
    try:
        if nodelay:
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head.splitlines()[0]!r}")
    except BaseException:
        writer.transport.abort()
        raise
    return reader, writer
