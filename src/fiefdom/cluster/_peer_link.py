"""``Link``: one node's websocket to another node's peer server, shared by every
message forwarded there. Each request waits on its own future, matched to its
reply by id; a caller cancelled while it waits tells the peer to cancel too.
Frames are sent in batches: those queued within one turn of the event loop go out
as one websocket message (``Outbox``), so many callers share one write."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable

import aiohttp
import msgspec

from ._peer_wire import (
    DECODER,
    ENCODER,
    PEER_PATH,
    AskFrame,
    CancelFrame,
    ErrorFrame,
    PeerFrame,
    ReplyFrame,
    TellFrame,
)


class LinkLost(ConnectionError):
    """The websocket to a peer closed while a request waited on it."""


class Outbox:
    """Frames waiting to be written, and the task that writes them: each time it
    runs it sends every frame queued so far as one message."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]], name: str) -> None:
        self._send = send
        self._frames: list[PeerFrame] = []
        self._ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._write(), name=name)

    def put(self, frame: PeerFrame) -> None:
        self._frames.append(frame)
        self._ready.set()

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                await self._ready.wait()
                self._ready.clear()
                frames, self._frames = self._frames, []
                await self._send(ENCODER.encode(frames))

    def cancel(self) -> None:
        self._task.cancel()

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def _expire(answer: asyncio.Future[ReplyFrame | ErrorFrame]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError("no answer from the peer in time"))


class Link:
    def __init__(self, session: aiohttp.ClientSession, address: str, secret: str, node: str):
        self.address = address
        self._session = session
        self._headers = {"Authorization": f"Bearer {secret}", "Fiefdom-Node": node}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._outbox: Outbox | None = None
        self._waiting: dict[int, asyncio.Future[ReplyFrame | ErrorFrame]] = {}
        self._ids = itertools.count(1)
        self.closed = False

    async def open(self) -> None:
        ws = self._ws = await self._session.ws_connect(
            f"http://{self.address}{PEER_PATH}", headers=self._headers, max_msg_size=0
        )
        loop = asyncio.get_running_loop()
        self._outbox = Outbox(ws.send_bytes, f"cluster/link/{self.address}/out")
        self._reader = loop.create_task(self._read(ws), name=f"cluster/link/{self.address}")

    async def request(
        self, frame: AskFrame | TellFrame, wait: float | None
    ) -> ReplyFrame | ErrorFrame:
        """Send ``frame`` and wait (at most ``wait`` seconds) for its answer."""
        outbox = self._outbox
        if outbox is None or self.closed:
            raise LinkLost(f"the link to {self.address} is closed")
        frame.id = next(self._ids)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[ReplyFrame | ErrorFrame] = loop.create_future()
        self._waiting[frame.id] = answer
        outbox.put(frame)
        timer = None if wait is None else loop.call_later(wait, _expire, answer)
        try:
            return await answer
        except asyncio.CancelledError:
            # The caller gave up (its cancellation cancelled the future it waited on;
            # an answer that came first is done, not cancelled): the ask must not run
            # on for nobody.
            if answer.cancelled() and not self.closed:
                outbox.put(CancelFrame(id=frame.id))
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._waiting.pop(frame.id, None)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    break
                try:
                    frames = DECODER.decode(msg.data)
                except msgspec.DecodeError:
                    break
                for frame in frames:
                    if isinstance(frame, ReplyFrame | ErrorFrame):
                        waiting = self._waiting.pop(frame.id, None)
                        if waiting is not None and not waiting.done():
                            waiting.set_result(frame)
        finally:
            self.closed = True
            if self._outbox is not None:
                self._outbox.cancel()
            lost = LinkLost(
                f"the connection to {self.address} was lost while the message was "
                "forwarded (it may have run there)"
            )
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(lost)
            self._waiting.clear()

    async def close(self) -> None:
        self.closed = True
        if self._outbox is not None:
            await self._outbox.close()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
