"""The control server (aiohttp): ``/healthz``, ``/readyz``, ``/metrics``,
``/schema`` and the websocket control channel ``/ws`` (each websocket is a
``Connection``). Authentication happens once, at this boundary, from
``ENDPOINT_ROLE`` and from the role each request type declares. The probes
(``/healthz``, ``/readyz``) answer without a token: load balancers and Kubernetes
carry none, and they tell nothing but up or not. ``/metrics`` needs one unless
``metrics_auth`` says otherwise (see ``ControlSettings.metrics_auth_required``).
Responses carry ``Server: fiefdom``, never the versions of Python or aiohttp. The server
is a supervisor ``Service`` (``serve``/``request_stop``/``cancel``/``close``/
``reset``), and has the lifecycle every component shares (``state``, ``start``,
``stop(mode)``, ``async with``)."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

import anyio
import msgspec
from aiohttp import WSCloseCode, web

from .._admission import Admission, CappedSite
from .._errors import FiefdomError
from .._lifecycle import Lifecycle, State
from .._log import get_logger
from ..actors import StopMode
from ._codec import json_schema
from ._connection import Connection
from ._fairness import FairScheduler
from ._messages import ENDPOINT_ROLE, ErrorCode, Role, role_allows
from ._metrics import ControlMetrics
from ._registry import ControlHost
from ._repeats import loud_repeats, quiet_repeats
from ._replies import QueueInfo
from ._settings import ControlSettings, TokenTable
from ._socket import ControlSocket

log = get_logger("fiefdom.control")

# What a mounted set of routes gets to authenticate a request: None when its token
# holds the role, else the 401 or 403 to answer with.
Refuse = Callable[[web.Request, Role], web.Response | None]
# Adds routes to the server's application (the vault's HTTP API, say), sharing the
# control channel's tokens and roles through ``Refuse``.
HttpMount = Callable[[web.Application, Refuse], None]


class ControlServer:
    """Serves the control channel for one daemon (``host``)."""

    # Seconds a websocket may stay silent before it is pinged; it is closed when
    # nothing comes back within half of that (a peer gone without a word).
    heartbeat: float = 30.0

    def __init__(
        self,
        host: ControlHost,
        settings: ControlSettings,
        tokens: TokenTable,
        metrics: ControlMetrics | None = None,
        mounts: Sequence[HttpMount] = (),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        # TLS (https://, wss://) when given; the caller may load a new certificate
        # into it at any time (new connections get it).
        self.ssl_context = ssl_context
        self.mounts = tuple(mounts)
        self.settings = settings
        self.tokens = tokens
        self.metrics = metrics or ControlMetrics(host.system)
        self._connections: set[Connection] = set()
        # Those of them without a role yet, oldest first (the first to make room for a
        # newcomer), and those closed to make room; the others count against
        # max_connections.
        self._unauthenticated: dict[Connection, None] = {}
        self._evicted: set[Connection] = set()
        self._scheduler: FairScheduler[Connection] = FairScheduler(
            settings.max_running_requests,
            settings.running_request_slice,
            settings.max_running_per_connection,
        )
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._admission = Admission(
            settings.max_http_connections,
            settings.probe_connections,
            lambda reason: self.metrics.ws_refused.labels(reason=reason).inc(),
        )
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
    def scheduler(self) -> FairScheduler[Connection]:
        return self._scheduler

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def authenticated(self) -> int:
        return len(self._connections) - len(self._unauthenticated) - len(self._evicted)

    def _too_many(self, reason: str, message: str) -> web.Response:
        self.metrics.ws_refused.labels(reason=reason).inc()
        return web.json_response({"code": ErrorCode.UNAVAILABLE, "message": message}, status=503)

    def admit(self, conn: Connection) -> bool:
        """A connection has just authenticated (hello): count it against
        max_connections, unless they are all taken."""
        if conn in self._evicted:
            return False  # its hello crossed the close that made room for another
        if conn not in self._unauthenticated:
            return True
        if self.authenticated >= self.settings.max_connections:
            self.metrics.ws_refused.labels(reason="too_many_connections").inc()
            return False
        del self._unauthenticated[conn]
        return True

    def _make_room(self) -> None:
        """Close the oldest websocket still to say hello, for a newcomer: a budget full
        of sockets that never authenticate must not lock out a client that
        authenticates by ``hello`` (a browser cannot send a header)."""
        oldest = next(iter(self._unauthenticated))
        del self._unauthenticated[oldest]
        self._evicted.add(oldest)
        self.metrics.ws_refused.labels(reason="unauthenticated_evicted").inc()
        limit = self.settings.max_unauthenticated
        oldest.evict(f"too many connections waiting to authenticate (limit {limit})")

    def _app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_frame_bytes,
            middlewares=[self._admission.middleware],
        )
        app.on_response_prepare.append(_hide_versions)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        metrics: Callable[[web.Request], Awaitable[web.StreamResponse]] = self._metrics
        if self.settings.metrics_auth_required():
            metrics = self._guard("/metrics", metrics)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/schema", self._guard("/schema", self._schema_endpoint))
        app.router.add_get("/ws", self._websocket)
        for mount in self.mounts:
            mount(app, self._refuse)
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
                self._app(),
                access_log=None,
                shutdown_timeout=self.settings.shutdown_timeout,
                keepalive_timeout=self.settings.header_timeout,
                lingering_time=self.settings.body_timeout,
            )
            await runner.setup()
            site = CappedSite(
                runner,
                host,
                port,
                self._admission,
                ssl_context=self.ssl_context,
                # A TLS handshake counts as part of sending the first request's headers.
                handshake_timeout=self.settings.header_timeout,
            )
            try:
                await site.start()
                quiet_repeats()
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
        log.info(
            "control channel listening",
            host=host,
            port=self._port,
            tls=self.ssl_context is not None,
        )

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
            if closing.cancel_called:
                # A cancel, or peers past their deadline (one that reads nothing holds
                # its event pump forever): their handlers are cancelled, so that the
                # cleanup below does not wait for them (aiohttp would, for as long as
                # shutdown_timeout again).
                for conn in list(self._connections):
                    if conn.ws.task is not None:
                        conn.ws.task.cancel()
        finally:
            self._closing_scope = None
            loud_repeats()
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
        if self._runner is None:
            return web.json_response(
                {"code": ErrorCode.UNAVAILABLE, "message": "the daemon is stopping"}, status=503
            )
        ws = ControlSocket(
            # aiohttp refuses a message of max_msg_size bytes or more; a frame of
            # exactly max_frame_bytes is allowed. A larger one is closed with 1009.
            max_msg_size=self.settings.max_frame_bytes + 1,
            decode_text=False,
            compress=False,
            heartbeat=self.heartbeat,
        )
        conn = Connection(self, ws, role, request.transport)
        ws.connection = conn
        # Counted before the handshake's await: concurrent upgrades see each other.
        if role is None:
            if len(self._unauthenticated) >= self.settings.max_unauthenticated:
                self._make_room()
            self._unauthenticated[conn] = None
        self._connections.add(conn)
        self.metrics.ws_connections.inc()
        try:
            await ws.prepare(request)
            await conn.run()
        finally:
            self._connections.discard(conn)
            self._unauthenticated.pop(conn, None)
            self._evicted.discard(conn)
            self.metrics.ws_connections.dec()
        return ws


async def _hide_versions(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp's default names itself and Python with their versions: a map of which
    # known flaws to try, for anyone who can reach the port.
    response.headers["Server"] = "fiefdom"
