"""One websocket client of the control channel: decoding its frames, its rate limit
(a frame past it is dropped undecoded, and the socket is left unread until the rate
allows a frame again: see _fairness.py), authentication and roles, the order its
requests are answered in, its event subscriptions, and the one exhaustive ``match``
that dispatches every request."""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Coroutine
from typing import Any, Final, Protocol, assert_never, get_args

import anyio
import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from ..actors._envelope import Ask
from . import _requests as requests
from ._codec import SERVER_JSON, SERVER_MSGPACK, Codec
from ._depth import json_too_deep
from ._fairness import FairScheduler, RateLimiter, Slot
from ._hub import Subscription
from ._messages import (
    CLIENT_TYPES,
    PROTOCOL_VERSION,
    Call,
    CancelJob,
    ClientMessage,
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
    role_allows,
)
from ._metrics import ControlMetrics
from ._registry import ControlHost, NotFound
from ._replies import (
    Ack,
    Dropped,
    DumpReply,
    Error,
    Event,
    Pong,
    Reply,
    Subscribed,
    Welcome,
)
from ._settings import ControlSettings, TokenTable

_TOPICS: Final[list[Topic]] = ["jobs", "actors", "logs"]
# Frames read from one connection between two turns given to the others: reading a
# buffered frame does not suspend, so a client that keeps its socket full would hold
# the event loop for as long as its burst lasts. A few per turn keep the switch cheap
# for a busy well-behaved client.
_FRAMES_PER_TURN: Final = 8

# Answered by the reading task itself, before the next frame is read: a hello
# decides the role of what follows, a subscription's events must follow its
# ``subscribed`` reply, and a ping measures the connection, not the daemon's load.
# Every other request runs concurrently (a slow call must not hold up a status).
_IN_ORDER: Final = (Hello, Ping, Subscribe, Unsubscribe)

# The request types a connection may start where they are parsed (take_frame), by
# the role it was welcomed with: those its role allows, other than _IN_ORDER's.
_DIRECT: Final[dict[Role, frozenset[type]]] = {
    role: frozenset(
        t
        for t in CLIENT_TYPES.values()
        if not issubclass(t, _IN_ORDER) and role_allows(role, t.role)
    )
    for role in get_args(Role)
}
_NONE: Final[frozenset[type]] = frozenset()
# The name each request type is counted under (ControlServer.count_frame's).
_TAGS: Final[dict[type, str]] = {t: tag for tag, t in CLIENT_TYPES.items()}

# Headers of the frames the server writes itself (see Connection.write): final, not
# masked, not compressed (RFC 6455, 5.2).
_PACK_LEN2: Final = struct.Struct("!BBH").pack
_PACK_LEN3: Final = struct.Struct("!BBQ").pack
_FIN_TEXT: Final = 0x80 | WSMsgType.TEXT
_FIN_BINARY: Final = 0x80 | WSMsgType.BINARY
# The headers of the frames shorter than 126 bytes (two bytes: the first, the size),
# by first byte and size, made once instead of for every reply.
_HEADERS: Final[dict[int, tuple[bytes, ...]]] = {
    first: tuple(bytes((first, size)) for size in range(126)) for first in (_FIN_TEXT, _FIN_BINARY)
}
# (Read from WSMsgType once: see _socket._TEXT.)
_TEXT: Final = WSMsgType.TEXT
_BINARY: Final = WSMsgType.BINARY

# A refused hello closes the connection once its error is sent.
_HELLO_CLOSES: Final[dict[ErrorCode, tuple[int, str]]] = {
    ErrorCode.UNAUTHENTICATED: (WSCloseCode.POLICY_VIOLATION, "authentication failed"),
    ErrorCode.UNAVAILABLE: (WSCloseCode.TRY_AGAIN_LATER, "too many connections"),
}


# What to do once a queued frame is written (see Connection.send).
_Then = Slot["Connection"] | asyncio.Future[None]


class ConnectionOwner(Protocol):
    """What a connection needs from the server that accepted it."""

    host: ControlHost
    settings: ControlSettings
    tokens: TokenTable
    metrics: ControlMetrics

    @property
    def connections(self) -> int: ...

    def admit(self, conn: Connection) -> bool:
        """Count an authenticated connection, unless ``max_connections`` are taken."""
        ...

    @property
    def scheduler(self) -> FairScheduler[Connection]:
        """The server's slots for requests running at once, shared fairly."""
        ...

    def count_frame(self, message_type: type[msgspec.Struct]) -> None: ...


class Connection:
    """One websocket client: its role, rate limit, in-flight requests and subscriptions."""

    def __init__(
        self,
        server: ConnectionOwner,
        ws: web.WebSocketResponse,
        role: Role | None,
        transport: asyncio.Transport | None = None,
    ):
        self.server = server
        self.host = server.host
        self.ws = ws
        # The socket under the websocket, written to directly (see write); without
        # one, every frame goes through aiohttp's writer.
        self.transport = transport
        self.high_water = 0
        if transport is not None:
            try:
                self.high_water = transport.get_write_buffer_limits()[1]
            except NotImplementedError:
                self.transport = None
        self.role = role
        settings = server.settings
        self.scheduler = server.scheduler
        self.max_depth = settings.max_frame_depth
        self.limiter = RateLimiter(settings.messages_per_second, settings.burst)
        self.max_in_flight = settings.max_in_flight
        self.subscriptions: dict[int, Subscription] = {}
        # The connection's tasks (requests, event pumps, the hello deadline): plain
        # asyncio tasks, owned here and cancelled and awaited when the connection
        # ends. They are created per request, where a task group's per-spawn cost
        # showed up as a third of a call's time.
        self.tasks: set[asyncio.Task[None]] = set()
        self.pumps: set[asyncio.Task[None]] = set()  # the event pumps among them
        self.requests = 0
        # Of those, the ones answered by a task (the others are calls started without
        # one, see _start): a call starts without one only when none is left, so
        # that it cannot reach an actor before a request read earlier.
        self.in_tasks = 0
        self.calls: set[_Call] = set()
        # Frames waiting for the socket to drain (see send), each with what to do once
        # it is written: end the request holding this slot, or set this future.
        self.outbox: deque[tuple[bytes, Codec[ClientMessage], _Then]] = deque()
        # Set while the reading task waits for a request to end (max_in_flight).
        self.slot_waiter: asyncio.Future[None] | None = None
        self.welcomed = role is not None
        # The request types take_frame may start (see _DIRECT).
        self.direct = _NONE if role is None else _DIRECT[role]
        self.frames = server.metrics.frames  # frames received by type
        self.evicted: str | None = None  # why it was closed to make room for another
        # Python 3.11's asyncio.get_running_loop costs a getpid system call: the loop
        # is looked up once (a connection is made by the request handler, in the loop).
        self.loop = asyncio.get_running_loop()
        # Frames handled that way since the reading task or a call's reply last ran,
        # that is within one turn of the event loop at most (see _FRAMES_PER_TURN).
        self.taken = 0

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def close(self, code: int, message: str) -> None:
        for sub in self.subscriptions.values():
            self.host.hub.unsubscribe(sub)
        await self.ws.close(code=code, message=message.encode())

    async def finish(self, code: int, message: str) -> None:
        """Close at shutdown: first let the event pumps send what their subscriptions
        hold (a subscriber sees the last job events of a drain), then close."""
        for sub in self.subscriptions.values():
            self.host.hub.unsubscribe(sub)
        pumps = list(self.pumps)
        if pumps:
            await asyncio.wait(pumps)
        await self.ws.close(code=code, message=message.encode())

    async def run(self) -> None:
        try:
            if self.evicted is not None:
                await self.close(WSCloseCode.TRY_AGAIN_LATER, self.evicted)
                return
            if self.role is None:
                self.spawn(self._hello_deadline(), "control/hello-deadline")
            frames = 0
            receive = self.ws.receive
            while True:
                # (While this waits, frames may be handled as they are parsed: _socket.py.)
                msg = await receive()
                self.taken = 0
                kind = msg.type
                if kind is _TEXT:
                    codec = SERVER_JSON
                elif kind is _BINARY:
                    codec = SERVER_MSGPACK
                else:
                    # An error (a frame over max_frame_bytes: aiohttp has closed the
                    # socket with 1009, unanswered) or a close.
                    break
                # Counted against the rate before anything else is spent on it.
                if self.limiter.take():
                    await self._handle(msg.data, codec)
                else:
                    await self._drop(codec)
                # (See _FRAMES_PER_TURN.)
                frames += 1
                if frames % _FRAMES_PER_TURN == 0:
                    await asyncio.sleep(0)
        finally:
            for sub in self.subscriptions.values():
                self.host.hub.unsubscribe(sub)
            self.subscriptions.clear()
            # The client is gone: nothing can be replied any more. Its requests are
            # cancelled, and calls' asks abandoned as a cancelled ask's caller would
            # (the slot is given back once the handler has returned).
            tasks = list(self.tasks)
            for task in tasks:
                task.cancel()
            calls, self.calls = list(self.calls), set()
            for call in calls:
                call.ask.abandon()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(
                    *tasks, *(call.abandoned() for call in calls), return_exceptions=True
                )
            self.server.scheduler.drop(self)

    def evict(self, reason: str) -> None:
        """Close this connection, still to say hello, to make room for a newcomer (at
        once, or as soon as its handshake is done)."""
        self.evicted = reason
        if self.ws.prepared:
            self.spawn(self.close(WSCloseCode.TRY_AGAIN_LATER, reason), "control/evict")

    async def _hello_deadline(self) -> None:
        await anyio.sleep(self.server.settings.hello_timeout)
        if self.role is None:
            await self.close(WSCloseCode.POLICY_VIOLATION, "no hello within the deadline")

    # -- writing frames ---------------------------------------------------------------
    #
    # Frames go out in the order they are sent. One is written to the socket at once
    # (``write``) while the socket holds nothing unsent and no earlier frame waits;
    # otherwise it joins ``outbox``, which one task writes through aiohttp's writer,
    # waiting for the socket to drain. Whoever sent it waits until it is written: a
    # request stays in flight meanwhile, so a client that reads none of its replies
    # stops being read (max_in_flight).

    async def send(self, codec: Codec[ClientMessage], frame: Reply | Event | Dropped) -> None:
        """Send ``frame``: returns once it is written."""
        data = self.encode(codec, frame)
        if not self.outbox and self.write(data, codec):
            return
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue(data, codec, written)
        await written

    def answer(self, codec: Codec[ClientMessage], data: bytes, slot: Slot[Connection]) -> None:
        """Send the reply (encoded: ``data``) to a request started without a task (see
        ``_start``), which holds ``slot`` and stays in flight until it is written."""
        if not self.outbox and self.write(data, codec):
            self._ended(slot)
        else:
            self._queue(data, codec, slot)

    def encode(self, codec: Codec[ClientMessage], frame: Reply | Event | Dropped) -> bytes:
        if isinstance(frame, Error):
            self.server.metrics.ws_errors.labels(code=str(frame.code)).inc()
        return codec.encode(frame)

    def write(self, data: bytes, codec: Codec[ClientMessage]) -> bool:
        """Write a frame to the socket now, without a coroutine (a call's reply is
        written from a callback): True when written, or dropped because the websocket
        is closed (aiohttp would refuse it too). False, writing nothing, while the
        socket holds unsent data (or for a frame past its buffer's high-water mark)."""
        transport = self.transport
        size = len(data)
        if transport is None or transport.get_write_buffer_size() or size > self.high_water:
            return False
        # (The websocket's ``closed``, read without its property's call.)
        if self.ws._closed or transport.is_closing():
            return True  # the peer has gone, or is told goodbye: nothing to tell it
        first = _FIN_TEXT if codec is SERVER_JSON else _FIN_BINARY
        if size < 126:
            transport.write(_HEADERS[first][size] + data)
        elif size < 65536:
            transport.write(_PACK_LEN2(first, 126, size) + data)
        else:
            transport.write(_PACK_LEN3(first, 127, size) + data)
        return True

    def _queue(self, data: bytes, codec: Codec[ClientMessage], then: _Then) -> None:
        outbox = self.outbox
        outbox.append((data, codec, then))
        if len(outbox) == 1:
            self.spawn(self._write_queued(), "control/writer")

    async def _write_queued(self) -> None:
        outbox = self.outbox
        try:
            while outbox:
                data, codec, then = outbox[0]
                opcode = _TEXT if codec is SERVER_JSON else _BINARY
                # The peer may go away between its request and our reply; nothing to
                # tell then. (A try statement: a context manager costs more.)
                try:  # noqa: SIM105
                    await self.ws.send_frame(data, opcode)
                except (ConnectionError, RuntimeError):
                    pass
                outbox.popleft()
                self._written(then)
        finally:
            # Cancelled: the connection has ended, and what is left is not sent.
            while outbox:
                self._written(outbox.popleft()[2])

    def _written(self, then: _Then) -> None:
        if isinstance(then, Slot):
            self._ended(then)
        elif not then.done():
            then.set_result(None)

    def _ended(self, slot: Slot[Connection]) -> None:
        """A request started without a task has been answered."""
        slot.release()
        self.requests -= 1
        if self.slot_waiter is not None:
            self._slot_freed()

    def _slot_freed(self) -> None:
        """A request has ended: wake the reading task if it waits for one to."""
        waiter = self.slot_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- reading frames --------------------------------------------------------------

    async def _drop(self, codec: Codec[ClientMessage]) -> None:
        """A frame past the rate, dropped unread (the first of a window is answered);
        then nothing is read until the rate allows a frame again: aiohttp stops
        reading the socket once its buffer is full, and the client's sends block."""
        frames = self.server.metrics.frames
        frames["rate_limited"] = frames.get("rate_limited", 0) + 1
        if self.limiter.refuse():
            await self.send(codec, self.limiter.error())
        await self.limiter.pause()

    async def _handle(self, data: bytes, codec: Codec[ClientMessage]) -> None:
        frames = self.server.metrics.frames
        depth = self.max_depth
        if codec.too_deep(data, depth):
            frames["invalid"] = frames.get("invalid", 0) + 1
            await self.send(codec, codec.depth_error(depth))
            return
        try:
            msg = codec.decode(data)
        except msgspec.DecodeError as exc:
            frames["invalid"] = frames.get("invalid", 0) + 1
            await self.send(codec, codec.explain(data, exc))
            return
        self.server.count_frame(type(msg))
        if msg.cost > 1:
            self.limiter.charge(msg.cost - 1)
        refused = self._refusal(msg)
        if refused is not None:
            await self.send(codec, refused)
        elif isinstance(msg, _IN_ORDER):
            await self._answer(msg, codec)
        else:
            # At most max_in_flight at once: reading stops while they are all taken.
            while self.requests >= self.max_in_flight:
                waiter = self.slot_waiter = self.loop.create_future()
                try:
                    await waiter
                finally:
                    self.slot_waiter = None
            self._start(msg, codec)

    def take_frame(self, data: bytes, codec: Codec[ClientMessage]) -> bool:
        """Handle a frame where aiohttp has just parsed it, without waking the reading
        task, when the reading task would have handled it without waiting: it is
        within the rate, not too deep, decodes, is allowed, is not answered in order
        and finds a request free within max_in_flight. Then it is started exactly as
        ``_handle`` starts it (a call to a spawned actor without a task, anything else
        in a task of its own). False, with nothing counted or taken, for any other
        frame: the reading task gets it and answers it as before. Only called while
        the reading task waits with nothing read before this frame left to handle
        (``_socket._Frames.idle``), so frames are still handled in the order read; and at most
        ``_FRAMES_PER_TURN`` between two turns of the reading task or of a reply."""
        limiter = self.limiter
        if (
            self.taken >= _FRAMES_PER_TURN
            or self.requests >= self.max_in_flight
            # Counted against the rate first, as the reading task does; given back
            # (untake) if the frame is left to the reading task after all.
            or not limiter.try_take()
        ):
            return False
        depth = self.max_depth
        if codec is SERVER_JSON:
            # (json_too_deep's first test, inline: a frame with fewer openers than
            # the limit cannot nest deeper.)
            if data.count(b"[") + data.count(b"{") > depth and json_too_deep(data, depth):
                limiter.untake()
                return False
        elif codec.too_deep(data, depth):
            limiter.untake()
            return False
        try:
            msg = codec.decode(data)
        except msgspec.DecodeError:
            limiter.untake()
            return False
        # Allowed to this connection, and not answered in order (see _DIRECT).
        kind = type(msg)
        if kind not in self.direct:
            limiter.untake()
            return False
        self.taken += 1
        # (ControlServer.count_frame, inline.)
        frames = self.frames
        tag = _TAGS[kind]
        frames[tag] = frames.get(tag, 0) + 1
        if msg.cost > 1:
            limiter.charge(msg.cost - 1)
        self._start(msg, codec)
        return True

    def _start(self, msg: ClientMessage, codec: Codec[ClientMessage]) -> None:
        """Start a request (not one answered in order), under max_in_flight."""
        self.requests += 1
        # In line for a slot now, in the order the requests were read (granted at
        # once, without a ticket to wait on, in the common case).
        scheduler = self.scheduler
        if scheduler.try_grant(self):
            ticket = None
            # A call to a spawned actor, with nothing of this connection's still in
            # a task, is started here (see requests.start_call) and answered by its
            # ask's done callback: no task, and two turns of the event loop fewer.
            if type(msg) is Call and not self.in_tasks:
                started = requests.start_call(self.host, msg, codec)
                if isinstance(started, Ask):
                    # The call holds the slot just granted: it is the slot.
                    call = _Call(scheduler, self, self.loop)
                    call.msg, call.codec, call.ask = msg, codec, started
                    self.calls.add(call)
                    done = call.done
                    started.future.add_done_callback(done)
                    # Answered from the actor's turn when its handler returns: a turn
                    # of the event loop less than a done callback (which answers any
                    # other outcome).
                    started.respond = done
                    return
                if started is not None:  # a message told: its reply
                    slot = Slot(scheduler, self, self.loop)
                    self.answer(codec, self.encode(codec, started), slot)
                    return
                # Else answered by a task, which waits (see requests.call).
        else:
            ticket = scheduler.ticket(self)
        self.in_tasks += 1
        self.spawn(self._answer_in_flight(msg, codec, ticket), "control/request")

    def _refusal(self, msg: ClientMessage) -> Error | None:
        """The error for a request this connection may not send (yet), or None."""
        if isinstance(msg, Hello):
            return None
        if self.role is None or not self.welcomed:
            return Error(
                id=msg.id,
                code=ErrorCode.UNAUTHENTICATED,
                message="send 'hello' with a token first",
            )
        if not role_allows(self.role, msg.role):
            return Error(
                id=msg.id,
                code=ErrorCode.FORBIDDEN,
                message=f"{msg.__struct_config__.tag!r} needs role {msg.role!r}, "
                f"the token has {self.role!r}",
                details={"needed": msg.role, "role": self.role},
            )
        return None

    async def _answer_in_flight(
        self,
        msg: ClientMessage,
        codec: Codec[ClientMessage],
        ticket: asyncio.Future[None] | None,
    ) -> None:
        # A slot granted before this task started and never claimed (cancelled first)
        # is taken back by the scheduler's drop() when the connection ends.
        try:
            scheduler = self.server.scheduler
            slot = Slot(scheduler, self) if ticket is None else await scheduler.run(self, ticket)
            try:
                await self._answer(msg, codec)
            finally:
                slot.release()
        finally:
            self.in_tasks -= 1
            self.requests -= 1
            self._slot_freed()

    async def _answer(self, msg: ClientMessage, codec: Codec[ClientMessage]) -> None:
        try:
            reply = await self._dispatch(msg, codec)
        except Exception as exc:
            reply = requests.error_reply(msg, exc)
        await self.send(codec, reply)
        # What follows the reply on the wire:
        if isinstance(reply, Subscribed):
            sub = self.subscriptions[reply.subscription]
            pump = self.spawn(self._pump(sub, codec), f"control/events/{sub.id}")
            self.pumps.add(pump)
            pump.add_done_callback(self.pumps.discard)
        elif isinstance(msg, Hello) and isinstance(reply, Error) and reply.code in _HELLO_CLOSES:
            await self.close(*_HELLO_CLOSES[reply.code])

    # -- the requests ------------------------------------------------------------------

    async def _dispatch(self, msg: ClientMessage, codec: Codec[ClientMessage]) -> Reply:
        host = self.host
        match msg:
            case Call():  # first: by far the most frequent request
                return await requests.call(host, msg, codec)
            case Hello():
                return self._hello(msg)
            case Ping():
                return Pong(id=msg.id)
            case Subscribe():
                return self._subscribe(msg)
            case Unsubscribe():
                return self._unsubscribe(msg)
            case GetStatus():
                return await requests.status(host, msg, self.server.connections)
            case PauseActor() | ResumeActor() | StopActor():
                return await requests.operate(host, msg)
            case ListJobs():
                return await requests.list_jobs(host, msg)
            case GetJob():
                return await requests.get_job(host, msg)
            case EnqueueJob():
                return await requests.enqueue(host, msg, codec)
            case RetryJob():
                return await requests.retry_job(host, msg)
            case CancelJob():
                return await requests.cancel_job(host, msg)
            case ListJobKinds() | RetryJobs() | PruneJobs():
                return await requests.job_maintenance(host, msg)
            case ListQueues():
                return await requests.queues(host, msg)
            case PauseQueue() | ResumeQueue():
                return await requests.pause_or_resume_queue(host, msg)
            case DrainQueue():
                return await requests.drain_queue(host, msg)
            case Drain():
                return await requests.drain(host, msg)
            case Stop():
                host.request_stop(msg.mode)
                return Ack(id=msg.id)
            case Dump():
                path, count = await host.dump()
                return DumpReply(id=msg.id, path=path, events=count)
            case _:
                assert_never(msg)

    def _hello(self, msg: Hello) -> Welcome | Error:
        if msg.version != PROTOCOL_VERSION:
            return Error(
                id=msg.id,
                code=ErrorCode.VERSION_MISMATCH,
                message=f"protocol version {msg.version} is not supported; "
                f"this server speaks {PROTOCOL_VERSION}",
                details={"supported": [PROTOCOL_VERSION]},
            )
        role = self.server.tokens.role_of(msg.token) if msg.token is not None else self.role
        if role is None:
            return Error(
                id=msg.id,
                code=ErrorCode.UNAUTHENTICATED,
                message="wrong or missing token" if msg.token else "missing token",
            )
        if not self.server.admit(self):
            limit = self.server.settings.max_connections
            return Error(
                id=msg.id,
                code=ErrorCode.UNAVAILABLE,
                message=f"too many connections (limit {limit})",
            )
        self.role = role
        self.welcomed = True
        self.direct = _DIRECT[role]
        return Welcome(
            id=msg.id,
            version=PROTOCOL_VERSION,
            role=role,
            server=self.host.name,
            topics=_TOPICS,
        )

    def _subscribe(self, msg: Subscribe) -> Subscribed:
        # Its events start flowing once the reply is out (see _answer).
        sub = self.host.hub.subscribe(msg.topics, msg.level)
        self.subscriptions[sub.id] = sub
        return Subscribed(id=msg.id, subscription=sub.id)

    def _unsubscribe(self, msg: Unsubscribe) -> Ack:
        sub = self.subscriptions.pop(msg.subscription, None)
        if sub is None:
            raise NotFound(f"no subscription {msg.subscription} on this connection")
        self.host.hub.unsubscribe(sub)
        return Ack(id=msg.id)

    async def _pump(self, sub: Subscription, codec: Codec[ClientMessage]) -> None:
        while True:
            events, dropped = await sub.next_batch()
            if dropped:
                self.server.metrics.events_dropped.inc(dropped)
                await self.send(codec, Dropped(subscription=sub.id, count=dropped))
            if not events and not dropped:
                return  # unsubscribed
            for event in events:
                await self.send(codec, Event(subscription=sub.id, data=event))


class _Call(Slot["Connection"]):
    """A call to an actor started by the connection's reader, in flight until its ask's
    future is done: its done callback answers it. It is the slot it holds, made with
    the slot's arguments: ``Connection._start`` sets the rest."""

    __slots__ = ("ask", "codec", "msg")

    msg: Call
    codec: Codec[ClientMessage]
    ask: Ask

    def done(self, future: asyncio.Future[object]) -> None:
        """The ask's outcome: called from the actor's turn when its handler returned
        (``Ask.respond``), else as the future's done callback."""
        self.ask.respond = None  # (already None when called from the actor's turn)
        conn = self._owner  # the slot's owner: the connection
        try:
            conn.calls.remove(self)
        except KeyError:
            return  # abandoned: the connection has ended (see abandoned)
        conn.taken = 0  # a turn of the event loop has passed since the call was read
        msg, codec = self.msg, self.codec
        try:
            result = future.result()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # A cell fails an ask with an Exception (see Cell._failure_of).
            failure = exc if isinstance(exc, Exception) else Exception(repr(exc))
            data = conn.encode(codec, requests.error_reply(msg, requests.call_failed(msg, failure)))
        else:
            try:
                data = codec.encode(requests.CallResult(id=msg.id, result=result))
            except Exception as unencodable:
                data = conn.encode(codec, requests.error_reply(msg, unencodable))
        # (Connection.answer and _ended, inline.)
        if not conn.outbox and conn.write(data, codec):
            self.release()
            conn.requests -= 1
            if conn.slot_waiter is not None:
                conn._slot_freed()
        else:
            conn._queue(data, codec, self)

    async def abandoned(self) -> None:
        """After ``Ask.abandon`` (the connection has ended): wait as a cancelled ask's
        caller would, until its handler has returned, then give the slot back."""
        try:
            await self.ask.wait_exited(self.ask.cell.cancel_grace)
        finally:
            self.release()
