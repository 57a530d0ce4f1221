"""The control server (aiohttp): ``/healthz``, ``/readyz``, ``/metrics``,
``/schema`` and the websocket control channel ``/ws``. Authentication happens
once, at this boundary, from ``REQUIRED_ROLE`` and ``ENDPOINT_ROLE``. The server
is a supervisor ``Service`` (``serve``/``request_stop``/``cancel``/``close``/
``reset``), and has the lifecycle every component shares (``state``, ``start``,
``stop(mode)``, ``async with``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any

import anyio
import msgspec
import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from .._errors import (
    ActorStopped,
    AskTimeout,
    ControlError,
    FiefdomError,
    JobError,
    MailboxFull,
    StoreError,
    UnknownJobKind,
)
from .._lifecycle import Lifecycle, State
from ..actors import ActorRef, Domain, StopMode
from ._codec import SERVER_JSON, SERVER_MSGPACK, Codec, json_schema
from ._hub import Subscription
from ._messages import (
    ENDPOINT_ROLE,
    PROTOCOL_VERSION,
    REQUIRED_ROLE,
    Ack,
    Call,
    CallReply,
    CancelJob,
    Drain,
    DrainQueue,
    Dropped,
    Dump,
    DumpReply,
    EnqueueJob,
    Error,
    ErrorCode,
    Event,
    GetJob,
    GetStatus,
    Hello,
    JobReply,
    JobsReply,
    ListJobs,
    ListQueues,
    PauseActor,
    PauseQueue,
    Ping,
    Pong,
    QueueInfo,
    QueuesReply,
    ResumeActor,
    ResumeQueue,
    RetryJob,
    Role,
    StatusReply,
    Stop,
    StopActor,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Welcome,
    role_allows,
)
from ._metrics import ControlMetrics
from ._registry import ControlHost, JobService, Target, is_request
from ._settings import ControlSettings, TokenTable

log = structlog.get_logger("fiefdom.control")

_NULL = msgspec.Raw(b"null")
_MSGPACK_NIL = msgspec.Raw(b"\xc0")
_TOPICS: list[Any] = ["jobs", "actors", "logs"]


def _fail(code: ErrorCode, message: str, **details: Any) -> ControlError:
    """A typed error to raise in a request handler; it becomes the ``error`` frame."""
    return ControlError(code, message, details)


class _RateLimiter:
    """A token bucket: ``rate`` frames per second, bursts up to ``burst``."""

    __slots__ = ("_burst", "_last", "_level", "_rate")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._level = float(burst)
        self._last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._level = min(self._burst, self._level + (now - self._last) * self._rate)
        self._last = now
        if self._level >= 1.0:
            self._level -= 1.0
            return True
        return False


class ControlServer:
    """Serves the control channel for one daemon (``host``)."""

    def __init__(
        self,
        host: ControlHost,
        settings: ControlSettings,
        tokens: TokenTable,
        metrics: ControlMetrics | None = None,
    ) -> None:
        self.host = host
        self.settings = settings
        self.tokens = tokens
        self.metrics = metrics or ControlMetrics(host.system)
        self._connections: set[_Connection] = set()
        # Those of them without a role yet; the others count against max_connections.
        self._unauthenticated: set[_Connection] = set()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._schema = json.dumps(json_schema(), indent=2).encode()
        self._port: int | None = None
        self._closed: str | None = None
        self._new_run()

    def _new_run(self) -> None:
        """The state of one run, from start() to the end of stop() (a supervisor
        restart starts a new run)."""
        self._lifecycle = Lifecycle(
            f"control server of {self.host.name!r}",
            "use 'async with ControlServer(host, settings, tokens) as server'",
        )
        self._settled = asyncio.Event()  # start() has returned or failed
        self._stopped = asyncio.Event()
        # As a supervised service: what serve() waits for, and what cancel() cuts short.
        self._stop_requested = asyncio.Event()
        self._serve_scope: anyio.CancelScope | None = None
        self._closing_scope: anyio.CancelScope | None = None
        self._cancelled = False

    def count_frame(self, message_type: type[msgspec.Struct]) -> None:
        # A plain dict on the hot path; the metrics collector reads it at scrape time
        # (a prometheus Counter takes a lock per increment).
        tag = str(message_type.__struct_config__.tag)
        counts = self.metrics.frames
        counts[tag] = counts.get(tag, 0) + 1

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def authenticated(self) -> int:
        return len(self._connections) - len(self._unauthenticated)

    def _too_many(self, reason: str, message: str) -> web.Response:
        self.metrics.ws_refused.labels(reason=reason).inc()
        return web.json_response({"code": ErrorCode.UNAVAILABLE, "message": message}, status=503)

    def admit(self, conn: _Connection) -> bool:
        """A connection has just authenticated (hello): count it against
        max_connections, unless they are all taken."""
        if conn not in self._unauthenticated:
            return True
        if self.authenticated >= self.settings.max_connections:
            self.metrics.ws_refused.labels(reason="too_many_connections").inc()
            return False
        self._unauthenticated.discard(conn)
        return True

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_frame_bytes)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._guard("/readyz", self._readyz))
        app.router.add_get("/metrics", self._guard("/metrics", self._metrics))
        app.router.add_get("/schema", self._guard("/schema", self._schema_endpoint))
        app.router.add_get("/ws", self._websocket)
        return app

    @property
    def state(self) -> State:
        """Where the server is in its lifecycle."""
        return self._lifecycle.state

    @property
    def port(self) -> int:
        """The port it listens on (the one the OS chose, when ``listen`` gave 0)."""
        self._lifecycle.check_running("read the port")
        assert self._port is not None
        return self._port

    async def start(self) -> None:
        """Listen on ``settings.listen``; returns once listening. A server runs once."""
        self._lifecycle.begin_start()
        try:
            host, port = self.settings.host_port()
            # A short aiohttp shutdown timeout: websockets are closed by stop() first.
            runner = web.AppRunner(
                self._app(), access_log=None, shutdown_timeout=self.settings.shutdown_timeout
            )
            await runner.setup()
            site = web.TCPSite(runner, host, port, reuse_address=True)
            try:
                await site.start()
            except BaseException:
                # The address is taken (or the start was cancelled): nothing may stay open.
                with anyio.CancelScope(shield=True):
                    await runner.cleanup()
                raise
        except BaseException:
            self._lifecycle.stopped()
            self._stopped.set()
            raise
        finally:
            self._settled.set()
        self._runner, self._site = runner, site
        sockets = getattr(site._server, "sockets", None) or []
        self._port = sockets[0].getsockname()[1] if sockets else port
        if self._lifecycle.state is State.STARTING:  # not stopped meanwhile
            self._lifecycle.started()
        log.info("control channel listening", host=host, port=self._port)

    async def stop(self, mode: StopMode = "drain") -> None:
        """Stop listening, let every subscriber receive the events already published,
        close every websocket (going away), then clean up. ``drain`` gives peers
        ``settings.shutdown_timeout`` to answer their close; ``cancel`` does not wait
        for them (and cuts short a drain under way). Before ``start()`` it returns at
        once; a second call waits for the first one's stop."""
        if mode == "cancel":
            self._cancel_closing()
        if not self._lifecycle.begin_stop():
            if self._lifecycle.state is State.STOPPING:
                await self._stopped.wait()
            return
        try:
            await self._settled.wait()  # a start under way listens first
            await self._close()
        finally:
            self._lifecycle.stopped()
            self._stopped.set()

    async def _close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            if self._site is not None:
                site, self._site = self._site, None
                await site.stop()
            with anyio.move_on_after(self.settings.shutdown_timeout) as closing:
                self._closing_scope = closing
                if self._cancelled:
                    closing.cancel()
                # Concurrently: one peer that does not answer its close must not hold
                # up the others until the deadline.
                async with anyio.create_task_group() as tg:
                    for conn in list(self._connections):
                        tg.start_soon(conn.finish, WSCloseCode.GOING_AWAY, "the daemon is stopping")
        finally:
            self._closing_scope = None
            # Also when the caller is cancelled: the socket and the app are released.
            with anyio.CancelScope(shield=True):
                await runner.cleanup()
        log.info("control channel stopped")

    def _cancel_closing(self) -> None:
        self._cancelled = True
        if self._closing_scope is not None:
            self._closing_scope.cancel()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop("drain" if exc is None else "cancel")

    # -- as a supervised service -------------------------------------------------

    async def serve(self, started: Callable[[], None] | None = None) -> None:
        """Listen, call ``started()``, serve until ``request_stop``, then ``stop``."""
        with anyio.CancelScope() as scope:
            self._serve_scope = scope
            await self.start()
            try:
                if started is not None:
                    started()
                await self._stop_requested.wait()
            finally:
                # Also when cancelled at the supervisor's deadline: the listening socket
                # and the connections must be released (cancel() made stop() skip the
                # wait for peers, so this is short).
                with anyio.CancelScope(shield=True):
                    await self.stop("cancel" if self._cancelled else "drain")
        self._serve_scope = None

    def request_stop(self, mode: StopMode) -> None:
        """Stop accepting connections and close the open ones (``serve`` returns);
        with ``cancel``, without waiting for peers to answer their close."""
        if mode == "cancel":
            self._cancel_closing()
        self._stop_requested.set()

    def cancel(self) -> None:
        """Stop at once: no waiting for peers to answer their close."""
        self._cancel_closing()
        self._stop_requested.set()
        if self._serve_scope is not None:
            self._serve_scope.cancel()

    def close(self, reason: str) -> None:
        """Gone for good: ``serve`` and ``start`` refuse to run again."""
        self._closed = reason
        self._lifecycle.begin_stop()  # a server never started ends stopped too

    def reset(self) -> None:
        """Prepare to serve again (after a supervisor restart): a new run, ``new``."""
        if self._closed is None:
            self._new_run()

    # -- HTTP --------------------------------------------------------------------

    def _bearer(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None

    def _refuse(self, request: web.Request, needed: Role) -> web.Response | None:
        presented = self._bearer(request)
        role = self.tokens.role_of(presented)
        if role is None:
            reason = "missing" if presented is None else "wrong"
            self.metrics.ws_refused.labels(reason=f"token_{reason}").inc()
            return web.json_response(
                {
                    "code": ErrorCode.UNAUTHENTICATED,
                    "message": f"{reason} token: send 'Authorization: Bearer <token>'",
                },
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="fiefdom"'},
            )
        if not role_allows(role, needed):
            self.metrics.ws_refused.labels(reason="forbidden").inc()
            return web.json_response(
                {
                    "code": ErrorCode.FORBIDDEN,
                    "message": f"{request.path} needs role {needed!r}, the token has {role!r}",
                },
                status=403,
            )
        return None

    def _guard(
        self, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        needed = ENDPOINT_ROLE[path]

        async def guarded(request: web.Request) -> web.StreamResponse:
            refused = self._refuse(request, needed)
            return refused if refused is not None else await handler(request)

        return guarded

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "pid": os.getpid()})

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = await self.host.readiness()
        ready = all(checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        queues: list[QueueInfo] = []
        jobs = self.host.jobs
        if jobs is not None:
            try:
                queues = await jobs.queues()
            except FiefdomError as exc:
                # Metrics keep answering during a database outage; /readyz reports it.
                log.warning("queue counts unavailable for /metrics", error=str(exc))
        body = self.metrics.render(queues)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _schema_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=self._schema, content_type="application/schema+json")

    # -- websocket -----------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        limit = self.settings.max_connections
        if self.authenticated >= limit:
            return self._too_many("too_many_connections", f"too many connections (limit {limit})")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            refused = self._refuse(request, ENDPOINT_ROLE["/ws"])
            if refused is not None:
                return refused
            return web.json_response(
                {"code": ErrorCode.INVALID_FRAME, "message": "/ws is a websocket endpoint"},
                status=400,
            )
        role: Role | None = None
        # A browser cannot set headers on a websocket: without one, the first frame
        # ("hello") must carry the token. A header that is present must be valid.
        if "Authorization" in request.headers:
            refused = self._refuse(request, ENDPOINT_ROLE["/ws"])
            if refused is not None:
                return refused
            role = self.tokens.role_of(self._bearer(request))
        if role is None and len(self._unauthenticated) >= self.settings.max_unauthenticated:
            waiting = self.settings.max_unauthenticated
            return self._too_many(
                "too_many_unauthenticated",
                f"too many connections waiting to authenticate (limit {waiting})",
            )
        if self._runner is None:
            return web.json_response(
                {"code": ErrorCode.UNAVAILABLE, "message": "the daemon is stopping"}, status=503
            )
        ws = web.WebSocketResponse(
            max_msg_size=self.settings.max_frame_bytes,
            decode_text=False,
            compress=False,
            heartbeat=30.0,
        )
        conn = _Connection(self, ws, role)
        # Counted before the handshake's await: concurrent upgrades see each other.
        self._connections.add(conn)
        if role is None:
            self._unauthenticated.add(conn)
        self.metrics.ws_connections.inc()
        try:
            await ws.prepare(request)
            await conn.run()
        finally:
            self._connections.discard(conn)
            self._unauthenticated.discard(conn)
            self.metrics.ws_connections.dec()
        return ws


class _Connection:
    """One websocket client: its role, rate limit, in-flight requests and subscriptions."""

    def __init__(self, server: ControlServer, ws: web.WebSocketResponse, role: Role | None) -> None:
        self.server = server
        self.host = server.host
        self.ws = ws
        self.role = role
        settings = server.settings
        self.limiter = _RateLimiter(settings.messages_per_second, settings.burst)
        self.max_in_flight = settings.max_in_flight
        self.subscriptions: dict[int, Subscription] = {}
        # The connection's tasks (requests, event pumps, the hello deadline): plain
        # asyncio tasks, owned here and cancelled and awaited when the connection
        # ends. They are created per request, where a task group's per-spawn cost
        # showed up as a third of a call's time.
        self.tasks: set[asyncio.Task[None]] = set()
        self.pumps: set[asyncio.Task[None]] = set()  # the event pumps among them
        self.requests = 0
        self.slot_free = asyncio.Event()
        self.welcomed = role is not None

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
            if self.role is None:
                self.spawn(self._hello_deadline(), "control/hello-deadline")
            async for msg in self.ws:
                if msg.type is WSMsgType.TEXT:
                    await self._frame(msg.data, SERVER_JSON)
                elif msg.type is WSMsgType.BINARY:
                    await self._frame(msg.data, SERVER_MSGPACK)
                else:
                    break
        finally:
            for sub in self.subscriptions.values():
                self.host.hub.unsubscribe(sub)
            self.subscriptions.clear()
            # The client is gone: nothing can be replied any more.
            tasks = list(self.tasks)
            for task in tasks:
                task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _hello_deadline(self) -> None:
        await anyio.sleep(self.server.settings.hello_timeout)
        if self.role is None:
            await self.close(WSCloseCode.POLICY_VIOLATION, "no hello within the deadline")

    async def send(self, codec: Codec, frame: object) -> None:
        if isinstance(frame, Error):
            self.server.metrics.ws_errors.labels(code=str(frame.code)).inc()
        data = codec.encode(frame)
        opcode = WSMsgType.TEXT if codec is SERVER_JSON else WSMsgType.BINARY
        # The peer may go away between its request and our reply; nothing to tell then.
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_frame(data, opcode)

    async def _frame(self, data: bytes, codec: Codec) -> None:
        allowed = self.limiter.take()
        try:
            msg = codec.decode(data)
        except msgspec.DecodeError as exc:
            self.server.metrics.frames["invalid"] = self.server.metrics.frames.get("invalid", 0) + 1
            await self.send(codec, codec.explain(data, exc) if allowed else self._limited(None))
            return
        if not allowed:
            await self.send(codec, self._limited(msg.id))
            return
        self.server.count_frame(type(msg))
        if isinstance(msg, Hello):
            await self._hello(msg, codec)
            return
        if self.role is None or not self.welcomed:
            await self.send(
                codec,
                Error(
                    id=msg.id,
                    code=ErrorCode.UNAUTHENTICATED,
                    message="send 'hello' with a token first",
                ),
            )
            return
        needed = REQUIRED_ROLE[type(msg)]
        if not role_allows(self.role, needed):
            await self.send(
                codec,
                Error(
                    id=msg.id,
                    code=ErrorCode.FORBIDDEN,
                    message=f"{msg.__struct_config__.tag!r} needs role {needed!r}, "
                    f"the token has {self.role!r}",
                    details={"needed": needed, "role": self.role},
                ),
            )
            return
        if isinstance(msg, Ping):
            await self.send(codec, Pong(id=msg.id))
        elif isinstance(msg, Subscribe):
            await self._subscribe(msg, codec)
        elif isinstance(msg, Unsubscribe):
            await self._unsubscribe(msg, codec)
        else:
            # Requests run concurrently (a slow call must not hold up a status); at
            # most max_in_flight at once: reading stops while they are all taken.
            while self.requests >= self.max_in_flight:
                self.slot_free.clear()
                await self.slot_free.wait()
            self.requests += 1
            self.spawn(self._request(msg, codec), "control/request")

    def _limited(self, frame_id: int | None) -> Error:
        rate = self.server.settings.messages_per_second
        return Error(
            id=frame_id,
            code=ErrorCode.RATE_LIMITED,
            message=f"too many frames: this connection may send {rate:g} per second",
            details={"messages_per_second": rate, "burst": self.server.settings.burst},
        )

    async def _hello(self, msg: Hello, codec: Codec) -> None:
        if msg.version != PROTOCOL_VERSION:
            await self.send(
                codec,
                Error(
                    id=msg.id,
                    code=ErrorCode.VERSION_MISMATCH,
                    message=f"protocol version {msg.version} is not supported; "
                    f"this server speaks {PROTOCOL_VERSION}",
                    details={"supported": [PROTOCOL_VERSION]},
                ),
            )
            return
        role = self.server.tokens.role_of(msg.token) if msg.token is not None else self.role
        if role is None:
            await self.send(
                codec,
                Error(
                    id=msg.id,
                    code=ErrorCode.UNAUTHENTICATED,
                    message="wrong or missing token" if msg.token else "missing token",
                ),
            )
            await self.close(WSCloseCode.POLICY_VIOLATION, "authentication failed")
            return
        if not self.server.admit(self):
            limit = self.server.settings.max_connections
            await self.send(
                codec,
                Error(
                    id=msg.id,
                    code=ErrorCode.UNAVAILABLE,
                    message=f"too many connections (limit {limit})",
                ),
            )
            await self.close(WSCloseCode.TRY_AGAIN_LATER, "too many connections")
            return
        self.role = role
        self.welcomed = True
        await self.send(
            codec,
            Welcome(
                id=msg.id,
                version=PROTOCOL_VERSION,
                role=role,
                server=self.host.name,
                topics=_TOPICS,
            ),
        )

    async def _subscribe(self, msg: Subscribe, codec: Codec) -> None:
        sub = self.host.hub.subscribe(msg.topics, msg.level)
        self.subscriptions[sub.id] = sub
        await self.send(codec, Subscribed(id=msg.id, subscription=sub.id))
        pump = self.spawn(self._pump(sub, codec), f"control/events/{sub.id}")
        self.pumps.add(pump)
        pump.add_done_callback(self.pumps.discard)

    async def _unsubscribe(self, msg: Unsubscribe, codec: Codec) -> None:
        sub = self.subscriptions.pop(msg.subscription, None)
        if sub is None:
            await self.send(
                codec,
                Error(
                    id=msg.id,
                    code=ErrorCode.NOT_FOUND,
                    message=f"no subscription {msg.subscription} on this connection",
                ),
            )
            return
        self.host.hub.unsubscribe(sub)
        await self.send(codec, Ack(id=msg.id))

    async def _pump(self, sub: Subscription, codec: Codec) -> None:
        while True:
            events, dropped = await sub.next_batch()
            if dropped:
                self.server.metrics.events_dropped.inc(dropped)
                await self.send(codec, Dropped(subscription=sub.id, count=dropped))
            if not events and not dropped:
                return  # unsubscribed
            for event in events:
                await self.send(codec, Event(subscription=sub.id, data=event))

    async def _request(self, msg: Any, codec: Codec) -> None:
        try:
            reply = await self._dispatch(msg, codec)
        except ControlError as exc:
            reply = Error(
                id=msg.id, code=ErrorCode(exc.code), message=str(exc), details=exc.details
            )
        except AskTimeout as exc:
            reply = Error(
                id=msg.id,
                code=ErrorCode.TIMEOUT,
                message=str(exc),
                details={"phase": exc.phase, "handler_exited": exc.handler_exited},
            )
        except TimeoutError as exc:
            reply = Error(id=msg.id, code=ErrorCode.TIMEOUT, message=str(exc) or "timed out")
        except (ActorStopped, MailboxFull) as exc:
            reply = Error(id=msg.id, code=ErrorCode.UNAVAILABLE, message=str(exc))
        except UnknownJobKind as exc:
            reply = Error(id=msg.id, code=ErrorCode.NOT_FOUND, message=str(exc))
        except JobError as exc:
            reply = Error(id=msg.id, code=ErrorCode.JOB_ERROR, message=str(exc))
        except msgspec.ValidationError as exc:
            reply = Error(id=msg.id, code=ErrorCode.INVALID_MESSAGE, message=str(exc))
        except StoreError as exc:
            reply = Error(id=msg.id, code=ErrorCode.UNAVAILABLE, message=str(exc))
        except LookupError as exc:
            reply = Error(id=msg.id, code=ErrorCode.NOT_FOUND, message=str(exc.args[0]))
        except Exception as exc:
            log.exception("control request failed", request=msg.__struct_config__.tag)
            reply = Error(
                id=msg.id,
                code=ErrorCode.INTERNAL,
                message=f"{type(exc).__name__}: {exc}",
            )
        finally:
            self.requests -= 1
            self.slot_free.set()
        await self.send(codec, reply)

    def _jobs(self) -> JobService:
        jobs = self.host.jobs
        if jobs is None:
            raise _fail(ErrorCode.UNAVAILABLE, "the job engine is not running")
        return jobs

    async def _dispatch(self, msg: Any, codec: Codec) -> object:
        match msg:
            case Call():
                return await self._call(msg, codec)
            case GetStatus():
                return await self._status(msg)
            case PauseActor() | ResumeActor() | StopActor():
                await self._operate(msg)
                return Ack(id=msg.id)
            case ListJobs(queue=queue, state=state, kind=kind, limit=limit):
                jobs = await self._jobs().list_jobs(
                    queue=queue, state=state, kind=kind, limit=max(1, min(limit, 10_000))
                )
                return JobsReply(id=msg.id, jobs=jobs)
            case GetJob(job_id=job_id):
                return JobReply(id=msg.id, job=await self._jobs().get_job(job_id))
            case EnqueueJob():
                try:
                    args = codec.decode_as(msg.args, dict[str, Any])
                except msgspec.DecodeError as exc:
                    raise _fail(
                        ErrorCode.INVALID_MESSAGE, f"job args must be an object: {exc}"
                    ) from None
                if self.host.draining:
                    raise _fail(
                        ErrorCode.UNAVAILABLE, "the daemon is draining and takes no new jobs"
                    )
                job = await self._jobs().enqueue(
                    msg.kind, args, queue=msg.queue, priority=msg.priority, delay=msg.delay
                )
                return JobReply(id=msg.id, job=job)
            case RetryJob(job_id=job_id):
                return JobReply(id=msg.id, job=await self._jobs().retry(job_id))
            case CancelJob(job_id=job_id):
                return JobReply(id=msg.id, job=await self._jobs().cancel(job_id))
            case ListQueues():
                return QueuesReply(id=msg.id, queues=await self._jobs().queues())
            case PauseQueue(queue=queue):
                await self._jobs().pause(queue)
                return Ack(id=msg.id)
            case ResumeQueue(queue=queue):
                await self._jobs().resume(queue)
                return Ack(id=msg.id)
            case DrainQueue(queue=queue, timeout=timeout):
                await self._jobs().drain(queue, timeout)
                return Ack(id=msg.id)
            case Drain(timeout=timeout):
                await self.host.drain(timeout)
                return Ack(id=msg.id)
            case Stop(mode=mode):
                self.host.request_stop(mode)
                return Ack(id=msg.id)
            case Dump():
                path, count = await self.host.dump()
                return DumpReply(id=msg.id, path=path, events=count)
        raise _fail(ErrorCode.UNKNOWN_TYPE, f"no handler for {type(msg).__name__}")

    def _target(self, name: str) -> Target:
        target = self.host.registry.get(name)
        if target is None:
            raise _fail(
                ErrorCode.NOT_FOUND,
                f"no exposed actor or domain named {name!r}",
                known=[t.name for t in self.host.registry.targets()],
            )
        return target

    async def _operate(self, msg: PauseActor | ResumeActor | StopActor) -> None:
        """Pause, resume or stop an exposed actor, a domain key or a whole domain."""
        target = self._target(msg.target)
        key = msg.key
        ref: ActorRef[Any] | None = target.ref
        whole: Domain[Any, Any] | None = None  # set when the request is for a whole domain
        if target.domain is not None:
            if key is None:
                whole = target.domain
            else:
                ref = target.domain.ref(key)
        elif key is not None:
            raise _fail(
                ErrorCode.INVALID_MESSAGE,
                f"{msg.target!r} is a single actor: it takes no 'key'",
                path="$.key",
            )
        match msg:
            case PauseActor():
                if whole is not None:
                    whole.pause()
                elif ref is not None:
                    ref.pause()
            case ResumeActor():
                if whole is not None:
                    whole.resume()
                elif ref is not None:
                    ref.resume()
            case StopActor(timeout=timeout):
                try:
                    with anyio.fail_after(timeout):
                        if whole is not None:
                            await whole.passivate_all()
                        elif ref is not None:
                            await ref.stop()
                except TimeoutError:
                    what = msg.target if key is None else f"{msg.target} key {key!r}"
                    raise _fail(
                        ErrorCode.TIMEOUT,
                        f"{what} did not stop within {timeout:g}s; it stops once its "
                        "running message has returned",
                    ) from None
        log.info("actor control", request=msg.__struct_config__.tag, target=msg.target, key=key)

    async def _call(self, msg: Call, codec: Codec) -> CallReply:
        target = self._target(msg.target)
        message_type = target.messages.get(msg.message_type)
        if message_type is None:
            raise _fail(
                ErrorCode.NOT_FOUND,
                f"{msg.target!r} accepts no message type {msg.message_type!r}",
                known=sorted(target.messages),
            )
        try:
            payload = codec.decode_as(msg.message, message_type)
        except msgspec.DecodeError as exc:
            raise _fail(
                ErrorCode.INVALID_MESSAGE, f"invalid {msg.message_type} message: {exc}"
            ) from None
        try:
            result = await self._deliver(target, msg, payload, is_request(message_type))
        except (FiefdomError, ControlError):
            raise
        except Exception as exc:
            # The actor's handler raised: the caller gets it as a typed error (the
            # actor itself crashed and is handled by its supervisor).
            raise _fail(
                ErrorCode.ACTOR_ERROR,
                f"{msg.target} failed on {msg.message_type}: {type(exc).__name__}: {exc}",
                exception=type(exc).__name__,
            ) from exc
        if result is None:
            raw = _NULL if codec is SERVER_JSON else _MSGPACK_NIL
        else:
            raw = msgspec.Raw(codec.encode(result))
        return CallReply(id=msg.id, result=raw)

    async def _deliver(self, target: Target, msg: Call, payload: Any, asks: bool) -> Any:
        if target.domain is not None:
            if msg.key is None:
                raise _fail(
                    ErrorCode.INVALID_MESSAGE,
                    f"{msg.target!r} is a domain: the call needs a 'key'",
                    path="$.key",
                )
            if asks:
                return await target.domain.ask(msg.key, payload, timeout=msg.timeout)
            await target.domain.tell(msg.key, payload)
            return None
        assert target.ref is not None
        if msg.key is not None:
            raise _fail(
                ErrorCode.INVALID_MESSAGE,
                f"{msg.target!r} is a single actor: a call to it takes no 'key'",
                path="$.key",
            )
        if asks:
            return await target.ref.ask(payload, timeout=msg.timeout)
        await target.ref.tell(payload)
        return None

    async def _status(self, msg: GetStatus) -> StatusReply:
        host = self.host
        queues: list[QueueInfo] = []
        if host.jobs is not None:
            queues = await host.jobs.queues()
        checks = await host.readiness()
        return StatusReply(
            id=msg.id,
            name=host.name,
            version=_version(),
            pid=os.getpid(),
            uptime=time.time() - host.started_at,
            ready=all(checks.values()),
            draining=host.draining,
            loop=host.loop_name,
            tree=msgspec.to_builtins(host.system.statistics()),
            targets=[t.info() for t in host.registry.targets()],
            queues=queues,
            connections=self.server.connections,
        )


def _version() -> str:
    from .. import __version__

    return __version__
