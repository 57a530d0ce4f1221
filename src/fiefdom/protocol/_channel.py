"""The connection under a ``Client``: its websocket, the one reader task that routes
replies to their requests by id and events to their ``EventStream``, and how requests
fail when it closes. Kept apart from the typed requests, which only build frames and
read replies."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Sequence
from os import PathLike
from ssl import SSLContext
from types import TracebackType
from typing import Any, Literal, TypeVar

import aiohttp
import anyio
import msgspec

from .._errors import ControlConnectionError, ControlError
from .._lifecycle import Lifecycle, State, StopMode
from ._codec import CLIENT_JSON, CLIENT_MSGPACK, Codec, Encoding
from ._dial import _client_tls, _tls_closed, _ws_url
from ._messages import (
    PROTOCOL_VERSION,
    ErrorCode,
    Hello,
    LogLevel,
    Role,
    Subscribe,
    Topic,
    Unsubscribe,
)
from ._registry import NotFound
from ._replies import (
    Ack,
    Dropped,
    Error,
    Event,
    EventData,
    ServerMessage,
    Subscribed,
    Welcome,
)

F = TypeVar("F")


# Seconds a client stopped in ``cancel`` mode (its block left by an exception or a
# cancellation, as on Ctrl-C) waits for the daemon to answer the websocket's close
# before it aborts the connection; in ``drain`` mode it waits up to its ``timeout``.
# (aiohttp's own wait restarts with every frame still coming, such as the events of a
# subscription: under a stream it may not end.)
_CANCEL_CLOSE = 2.0


class EventStream:
    """A subscription: an async iterator of events (and ``Dropped`` notices).

    Use it as ``async with client.subscribe([...]) as events``; leaving the block
    unsubscribes (by an exception or a cancellation: without waiting for the daemon's
    acknowledgement)."""

    def __init__(self, client: ClientChannel, topics: Sequence[Topic], level: LogLevel) -> None:
        self._client = client
        self._topics = list(topics)
        self._level: LogLevel = level
        # Unbounded as a queue, bounded by ``_deliver``: the error that ends the
        # stream is queued past the bound, so a full buffer never swallows it.
        self._queue: asyncio.Queue[EventData | Dropped | BaseException] = asyncio.Queue()
        self._buffer = client.event_buffer
        self._local_dropped = 0
        self.subscription: int | None = None

    async def __aenter__(self) -> EventStream:
        reply = await self._client._request(
            lambda i: Subscribe(id=i, topics=self._topics, level=self._level), Subscribed
        )
        self.subscription = reply.subscription
        self._client._streams[reply.subscription] = self
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose(wait=exc_type is None)

    async def aclose(self, *, wait: bool = True) -> None:
        """Unsubscribe: the daemon sends no more events. With ``wait`` (the default),
        return once it has acknowledged; without, once the request is sent (a caller
        on its way out, cancelled or failing, does not wait on the daemon: a daemon
        too busy or gone to answer would hold it up to the client's ``timeout``)."""
        sub, self.subscription = self.subscription, None
        if sub is None:
            return
        self._client._streams.pop(sub, None)
        if self._client.state is not State.RUNNING:
            return
        if not wait:
            await self._client._send_only(lambda i: Unsubscribe(id=i, subscription=sub))
            return
        with contextlib.suppress(ControlConnectionError):
            await self._client._request(lambda i: Unsubscribe(id=i, subscription=sub), Ack)

    def _deliver(self, item: EventData | Dropped) -> None:
        if self._queue.qsize() >= self._buffer:
            # The consumer is slower than the server: count locally, like the server.
            self._local_dropped += 1
        else:
            self._queue.put_nowait(item)

    def _end(self, error: BaseException) -> None:
        """The connection is gone: raise ``error`` once the buffered events are read."""
        self.subscription = None
        self._queue.put_nowait(error)

    def received(self) -> list[EventData | Dropped]:
        """The events received and not yet read, without waiting (an event the daemon
        sent before the reply to a later request is among them once that reply has
        come)."""
        items: list[EventData | Dropped] = []
        if self._local_dropped:
            count, self._local_dropped = self._local_dropped, 0
            items.append(Dropped(subscription=self.subscription or 0, count=count))
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, BaseException):
                # The end of the stream: left for the iterator to raise.
                self._queue.put_nowait(item)
                break
            items.append(item)
        return items

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> EventData | Dropped:
        if self._local_dropped:
            count, self._local_dropped = self._local_dropped, 0
            return Dropped(subscription=self.subscription or 0, count=count)
        if self.subscription is None and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


class ClientChannel:
    """A ``Client``'s connection, its lifecycle and its request/reply: what the typed
    requests of ``Client`` are sent through."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        encoding: Encoding | Literal["json", "msgpack"] = Encoding.JSON,
        timeout: float = 30.0,
        event_buffer: int = 10_000,
        max_frame_bytes: int = 16 << 20,
        ssl: SSLContext | None = None,
        cafile: str | PathLike[str] | None = None,
    ) -> None:
        self.url = _ws_url(url)
        self.ssl_context = _client_tls(self.url, ssl, cafile)
        self.token = token
        self.encoding = Encoding(encoding)
        self.codec: Codec[ServerMessage] = (
            CLIENT_JSON if self.encoding is Encoding.JSON else CLIENT_MSGPACK
        )
        self.timeout = timeout
        self.event_buffer = event_buffer
        self.max_frame_bytes = max_frame_bytes
        self._lifecycle = Lifecycle(
            f"client of {self.url}", "use 'async with fiefdom.connect(url, token=...) as client'"
        )
        self._handshaking = False  # the hello is the one request sent while starting
        self.role: Role | None = None
        self.server: str | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, EventStream] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lost: ControlConnectionError | None = None

    # -- lifecycle -----------------------------------------------------------------

    @property
    def state(self) -> State:
        """Where the client is in its lifecycle (``running`` while connected)."""
        return self._lifecycle.state

    async def start(self) -> None:
        """Connect and authenticate (hello); returns once the daemon has welcomed it.
        A client connects once: call ``fiefdom.connect()`` again for a new connection."""
        self._lifecycle.begin_start()
        try:
            await self._connect()
        except BaseException:
            await self._close(
                ControlConnectionError("the client could not connect"), handshake=_CANCEL_CLOSE
            )
            raise
        if self._lifecycle.state is State.STARTING:  # not stopped meanwhile
            self._lifecycle.started()

    async def _connect(self) -> None:
        self._session = aiohttp.ClientSession()
        # The token goes in the upgrade too (and again in hello): a connection that
        # authenticates up front is not held to the daemon's smaller limit of
        # connections still waiting to authenticate.
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            self._ws = await self._session.ws_connect(
                self.url,
                max_msg_size=self.max_frame_bytes,
                autoping=True,
                headers=headers,
                ssl=True if self.ssl_context is None else self.ssl_context,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise ControlError("unauthenticated", f"{self.url}: the token was refused") from exc
            if exc.status == 403:
                raise ControlError(
                    "forbidden", f"{self.url}: the token's role is too weak"
                ) from exc
            raise ControlConnectionError(
                f"cannot open the control channel at {self.url}: HTTP {exc.status}"
            ) from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            error = exc.certificate_error
            reason = getattr(error, "verify_message", None) or str(error)
            raise ControlConnectionError(
                f"cannot connect to the control channel at {self.url}: the daemon's "
                f"certificate was not verified: {reason}"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ControlConnectionError(
                f"cannot connect to the control channel at {self.url}: {exc}"
            ) from exc
        # A plain task, not a task group around the caller's block: a failure of the
        # reader must fail pending requests, not cancel the caller's code.
        self._reader = asyncio.get_running_loop().create_task(
            self._read(), name=f"fiefdom-client-reader {self.url}"
        )
        self._handshaking = True
        try:
            welcome = await self._request(
                lambda i: Hello(id=i, version=PROTOCOL_VERSION, token=self.token, client="fiefdom"),
                Welcome,
            )
        finally:
            self._handshaking = False
        self.role = welcome.role
        self.server = welcome.server

    async def stop(self, mode: StopMode = "drain") -> None:
        """Close the connection. ``drain`` first waits for the replies to requests
        already sent (at most ``timeout`` seconds); ``cancel`` closes at once, failing
        them with ``ControlConnectionError``. New requests are refused from the start
        of the stop. Before ``start()`` it returns at once."""
        if not self._lifecycle.begin_stop():
            return
        try:
            if mode != "cancel":
                with anyio.move_on_after(self.timeout):
                    while self._pending:
                        # asyncio.wait: waiting must not cancel the requests' futures.
                        await asyncio.wait(list(self._pending.values()))
        finally:
            await self._close(
                ControlConnectionError("the client was stopped"),
                handshake=self.timeout if mode != "cancel" else _CANCEL_CLOSE,
            )

    async def _close(self, error: ControlConnectionError, *, handshake: float) -> None:
        """Fail what waits with ``error``, then close the websocket (waiting up to
        ``handshake`` seconds for the daemon's side of its close, then aborting the
        connection), the reader and the session."""
        # First: what is still waiting learns why (not "the daemon closed the
        # channel", which the reader reports once the socket is closed).
        self._fail_all(error)
        # Shielded: a cancelled caller must still release the socket and the reader.
        with anyio.CancelScope(shield=True):
            try:
                if self._ws is not None:
                    protocol = self._tls_protocol()
                    # Past the deadline aiohttp's close is cancelled: it closes the
                    # connection without waiting further.
                    with anyio.move_on_after(handshake):
                        await self._ws.close()
                    if protocol is not None:
                        await _tls_closed(protocol)
                if self._reader is not None:
                    self._reader.cancel()
                    await asyncio.gather(self._reader, return_exceptions=True)
                    self._reader = None
                if self._session is not None:
                    await self._session.close()
            finally:
                self._lifecycle.stopped()

    def _tls_protocol(self) -> Any:
        """The protocol of a TLS connection still open (None for plain TCP), whose
        closing ``_tls_closed`` waits for. aiohttp keeps the connection on the
        websocket as ``_conn``: read defensively, so that another aiohttp only skips
        the wait."""
        assert self._ws is not None
        if self._ws.get_extra_info("sslcontext") is None:
            return None
        return getattr(getattr(self._ws, "_conn", None), "protocol", None)

    def _fail_all(self, error: ControlConnectionError) -> None:
        self._lost = error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        for stream in self._streams.values():
            stream._end(error)
        self._streams.clear()

    async def _read(self) -> None:
        assert self._ws is not None
        reason = "the daemon closed the control channel"
        try:
            async for msg in self._ws:
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    data = msg.data.encode() if isinstance(msg.data, str) else msg.data
                    codec = CLIENT_JSON if msg.type is aiohttp.WSMsgType.TEXT else CLIENT_MSGPACK
                    try:
                        frame = codec.decode(data)
                    except msgspec.DecodeError as exc:
                        reason = f"the daemon sent a frame this client cannot read: {exc}"
                        break
                    self._route(frame)
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    reason = f"the control channel failed: {self._ws.exception()}"
                    break
        finally:
            if self._ws.close_code is not None and self._ws.close_code != 1000:
                reason += f" (close code {self._ws.close_code})"
            self._fail_all(ControlConnectionError(reason))

    def _route(self, frame: ServerMessage) -> None:
        if isinstance(frame, Event):
            stream = self._streams.get(frame.subscription)
            if stream is not None:
                stream._deliver(frame.data)
            return
        if isinstance(frame, Dropped):
            stream = self._streams.get(frame.subscription)
            if stream is not None:
                stream._deliver(frame)
            return
        frame_id = frame.id
        future = self._pending.pop(frame_id, None) if frame_id is not None else None
        if future is not None and not future.done():
            future.set_result(frame)

    async def _send_only(self, make: Callable[[int], object]) -> None:
        """Send a request without waiting for its reply (dropped when it comes): at
        most ``timeout`` seconds for the socket to take it; nothing if the
        connection is gone."""
        if self._lost is not None or self._ws is None:
            return
        data = self.codec.encode(make(next(self._ids)))
        with anyio.move_on_after(self.timeout):
            try:
                if self.encoding is Encoding.JSON:
                    await self._ws.send_str(data.decode())
                else:
                    await self._ws.send_bytes(data)
            except ConnectionError:
                pass  # the connection is gone, and the subscription with it

    def _waiting(self, wait: float | None) -> float | None:
        """The reply timeout of a request the daemon answers only after waiting up to
        ``wait`` seconds (None: as long as it takes): that wait plus the usual timeout."""
        return None if wait is None else wait + self.timeout

    async def _request(
        self,
        make: Callable[[int], object],
        expect: type[F],
        *,
        timeout: float | Literal["default"] | None = "default",
    ) -> F:
        """Send a request and return its reply; ``timeout`` (None: no limit) replaces
        the client's default reply timeout."""
        if not self._handshaking:
            self._lifecycle.check_running("send a request")
        if self._lost is not None:
            raise self._lost
        assert self._ws is not None
        frame_id = next(self._ids)
        frame = make(frame_id)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[frame_id] = future
        data = self.codec.encode(frame)
        limit = self.timeout if timeout == "default" else timeout
        try:
            if self.encoding is Encoding.JSON:
                await self._ws.send_str(data.decode())
            else:
                await self._ws.send_bytes(data)
            with anyio.fail_after(limit):
                reply = await future
        except TimeoutError:
            raise ControlConnectionError(
                f"no reply to {type(frame).__name__} within {limit:g}s"
            ) from None
        except ConnectionError as exc:
            if isinstance(exc, ControlError):
                raise
            raise ControlConnectionError(f"the control channel was lost: {exc}") from exc
        finally:
            self._pending.pop(frame_id, None)
        if isinstance(reply, Error):
            if reply.code is ErrorCode.NOT_FOUND:
                raise NotFound(reply.message, reply.details)
            raise ControlError(str(reply.code), reply.message, reply.details)
        if not isinstance(reply, expect):
            raise ControlError(
                "internal", f"expected a {expect.__name__} reply, got {type(reply).__name__}"
            )
        return reply
