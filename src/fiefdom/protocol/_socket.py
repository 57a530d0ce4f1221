"""The websocket of a control channel connection: aiohttp's, with the frames it
parses offered to the connection first (``_Frames``), and a heartbeat that notes
when data was last received instead of scheduling a reset of its timer for every
chunk read."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp._websocket.reader import WebSocketDataQueue
from aiohttp.helpers import DEFAULT_CHUNK_SIZE
from aiohttp.http import WebSocketReader, WebSocketWriter
from aiohttp.web_request import BaseRequest

from ._codec import SERVER_JSON, SERVER_MSGPACK

if TYPE_CHECKING:
    from ._connection import Connection

# The aiohttp releases whose websocket setup (WebSocketResponse._post_start) and
# heartbeat the ControlSocket below repeats or builds on (a queue of its own, the
# heartbeat's timers); with any other, the connection reads every frame through
# aiohttp's queue and the reading task, and aiohttp keeps its heartbeat (slower, the
# same answers).
_FRAMES_CHECKED_ON: Final = ((3, 14),)
_AIOHTTP: Final = tuple(int(part) for part in aiohttp.__version__.split(".")[:2])
TAKES_FRAMES: Final = _AIOHTTP in _FRAMES_CHECKED_ON

# The data frames' types, looked up once: reading an enum member from its class costs
# a few times a plain attribute (Python 3.11's EnumType has a __getattr__, which
# slows every attribute lookup on an enum class), and this runs for every frame.
_TEXT: Final = WSMsgType.TEXT
_BINARY: Final = WSMsgType.BINARY


class _Frames(WebSocketDataQueue):
    """aiohttp's queue of the frames it has parsed, for the reading task, which first
    offers each data frame to its connection (``Connection.take_frame``) while the
    reading task waits on an empty queue: a frame handled there never wakes the task,
    a turn of the event loop less per request. Any other frame (control frames, the
    close, errors, a frame the connection leaves to its reading task) is queued as
    aiohttp would, behind those already queued."""

    def __init__(
        self, protocol: Any, limit: int, *, loop: asyncio.AbstractEventLoop, conn: Connection
    ) -> None:
        super().__init__(protocol, limit, loop=loop)
        self.conn = conn
        # True while the reading task waits on the empty queue, which it reads only
        # once it has handled every frame before: a frame parsed then is the next in
        # line. Cleared by the first frame queued (the task has that one to handle
        # first; aiohttp may parse further frames, held back while the queue was
        # full, while the task takes it), and once the task is woken.
        self.idle = False

    async def read(self) -> Any:
        if not self._buffer:
            self.idle = True
        try:
            return await super().read()
        finally:
            self.idle = False

    def feed_data(self, data: Any, size: int) -> None:
        conn = self.conn
        # (Not once the peer's close has been read: what follows is the reading task's.)
        if self.idle and not conn.ws._closing:
            kind = data[0]
            if kind is _TEXT:
                if conn.take_frame(data[1], SERVER_JSON):
                    return
            elif kind is _BINARY and conn.take_frame(data[1], SERVER_MSGPACK):
                return
        self.idle = False
        super().feed_data(data, size)


class ControlSocket(web.WebSocketResponse):
    """The websocket of one connection of the control channel: aiohttp's, but with
    the frames it parses offered to ``connection`` first (see _Frames), and a cheaper
    heartbeat, on the aiohttp releases this was checked against (TAKES_FRAMES).

    The heartbeat keeps aiohttp's rule: a peer heard from (any bytes) ``heartbeat``
    seconds ago is pinged, and closed unless something (a pong or any frame) comes
    back within half of that. aiohttp schedules a reset of its timer as a callback
    for every chunk read, a turn of the event loop's work per request on a busy
    connection; here a chunk read only notes the time, and the heartbeat's timer,
    when it fires, looks at it and either pings or waits until it is due."""

    connection: Connection | None = None
    # Set in _post_start: the event loop's clock, while this heartbeat is in use.
    _clock: Callable[[], float] | None = None
    _heard_at = 0.0  # when data was last received (the clock's time)
    _pinged_at = 0.0  # when the last ping was sent

    def _post_start(
        self, request: BaseRequest, protocol: str | None, writer: WebSocketWriter
    ) -> None:
        conn = self.connection
        if conn is None or not TAKES_FRAMES:
            super()._post_start(request, protocol, writer)
            return
        # aiohttp 3.14's _post_start, with the queue and the data callback replaced.
        self._ws_protocol = protocol
        self._writer = writer
        loop = self._loop
        assert loop is not None
        if self._heartbeat is not None:
            self._clock = loop.time
            self._heard_at = loop.time()
        self._reset_heartbeat()
        self._reader = _Frames(request._protocol, DEFAULT_CHUNK_SIZE, loop=loop, conn=conn)
        self._parser = WebSocketReader(
            self._reader,
            self._max_msg_size,
            compress=bool(self._compress),
            decode_text=self._decode_text,
        )
        callback = None if self._clock is None else self._heard
        request.protocol.set_parser(self._parser, data_received_cb=callback)
        request.protocol.keep_alive(False)

    def _heard(self) -> None:
        """Data was received (called for every chunk read)."""
        self._heard_at = self._clock()  # type: ignore[misc]  # set with this callback

    def _send_heartbeat(self) -> None:
        clock = self._clock
        if clock is not None:
            assert self._heartbeat is not None
            assert self._loop is not None
            due = self._heard_at + self._heartbeat
            if due > clock():
                # Heard from since the timer was set: wait until the ping is due.
                self._heartbeat_cb = self._loop.call_at(due, self._send_heartbeat)
                return
            self._pinged_at = clock()
        super()._send_heartbeat()

    def _pong_not_received(self) -> None:
        if self._clock is not None and self._heard_at >= self._pinged_at:
            # Heard from since the ping: the next one is due a heartbeat after that.
            assert self._heartbeat is not None
            assert self._loop is not None
            self._pong_response_cb = None
            if self._heartbeat_cb is None:
                due = self._heard_at + self._heartbeat
                self._heartbeat_cb = self._loop.call_at(due, self._send_heartbeat)
            return
        super()._pong_not_received()
