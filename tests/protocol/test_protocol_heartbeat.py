"""The control channel's websocket heartbeat: a peer not heard from for ``heartbeat``
seconds is pinged, and closed unless something comes back within half of that; a
pong, or any frame, counts as an answer, and the heartbeat goes on after it. The
server runs in the test's process (its host a daemon that is not started) with a
heartbeat shorter than its default; the peers are raw websockets, which answer
nothing unless told to. Each test waits for frames and for the end of the stream,
never for a time; the heartbeat only has to leave a peer on this machine time to
answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from daemon_harness import write_config
from raw_websocket import open_websocket, read_frame_with_opcode, ws_frame

from fiefdom.daemon import Daemon, load_config, read_token_file, token_table
from fiefdom.protocol import ControlServer

GUARD = 60.0  # a hang guard, never a speed requirement
TEXT, PING, PONG = 0x1, 0x9, 0xA
# A heartbeat whose pong window (half of it) a peer on this machine answers within.
ANSWERED = 2.0


@asynccontextmanager
async def _peer(
    tmp_path: Path, heartbeat: float
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw websocket, authenticated by its upgrade, to a control server whose
    heartbeat is ``heartbeat`` seconds."""
    config = load_config(write_config(tmp_path / "daemon"), environ={})
    host = Daemon(config)
    server = ControlServer(host, config.control, token_table(config), host.metrics)
    server.heartbeat = heartbeat
    async with server:
        token = read_token_file(config.admin_token_path)
        reader, writer = await open_websocket(f"http://127.0.0.1:{server.port}", token)
        try:
            with anyio.fail_after(GUARD):
                yield reader, writer
        finally:
            writer.transport.abort()


async def _frame(reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
    """The opcode and payload of the server's next frame; None once the stream ends."""
    try:
        return await read_frame_with_opcode(reader)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def _control(opcode: int, payload: bytes) -> bytes:
    """A masked client control frame (``ws_frame`` makes a data frame, then the opcode
    is swapped)."""
    frame = ws_frame(payload)
    return bytes([0x80 | opcode]) + frame[1:]


async def _ended(reader: asyncio.StreamReader) -> bool:
    """Whether the stream ends with no frame before its end."""
    return await _frame(reader) is None


async def test_a_peer_that_answers_nothing_is_pinged_then_closed(tmp_path: Path) -> None:
    async with _peer(tmp_path, heartbeat=0.2) as (reader, _):
        frame = await _frame(reader)
        assert frame is not None
        assert frame[0] == PING
        assert await _ended(reader)


async def test_a_peer_that_answers_its_pings_stays_connected(tmp_path: Path) -> None:
    async with _peer(tmp_path, heartbeat=ANSWERED) as (reader, writer):
        for _ in range(2):
            frame = await _frame(reader)
            assert frame is not None
            assert frame[0] == PING
            writer.write(_control(PONG, frame[1]))
        # Still served: a request is answered (a ping of the heartbeat may come first).
        writer.write(ws_frame(json.dumps({"type": "ping", "id": 7}).encode()))
        while True:
            frame = await _frame(reader)
            assert frame is not None
            if frame[0] == PING:
                writer.write(_control(PONG, frame[1]))
                continue
            assert frame[0] == TEXT
            assert json.loads(frame[1]) == {"type": "pong", "id": 7}
            break


async def test_a_frame_after_a_ping_counts_as_its_answer(tmp_path: Path) -> None:
    """A request sent instead of the pong keeps the peer connected; the heartbeat goes
    on from it: the next ping comes, and left unanswered, the peer is closed."""
    async with _peer(tmp_path, heartbeat=ANSWERED) as (reader, writer):
        frame = await _frame(reader)
        assert frame is not None
        assert frame[0] == PING
        writer.write(ws_frame(json.dumps({"type": "ping", "id": 1}).encode()))
        frame = await _frame(reader)
        assert frame is not None
        assert frame[0] == TEXT
        assert json.loads(frame[1]) == {"type": "pong", "id": 1}
        frame = await _frame(reader)
        assert frame is not None
        assert frame[0] == PING
        assert await _ended(reader)
