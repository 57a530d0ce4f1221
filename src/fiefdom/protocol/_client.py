"""The Python client of the control channel::

    async with fiefdom.connect("ws://127.0.0.1:8765", token=token) as client:
        status = await client.status()
        async with client.subscribe(["jobs"]) as events:
            async for event in events: ...

A daemon serving TLS is reached at ``wss://`` (or ``https://``): its certificate is
verified against the system's trusted CAs, or against ``cafile`` (a PEM file of the
CA that signed it), or as an ``ssl.SSLContext`` of the caller's says::

    fiefdom.connect("wss://daemon.example:8765", token=token, cafile="ca.pem")

One reader task routes replies to their requests by id and events to their
subscriptions; a typed ``error`` frame raises ``ControlError``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import typing
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from os import PathLike
from ssl import SSLContext, SSLError, create_default_context
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import aiohttp
import anyio
import msgspec

from .._errors import ConfigurationError, ControlConnectionError, ControlError
from .._lifecycle import Lifecycle, State, StopMode
from ..actors import Request
from ..storage import Enqueued, JobInfo, JobState
from ._codec import CLIENT_JSON, CLIENT_MSGPACK, Codec, Encoding
from ._messages import (
    PROTOCOL_VERSION,
    Call,
    CancelJob,
    Drain,
    DrainQueue,
    Dump,
    EnqueueJob,
    ErrorCode,
    GetJob,
    GetStatus,
    Hello,
    ListJobKinds,
    ListJobs,
    ListQueues,
    LogLevel,
    PauseActor,
    PauseQueue,
    Ping,
    PruneJobs,
    ResumeActor,
    ResumeQueue,
    RetryJob,
    RetryJobs,
    Role,
    Stop,
    StopActor,
    Subscribe,
    Topic,
    Unsubscribe,
)
from ._registry import NotFound
from ._replies import (
    Ack,
    CallReply,
    Dropped,
    DumpReply,
    EnqueueReply,
    Error,
    Event,
    EventData,
    JobReply,
    JobsReply,
    KindInfo,
    KindsReply,
    Pong,
    PrunedReply,
    QueueInfo,
    QueuesReply,
    RetriedReply,
    ServerMessage,
    StatusReply,
    Subscribed,
    Welcome,
)

R = TypeVar("R")
F = TypeVar("F")


# Seconds a stopping client waits for the daemon's side of closing TLS (one round trip
# when it answers) before it aborts the connection.
_TLS_CLOSE = 2.0
# Seconds a client stopped in ``cancel`` mode (its block left by an exception or a
# cancellation, as on Ctrl-C) waits for the daemon to answer the websocket's close
# before it aborts the connection; in ``drain`` mode it waits up to its ``timeout``.
# (aiohttp's own wait restarts with every frame still coming, such as the events of a
# subscription: under a stream it may not end.)
_CANCEL_CLOSE = 2.0

# The client's lifecycle is the one every component shares; the old name stays.
ClientState = State


def _ws_url(url: str) -> str:
    if url.startswith("http://"):
        url = "ws://" + url[len("http://") :]
    elif url.startswith("https://"):
        url = "wss://" + url[len("https://") :]
    elif "://" not in url:
        url = "ws://" + url
    return url if url.rstrip("/").endswith("/ws") else url.rstrip("/") + "/ws"


def _client_tls(
    url: str, ssl: SSLContext | None, cafile: str | PathLike[str] | None
) -> SSLContext | None:
    """The context to verify the daemon's certificate with (None: aiohttp's default,
    the system's trusted CAs, for a ``wss://`` URL)."""
    if ssl is not None and cafile is not None:
        raise ValueError("give ssl or cafile, not both")
    if ssl is None and cafile is None:
        return None
    if not url.startswith("wss://"):
        raise ValueError(f"ssl and cafile are for wss:// (or https://) URLs, not {url}")
    if ssl is not None:
        return ssl
    try:
        return create_default_context(cafile=cafile)
    except SSLError as exc:
        reason = str(exc.reason or exc).lower().replace("_", " ")
        raise ConfigurationError(f"cafile: {cafile} holds no PEM certificate ({reason})") from None
    except OSError as exc:
        raise ConfigurationError(f"cafile: cannot read {cafile}: {exc.strerror or exc}") from None


async def _tls_closed(protocol: Any) -> None:
    """Wait until the socket of a TLS connection whose websocket has closed is closed
    too. Closing TLS takes one more exchange with the daemon, which aiohttp leaves to
    finish in the background: a caller whose loop ends at once (``asyncio.run``
    around the client) would leave the socket open until it is collected. The wait is
    one round trip; past ``_TLS_CLOSE`` the connection is aborted."""
    closed = getattr(protocol, "closed", None)
    if not isinstance(closed, asyncio.Future):
        return
    # asyncio.wait: a timeout must not cancel aiohttp's own future.
    await asyncio.wait([closed], timeout=_TLS_CLOSE)
    if not closed.done():
        protocol.abort()


def reply_type_of(message_type: type[Any]) -> Any:
    """The ``R`` of a ``Request[R]`` subclass, also through generic classes between
    them (``class Get(Lookup[int])`` with ``class Lookup(Request[T])``); ``Any`` when
    it cannot be told (a class still generic in ``R``)."""
    found = _reply_type(message_type, {})
    return Any if found is None or isinstance(found, TypeVar) else found


def _reply_type(klass: type[Any], bound: Mapping[Any, Any]) -> Any:
    for base in getattr(klass, "__orig_bases__", ()):
        origin = typing.get_origin(base) or base
        args = tuple(bound.get(arg, arg) for arg in typing.get_args(base))
        if origin is Request:
            return args[0] if args else None
        if isinstance(origin, type) and issubclass(origin, Request):
            params = getattr(origin, "__parameters__", ())
            found = _reply_type(origin, dict(zip(params, args, strict=False)))
            if found is not None:
                return found
    return None


class EventStream:
    """A subscription: an async iterator of events (and ``Dropped`` notices).

    Use it as ``async with client.subscribe([...]) as events``; leaving the block
    unsubscribes (by an exception or a cancellation: without waiting for the daemon's
    acknowledgement)."""

    def __init__(self, client: Client, topics: Sequence[Topic], level: LogLevel) -> None:
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


class Client:
    """A connection to a daemon's control channel. Create it with ``fiefdom.connect``.

    ``url`` is ``ws://host:port`` (``http://`` and a bare ``host:port`` mean the
    same), or ``wss://host:port`` (``https://``) for a daemon that serves TLS. On a
    ``wss://`` URL the daemon's certificate is verified, its host name included:
    against the system's trusted CAs by default, against the CA certificates of the
    PEM file ``cafile``, or as the ``ssl.SSLContext`` given as ``ssl`` says (one of
    the two at most; either one on a ``ws://`` URL is a ValueError, since nothing
    would be encrypted). A ``cafile`` that cannot be read raises ConfigurationError;
    a certificate that fails verification, ``ControlConnectionError`` on start."""

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

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop("drain" if exc is None else "cancel")

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

    # -- typed requests ------------------------------------------------------------

    async def ping(self) -> None:
        await self._request(lambda i: Ping(id=i), Pong)

    async def status(self) -> StatusReply:
        return await self._request(lambda i: GetStatus(id=i), StatusReply)

    # A Request is also a Struct, so the overloads overlap by design: the first,
    # more precise one wins for requests.
    @overload
    async def call(  # type: ignore[overload-overlap]
        self,
        target: str,
        message: Request[R],
        *,
        key: str | None = None,
        timeout: float | None = 5.0,
    ) -> R: ...

    @overload
    async def call(
        self,
        target: str,
        message: msgspec.Struct,
        *,
        key: str | None = None,
        timeout: float | None = 5.0,
    ) -> None: ...

    async def call(
        self,
        target: str,
        message: msgspec.Struct,
        *,
        key: str | None = None,
        timeout: float | None = 5.0,
    ) -> Any:
        """Send ``message`` to the exposed actor ``target`` (``key`` for a domain).
        A ``Request[R]`` returns the actor's reply decoded as ``R``; others return None."""
        payload = msgspec.Raw(self.codec.encode(message))
        reply = await self._request(
            lambda i: Call(
                id=i,
                target=target,
                message_type=type(message).__name__,
                message=payload,
                key=key,
                timeout=timeout,
            ),
            CallReply,
        )
        if not isinstance(message, Request):
            return None
        return self.codec.decode_as(reply.result, reply_type_of(type(message)))

    async def call_by_name(
        self,
        target: str,
        message_type: str,
        fields: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        timeout: float | None = 5.0,
    ) -> Any:
        """``call`` without the message's class: the message type as the target
        registered it and its fields; returns the reply as plain values (dicts, lists,
        numbers, strings; None for a tell). The reply may take ``timeout`` seconds
        (the actor's deadline) more than the client's usual timeout."""
        payload = msgspec.Raw(self.codec.encode(dict(fields or {})))
        reply = await self._request(
            lambda i: Call(
                id=i,
                target=target,
                message_type=message_type,
                message=payload,
                key=key,
                timeout=timeout,
            ),
            CallReply,
            timeout=self._waiting(timeout),
        )
        return self.codec.decode_as(reply.result, Any)

    async def pause_actor(self, target: str, *, key: str | None = None) -> None:
        """Pause the exposed actor ``target``: it finishes its current message and
        takes no next one until resumed. For a domain, ``key`` pauses one key (also its
        later activations); without one, the whole domain."""
        await self._request(lambda i: PauseActor(id=i, target=target, key=key), Ack)

    async def resume_actor(self, target: str, *, key: str | None = None) -> None:
        """Resume what ``pause_actor`` paused (a whole domain: every key)."""
        await self._request(lambda i: ResumeActor(id=i, target=target, key=key), Ack)

    async def stop_actor(
        self, target: str, *, key: str | None = None, timeout: float | None = None
    ) -> None:
        """Stop the exposed actor ``target`` once it has handled what is queued (paused
        or not) and return when it has stopped; a domain ``key`` is passivated, a whole
        domain has every live activation passivated."""
        await self._request(
            lambda i: StopActor(id=i, target=target, key=key, timeout=timeout),
            Ack,
            timeout=self._waiting(timeout),
        )

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        kind: str | None = None,
        after_id: int = 0,
        limit: int = 100,
        key: str | None = None,
        since: datetime | None = None,
        newest_first: bool = False,
    ) -> list[JobInfo]:
        """Jobs matching the filters, by id, starting after ``after_id`` (at most
        ``limit``, up to 10000), as the store's ``list_jobs`` returns them (with
        ``newest_first``, ids going down from below ``after_id``)."""
        page = await self.jobs_page(
            queue=queue,
            state=state,
            kind=kind,
            after_id=after_id,
            limit=limit,
            key=key,
            since=since,
            newest_first=newest_first,
        )
        return page.jobs

    async def jobs_page(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        kind: str | None = None,
        after_id: int = 0,
        limit: int = 100,
        key: str | None = None,
        since: datetime | None = None,
        newest_first: bool = False,
        count: bool = False,
    ) -> JobsReply:
        """``list_jobs`` as the reply it came in: with ``count``, its ``total`` is how
        many jobs the filters match in all pages (counted up to ``total_cap``)."""
        at = None if since is None else since.timestamp()
        return await self._request(
            lambda i: ListJobs(
                id=i,
                queue=queue,
                state=state,
                kind=kind,
                after_id=after_id,
                limit=limit,
                key=key,
                since=at,
                newest_first=newest_first,
                count=count,
            ),
            JobsReply,
        )

    async def get_job(self, job_id: int) -> JobInfo:
        """One job; ``NotFound`` when there is none."""
        return (await self._request(lambda i: GetJob(id=i, job_id=job_id), JobReply)).job

    # The name get_job had before; kept while callers move to get_job.
    job = get_job

    async def enqueue(
        self,
        kind: str,
        args: msgspec.Struct | Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
    ) -> Enqueued:
        """Enqueue a job of ``kind`` (registered in the daemon) with these arguments;
        returns what the store's ``enqueue`` does (``duplicate`` when a unique job
        like it exists: ``id`` is that job's)."""
        payload = msgspec.Raw(self.codec.encode(args if args is not None else {}))
        reply = await self._request(
            lambda i: EnqueueJob(
                id=i, kind=kind, args=payload, queue=queue, priority=priority, delay=delay
            ),
            EnqueueReply,
        )
        return reply.enqueued

    async def retry_job(self, job_id: int, *, force: bool = False) -> JobInfo:
        """Make a discarded or cancelled job available again (a completed one only with
        ``force``: it runs a second time); returns it."""
        return (await self.job_action("retry", job_id, force=force))[0]

    async def cancel_job(self, job_id: int) -> JobInfo:
        """Cancel a job (a running one is stopped by its engine); returns it."""
        return (await self.job_action("cancel", job_id))[0]

    async def job_action(
        self, action: Literal["retry", "cancel"], job_id: int, *, force: bool = False
    ) -> tuple[JobInfo, JobState | None]:
        """Retry or cancel a job; returns it as it is now and the state it was in
        before (None from a daemon older than that field)."""
        reply = await self._request(
            lambda i: (
                RetryJob(id=i, job_id=job_id, force=force)
                if action == "retry"
                else CancelJob(id=i, job_id=job_id)
            ),
            JobReply,
        )
        return reply.job, reply.previous

    async def job_kinds(self) -> list[KindInfo]:
        """The job kinds registered in the daemon, with their options."""
        return (await self._request(lambda i: ListJobKinds(id=i), KindsReply)).kinds

    async def retry_jobs(
        self,
        state: JobState,
        *,
        queue: str | None = None,
        kind: str | None = None,
        limit: int = 100_000,
        force: bool = False,
    ) -> tuple[int, int]:
        """Retry every job in ``state`` (discarded, cancelled; completed with
        ``force``) of ``queue`` and ``kind``, at most ``limit``, in one transaction;
        returns how many were retried and how many skipped (a duplicate holds their
        unique key)."""
        reply = await self._request(
            lambda i: RetryJobs(
                id=i, state=state, queue=queue, kind=kind, limit=limit, force=force
            ),
            RetriedReply,
        )
        return reply.retried, reply.skipped

    async def prune_jobs(
        self,
        older_than: float,
        *,
        states: Sequence[JobState] | None = None,
        queue: str | None = None,
        kind: str | None = None,
        limit: int = 100_000,
    ) -> tuple[int, bool]:
        """Delete final jobs (``states``, by default every final one) that finished
        more than ``older_than`` seconds ago; returns how many were deleted and
        whether ``limit`` was reached (more may be left)."""
        chosen = list(states) if states is not None else None
        reply = await self._request(
            lambda i: (
                PruneJobs(id=i, older_than=older_than, queue=queue, kind=kind, limit=limit)
                if chosen is None
                else PruneJobs(
                    id=i, older_than=older_than, states=chosen, queue=queue, kind=kind, limit=limit
                )
            ),
            PrunedReply,
        )
        return reply.deleted, reply.more

    async def queues(self) -> list[QueueInfo]:
        """Every queue: paused or not, and its jobs counted by state."""
        return (await self._request(lambda i: ListQueues(id=i), QueuesReply)).queues

    async def pause(self, queue: str) -> None:
        """Stop claiming from ``queue``, for every daemon on the database."""
        await self._request(lambda i: PauseQueue(id=i, queue=queue), Ack)

    async def resume(self, queue: str) -> None:
        """Claim from ``queue`` again."""
        await self._request(lambda i: ResumeQueue(id=i, queue=queue), Ack)

    async def drain_queue(self, queue: str, *, timeout: float | None = None) -> None:
        await self._request(
            lambda i: DrainQueue(id=i, queue=queue, timeout=timeout),
            Ack,
            timeout=self._waiting(timeout),
        )

    async def drain(self, *, timeout: float | None = None) -> None:
        """Drain the daemon: no new jobs are claimed and running ones finish (within
        the daemon's shutdown deadline); returns once they have, or after ``timeout``."""
        await self._request(
            lambda i: Drain(id=i, timeout=timeout), Ack, timeout=self._waiting(timeout)
        )

    async def stop_daemon(self, mode: Literal["drain", "cancel"] = "drain") -> None:
        """Ask the daemon to stop (as a SIGTERM would, or a second one with
        ``cancel``); returns once it has accepted. ``stop()`` closes this client."""
        await self._request(lambda i: Stop(id=i, mode=mode), Ack)

    async def dump(self) -> DumpReply:
        return await self._request(lambda i: Dump(id=i), DumpReply)

    def subscribe(self, topics: Sequence[Topic], *, level: LogLevel = "info") -> EventStream:
        """Events of ``topics`` (``"jobs"``, ``"actors"``, ``"logs"`` at or above ``level``)."""
        return EventStream(self, topics, level)


def connect(
    url: str,
    *,
    token: str | None,
    encoding: Encoding | Literal["json", "msgpack"] = Encoding.JSON,
    timeout: float = 30.0,
    ssl: SSLContext | None = None,
    cafile: str | PathLike[str] | None = None,
) -> Client:
    """A client of the daemon at ``url`` (``ws://host:port``, ``http://host:port``
    or ``host:port``; ``wss://`` or ``https://`` for TLS, verified against ``cafile``
    or by ``ssl`` when given, see ``Client``); use it as ``async with
    fiefdom.connect(url, token=...) as c``."""
    return Client(url, token=token, encoding=encoding, timeout=timeout, ssl=ssl, cafile=cafile)
