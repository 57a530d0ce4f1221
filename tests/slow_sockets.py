"""Real sockets that hold half a request open (a slow or silent client), and closing
client streams: what the flood tests of the control port and the peer server share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def close_writers(writers: Iterable[asyncio.StreamWriter]) -> None:
    """Close each stream and wait until it is closed (a reset peer is closed too)."""
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def slow_sockets(
    host: str, port: int, count: int, partial: bytes
) -> AsyncIterator[list[Stream]]:
    """``count`` connections to ``host:port``, one after the other, each having sent
    ``partial`` and nothing more; all closed on leaving."""
    opened: list[Stream] = []
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection(host, port)
            opened.append((reader, writer))
            writer.write(partial)
            await writer.drain()
        yield opened
    finally:
        await close_writers([writer for _, writer in opened])
