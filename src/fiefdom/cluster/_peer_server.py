"""``PeerServer``: where the other nodes of the cluster deliver messages for the keys
this node owns. A peer must present the cluster's secret. Each forwarded ask runs in
a task of its own under the call chain it came with; a key this node does not own
(any more) is answered ``not_owner`` and nothing runs. A link that closes cancels
what it asked, as a cancelled caller would."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol, cast

import msgspec
from aiohttp import WSMsgType, web

from .._admission import Admission, CappedSite
from .._errors import ActorStopped, AskTimeout, CallCycleError, OwnerUnavailable
from .._log import get_logger
from ..actors import Domain, Request
from ..actors._cell import forwarded_from
from ..jobs._kinds import safe_text
from ._peer_link import Outbox
from ._peer_wire import (
    DECODER,
    ENCODER,
    PEER_PATH,
    AskFrame,
    CancelFrame,
    ErrorFrame,
    ReplyFrame,
    TellFrame,
    resolve_type,
)


class PeerHost(Protocol):
    """What the server needs of the node's forwarding side (``Peers``)."""

    @property
    def node(self) -> str: ...

    @property
    def domains(self) -> Mapping[str, Domain[Any, Any]]: ...

    def authorized(self, header: str) -> bool: ...


log = get_logger("fiefdom.cluster")

_TEXT_LIMIT = 2000


# A node has one link to each other node (and a few more while links are made again):
# far more connections are a flood. Past this, a newcomer closes the oldest one with
# no link up on it, as on the control port (fiefdom._admission).
MAX_PEER_CONNECTIONS = 256
# Seconds a connection has to send its request's headers (an idle one is closed too).
PEER_HEADER_TIMEOUT = 10.0


class PeerServer:
    """Serves the cluster's other nodes: one websocket link per node, behind the same
    admission as the control port, so that sockets which never present the secret
    (slow, idle or many) cannot use up the node's file descriptors nor lock its peers
    out."""

    def __init__(
        self,
        peers: PeerHost,
        *,
        max_connections: int = MAX_PEER_CONNECTIONS,
        header_timeout: float = PEER_HEADER_TIMEOUT,
    ) -> None:
        self._peers = peers
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._header_timeout = header_timeout
        # Connections closed or refused by admission, by reason.
        self.refused: Counter[str] = Counter()
        self._admission = Admission(max_connections, 0, self._refused)

    def _refused(self, reason: str) -> None:
        self.refused[reason] += 1

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port``; returns the port bound (``port`` 0: any free one)."""
        app = web.Application(middlewares=[self._admission.middleware])
        app.router.add_get(PEER_PATH, self._serve)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=self._header_timeout,
        )
        await runner.setup()
        site = CappedSite(runner, host, port, self._admission)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return site.port

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if not self._peers.authorized(request.headers.get("Authorization", "")):
            return web.json_response(
                {"code": "unauthenticated", "message": "not a node of this cluster"}, status=401
            )
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        running: dict[int, asyncio.Task[None]] = {}
        outbox = Outbox(ws.send_bytes, "cluster/peer/out")
        loop = asyncio.get_running_loop()
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.BINARY:
                    break
                try:
                    frames = DECODER.decode(msg.data)
                except msgspec.DecodeError:
                    break
                for frame in frames:
                    if isinstance(frame, AskFrame | TellFrame):
                        task = loop.create_task(self._deliver(outbox, frame))
                        running[frame.id] = task
                        task.add_done_callback(functools.partial(_forget, running, frame.id))
                    elif isinstance(frame, CancelFrame):
                        cancelled = running.get(frame.id)
                        if cancelled is not None:
                            cancelled.cancel()
        finally:
            self._sockets.discard(ws)
            # The asking node is gone: nobody waits for these any more.
            tasks = list(running.values())
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await outbox.close()
        return ws

    async def _deliver(self, outbox: Outbox, frame: AskFrame | TellFrame) -> None:
        outbox.put(await self._run(frame))

    async def _run(self, frame: AskFrame | TellFrame) -> ReplyFrame | ErrorFrame:
        node = self._peers.node
        path = f"{frame.domain}/{frame.key}"  # the cluster's name for the key

        def error(code: str, message: str, **more: Any) -> ErrorFrame:
            text = safe_text(message, _TEXT_LIMIT)
            return ErrorFrame(id=frame.id, code=code, message=text, node=node, path=path, **more)

        domain = self._peers.domains.get(frame.domain)
        if domain is None:
            return error("invalid", f"node {node} serves no domain {frame.domain!r}")
        path = f"{domain.path}/{frame.key}"
        if not domain.is_local(frame.key):
            return error("not_owner", f"node {node} does not own {path} (any more)")
        try:
            msg = msgspec.msgpack.decode(frame.body, type=resolve_type(frame.type))
        except (LookupError, msgspec.DecodeError) as exc:
            return error("invalid", f"node {node} cannot read the message: {exc}")
        try:
            if isinstance(frame, TellFrame):
                await domain.tell(frame.key, msg)
                return ReplyFrame(id=frame.id, body=b"")
            forwarded_from.set(tuple(frame.chain))  # this task's context only
            result: object = await domain.ask(
                frame.key, cast("Request[Any]", msg), timeout=frame.timeout
            )
        except AskTimeout as exc:
            return error("timeout", str(exc), phase=exc.phase, handler_exited=exc.handler_exited)
        except CallCycleError as exc:
            return error("cycle", str(exc), cycle=list(exc.cycle))
        except OwnerUnavailable as exc:
            return error("not_owner", str(exc))
        except ActorStopped as exc:
            return error("stopped", str(exc))
        except Exception as exc:
            return error("raised", str(exc), error_type=type(exc).__name__)
        try:
            body = ENCODER.encode(result)
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            return error("raised", f"the reply cannot be sent back: {exc}", error_type="TypeError")
        return ReplyFrame(id=frame.id, body=body)


def _forget(running: dict[int, asyncio.Task[None]], frame_id: int, _: object) -> None:
    running.pop(frame_id, None)
