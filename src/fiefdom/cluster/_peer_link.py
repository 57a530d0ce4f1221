"""``Link``: one node's websocket to another node's peer server, shared by every
message forwarded there. Each request waits on its own future, matched to its
reply by id; a caller cancelled while it waits tells the peer to cancel too."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import aiohttp
import anyio
import msgspec

from ._peer_wire import (
    DECODER,
    ENCODER,
    PEER_PATH,
    AskFrame,
    CancelFrame,
    ErrorFrame,
    ReplyFrame,
    TellFrame,
)


class LinkLost(ConnectionError):
    """The websocket to a peer closed while a request waited on it."""


class Link:
    def __init__(self, session: aiohttp.ClientSession, address: str, secret: str, node: str):
        self.address = address
        self._session = session
        self._headers = {"Authorization": f"Bearer {secret}", "Fiefdom-Node": node}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[ReplyFrame | ErrorFrame]] = {}
        self._ids = itertools.count(1)
        self.closed = False

    async def open(self) -> None:
        self._ws = await self._session.ws_connect(
            f"http://{self.address}{PEER_PATH}", headers=self._headers, max_msg_size=0
        )
        self._reader = asyncio.get_running_loop().create_task(
            self._read(self._ws), name=f"cluster/link/{self.address}"
        )

    async def request(
        self, frame: AskFrame | TellFrame, wait: float | None
    ) -> ReplyFrame | ErrorFrame:
        """Send ``frame`` and wait (at most ``wait`` seconds) for its answer."""
        ws = self._ws
        if ws is None or self.closed:
            raise LinkLost(f"the link to {self.address} is closed")
        frame.id = next(self._ids)
        answer: asyncio.Future[ReplyFrame | ErrorFrame] = asyncio.get_running_loop().create_future()
        self._waiting[frame.id] = answer
        try:
            await ws.send_bytes(ENCODER.encode(frame))
            with anyio.fail_after(wait):
                return await answer
        except asyncio.CancelledError:
            if not answer.done() and not self.closed:
                # The caller gave up: the ask must not run on for nobody.
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_bytes(ENCODER.encode(CancelFrame(id=frame.id)))
            raise
        finally:
            self._waiting.pop(frame.id, None)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    break
                try:
                    frame = DECODER.decode(msg.data)
                except msgspec.DecodeError:
                    break
                if isinstance(frame, ReplyFrame | ErrorFrame):
                    waiting = self._waiting.pop(frame.id, None)
                    if waiting is not None and not waiting.done():
                        waiting.set_result(frame)
        finally:
            self.closed = True
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
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with anyio.CancelScope(shield=True):
                await asyncio.gather(self._reader, return_exceptions=True)
