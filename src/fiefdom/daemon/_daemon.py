"""The daemon: one supervisor tree holds the store, the user's modules, the control
channel and the job engine; ``fiefdom status`` shows it::

    <name>               the root (the ActorSystem, one_for_one)
    ├── store            service: opens the store (migrated, schema checked); closes it
    ├── <user modules>   the actors and domains their setup hooks spawn, in module order
    ├── control          service: the aiohttp control server (/healthz, /readyz, /ws ...)
    └── jobs             service: the job engine (unless [jobs] enabled = false)

Children start in that order, each once the one before it has started, and stop
in exactly the reverse order (DESIGN rule 4). The control server comes before the
engine on purpose: stopped in reverse, that is what an operator expects of a
SIGTERM (or SIGINT, or a ``stop`` request):

1. at once: ``/readyz`` answers 503 (a load balancer stops sending work) and the
   channel refuses new jobs;
2. ``jobs``: the engine stops claiming; running jobs finish until
   ``daemon.shutdown_timeout``, then are cancelled and given back to their queue
   (no attempt used). The control channel is still up meanwhile: ``fiefdom
   status`` reports the drain and subscribers receive the jobs' events;
3. ``control``: stops listening, lets each subscriber receive the events already
   published, and closes the websockets (going away);
4. the user's actors and domains drain their mailboxes, each within its deadline;
5. ``store``: closes, once nothing uses it.

A second signal (or ``stop`` with mode ``cancel``) cancels the running jobs at
once (they go back to their queue) and the shutdown goes on. Either way the
process exits 0 and no job is lost. At start, the engine comes last: ``/readyz``
is 503 until it runs, and ``control.json`` (the address the CLI reads) is written
once the whole tree has started.

A ``Daemon`` has the lifecycle every component shares (``state``, ``start()``,
``stop(mode)``, ``async with``); ``run()`` is what ``fiefdom serve`` does with it:
logging and signals, start, wait for a stop request, stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import anyio

from .._errors import ConfigurationError, FiefdomError, SupervisorError
from .._lifecycle import Lifecycle, State, StopMode
from .._log import get_logger
from ..protocol import (
    ControlMetrics,
    ControlServer,
    EventHub,
    JobService,
    Registry,
    TokenTable,
)
from ..storage._postgres import PostgresStore
from ..supervisors import ActorSystem, Restart, ServiceSpec
from ._config import Config
from ._datadir import DataDirLock, publish_endpoint, withdraw_endpoint
from ._drain import DrainWatch
from ._events import forward_runtime_events
from ._jobs import JobsAdapter
from ._logging import FlightRecorder
from ._module_services import HostedService
from ._modules import UserModule, set_up_modules
from ._outage import OutageLog
from ._preflight import listen_error, prepare
from ._run import run_daemon
from ._services import StoreService
from ._storage import SCHEMA_VERSION, Store
from ._tls import ServerTLS
from ._tokens import token_table
from ._vault import DaemonVault

log = get_logger("fiefdom.daemon")

# How long /readyz trusts its last reading of the schema version: a load balancer's
# probes then cost at most one extra read per interval, and a migration run from
# elsewhere (a newer fiefdom on a shared database) shows within it.
_SCHEMA_RECHECK = 2.0

# How long the supervisor gives a service to stop beyond its own deadline before it
# cancels it: the engine's drain ends at shutdown_timeout by itself and then writes
# the outcomes of the jobs it gives back; the control server bounds its own closing.
_STOP_MARGIN = 10.0


class Daemon:
    """One run of the daemon: ``await Daemon(config).run()`` (what ``fiefdom serve``
    does) returns when it has stopped; embedded, ``async with Daemon(config) as
    daemon`` starts the whole tree and stops it on leaving."""

    def __init__(self, config: Config, *, loop_name: str = "asyncio", log_stream: Any = None):
        self.config = config
        self.name = config.daemon.name
        self.loop_name = loop_name
        self.started_at = time.time()
        self.hub = EventHub(capacity=config.control.subscriber_buffer)
        self.registry = Registry()
        self.recorder = FlightRecorder(config.recorder_path, config.recorder.capacity)
        self.system = ActorSystem(name=config.daemon.name, shutdown=config.daemon.shutdown_timeout)
        self.metrics = ControlMetrics(self.system)
        self.store: Store | None = None
        self.jobs_adapter = JobsAdapter(config, self.hub, self.metrics)
        self.server: ControlServer | None = None
        # The listener's TLS ([control] tls_cert, tls_key), loaded by start().
        self.tls: ServerTLS | None = None
        # The vault ([vault]): its routes on the control server, its sweeps on the engine.
        self.vault_host = DaemonVault(config)
        self.outages = OutageLog(_redact(config.store_url))
        self._log_stream = log_stream
        # The data folder's lock, from the start's checks until the daemon has stopped;
        # ``_claimed`` stays true once the daemon has written into the folder.
        self._lock: DataDirLock | None = None
        self._claimed = False
        self._reached_running = False
        self._remove_outage_filter: Callable[[], None] | None = None
        self._draining = False
        self._schema_checked_at: float | None = None
        self._schema_current = False
        self._drain_task: asyncio.Future[None] | None = None
        # What the engine's drain did (from the first drain or stop request on).
        self._watch: DrainWatch | None = None
        self._drained_logged = False
        self._stop_requested_at: float | None = None
        self._stop_mode: StopMode | None = None
        self._stop_requested = asyncio.Event()
        # Set once the tree has finished starting (or failed to): a drain waits for
        # it, so that it never races the start of the engine.
        self._tree_started = asyncio.Event()
        self._lifecycle = Lifecycle(
            f"daemon {self.name!r}", "use 'async with Daemon(config) as daemon' or 'await run()'"
        )
        self._settled = asyncio.Event()  # start() has returned or failed
        self._stopped = asyncio.Event()
        self._stop_forwarding: Callable[[], None] | None = None
        self._released = False

    @property
    def state(self) -> State:
        """Where the daemon is in its lifecycle."""
        return self._lifecycle.state

    @property
    def reached_running(self) -> bool:
        """Whether start() completed: a failure before it is a failure to start."""
        return self._reached_running

    # -- ControlHost -----------------------------------------------------------------

    @property
    def jobs(self) -> JobService | None:
        return self.jobs_adapter.service

    @property
    def draining(self) -> bool:
        return self._draining

    async def readiness(self) -> dict[str, bool]:
        store_ok = schema_ok = False
        if self.store is not None:
            with anyio.move_on_after(2.0):
                try:
                    store_ok = bool(await self.store.ping())
                    schema_ok = await self._schema_is_current(self.store)
                except FiefdomError:
                    store_ok = False
        return {
            "store": store_ok,
            "schema": schema_ok,
            "jobs": self.jobs_adapter.healthy or not self.config.jobs.enabled,
            "accepting": not self._draining,
        }

    async def _schema_is_current(self, store: Store) -> bool:
        """Whether the database's schema is the one this fiefdom knows, read again
        once the last reading is ``_SCHEMA_RECHECK`` seconds old."""
        now = time.monotonic()
        checked = self._schema_checked_at
        if checked is None or now - checked >= _SCHEMA_RECHECK:
            # Reset first: a failed read (raised to the caller) is not trusted later.
            self._schema_checked_at = None
            self._schema_current = await store.schema_version() == SCHEMA_VERSION
            self._schema_checked_at = now
        return self._schema_current

    def request_stop(self, mode: StopMode) -> None:
        """Ask the daemon to stop and return at once (a signal, the ``stop`` request):
        ``run()`` then stops it. A second request, or one in ``cancel`` mode, cancels
        running work at once; ``exit`` and ``restart`` mean ``drain`` (the daemon has
        no messages of its own)."""
        # A second request (or a first one in cancel mode) ends the drain at once:
        # running jobs are cancelled and go back to their queue.
        first: StopMode = "cancel" if mode == "cancel" else "drain"
        self._note_stop("cancel" if self._stop_mode is not None else first)

    def _note_stop(self, mode: StopMode) -> None:
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
        watch = self._watch_drain()
        if mode == "cancel":
            watch.cancelling()
            self._stop_mode = "cancel"
            self.jobs_adapter.cancel_running()
            # The rest of the tree too: every child is cancelled (still in reverse
            # order, each through its own cancel) instead of waiting out its deadline.
            self.system.request_stop("cancel")
        elif self._stop_mode is None:
            self._stop_mode = "drain"
        # Not ready from now on: /readyz answers 503 while the tree stops.
        self._draining = True
        self._stop_requested.set()

    async def drain(self, timeout: float | None) -> None:
        """Stop this daemon's engine claiming jobs, as a SIGTERM would, and wait (at
        most ``timeout``) until it has stopped. Pausing the queues instead would be
        kept in the database: every daemon sharing it would stop claiming too, and
        this one would claim nothing after a restart."""
        if self._lifecycle.state in (State.NEW, State.STOPPED):
            # Starting and stopping are fine: a drain then waits for the start, or
            # joins the stop's own drain.
            self._lifecycle.check_running("drain")
        self._draining = True
        if self._drain_task is None:
            self._watch_drain()
            self._drain_task = asyncio.ensure_future(self._stop_engine())
        with anyio.fail_after(timeout):
            # Shielded: a drain request that gives up waiting leaves the drain going.
            await asyncio.shield(self._drain_task)

    async def _stop_engine(self) -> None:
        # A drain that arrives while the tree starts waits until it has: the engine
        # then either was not started (``_draining`` is read again just before) or
        # has started, and is stopped here; never half-way through its start.
        await self._tree_started.wait()
        # Through the supervisor, so that the engine's graceful stop (running jobs
        # finish until shutdown_timeout, then go back to their queue) is not taken
        # for an exit to restart from.
        root = self.system.root
        if "jobs" in root.which_children():
            await root.terminate_child("jobs")
        await self._log_drained()

    def _watch_drain(self) -> DrainWatch:
        """Begin counting (and telling) what the engine's drain does, once."""
        if self._watch is None:
            timeout = self.config.drain_timeout
            self._watch = DrainWatch(self.jobs_adapter.engine, timeout)
            log.info(
                "draining: no new jobs are claimed; running ones finish, or are cancelled "
                "and given back to their queue after drain_timeout",
                running=self._watch.running,
                drain_timeout=timeout,
            )
        return self._watch

    async def _log_drained(self) -> dict[str, object]:
        """The engine has stopped: the drain's summary line (once)."""
        watch = self._watch_drain()
        summary = await watch.finish()
        if not self._drained_logged:
            self._drained_logged = True
            log.info("drained: the job engine has stopped", **summary)
        return summary

    def reload(self) -> None:
        """What SIGHUP does: load the TLS certificate and key again from their files
        (new connections get them; on a bad file the previous ones stay served, and
        the error is logged)."""
        if self.tls is None:
            log.info("reload: nothing to reload (control.tls_cert and tls_key are not set)")
            return
        self.tls.reload()

    async def dump(self) -> tuple[str, int]:
        path, count = self.recorder.dump("request")
        log.info("flight recorder written", path=str(path), events=count)
        return str(path), count

    # -- running ---------------------------------------------------------------------

    async def run(self) -> None:
        """Run until stopped (signal or ``stop`` request); raises what made it fail.
        See ``_run`` for what it does around start() and stop()."""
        await run_daemon(self, self._log_stream)

    @property
    def claimed_data_dir(self) -> bool:
        """Whether this daemon has held its data folder (and may write into it)."""
        return self._claimed

    async def wait_stop_request(self) -> StopMode:
        """Wait for a stop request; returns the mode to stop in."""
        await self._stop_requested.wait()
        return self._stop_mode or "drain"

    async def start(self) -> None:
        """Open the store, set up the user modules, start the control server and the
        job engine, in that order; returns once the whole tree has started (and
        ``control.json`` is written). A daemon runs once.

        Everything that can be checked without writing is checked first (see
        ``_preflight``): a start refused there raises ConfigurationError naming the
        setting, and has created nothing. Then the daemon locks its data folder (a
        second daemon on it is refused) and holds it until it has stopped."""
        self._lifecycle.begin_start()
        try:
            config = self.config
            prepared = prepare(config)
            if prepared.open_files_raised is not None:
                before, after = prepared.open_files_raised
                log.info(
                    "raised the limit on open files to the hard limit",
                    before=before,
                    after=after,
                    needed_by="control.max_http_connections and [cluster] listen",
                )
            self._lock = prepared.lock
            self.tls = prepared.tls
            prepared.lock.acquire()
            self._claimed = True
            # Left by a daemon that was killed: its address is not this one's.
            withdraw_endpoint(config.data_path)
            self._remove_outage_filter = self.outages.install()
            tokens: TokenTable = token_table(config)
            store = prepared.store
            self.store = store
            if isinstance(store, PostgresStore):
                self.metrics.pool = store
            self.jobs_adapter.attach(store)
            self._stop_forwarding = forward_runtime_events(self.system.events, self.hub)
            await self.system.start()
            await self._start_tree(store, tokens, prepared.modules)
        except BaseException as start_error:
            # Whatever started is stopped at once (cancelled), and the error raised.
            root_failure: Exception | None = None
            with anyio.CancelScope(shield=True):
                try:
                    await self.system.stop("cancel")
                except Exception as exc:
                    if isinstance(start_error, SupervisorError):
                        # The tree refused a child because its root was giving up
                        # (a module's service escalated): that is the reason.
                        root_failure = exc
                    else:  # the start's own error is the one to raise
                        log.warning("stopping after a failed start failed too", error=repr(exc))
                await self._release()
            self._lifecycle.stopped()
            self._stopped.set()
            if root_failure is not None:
                raise root_failure from None
            raise
        finally:
            self._settled.set()
        if self._lifecycle.state is State.STARTING:  # not stopped meanwhile
            self._lifecycle.started()
            self._reached_running = True

    async def stop(self, mode: StopMode = "drain") -> None:
        """Stop the tree in reverse order (see the module docstring): ``drain`` lets
        running jobs finish until ``daemon.shutdown_timeout`` and actors drain their
        mailboxes; ``cancel`` cancels them at once (jobs go back to their queue).
        Before ``start()`` it returns at once; a second call waits for the first one's
        stop (a ``cancel`` cuts a drain short). Raises what made the tree fail."""
        if self._lifecycle.state is State.STOPPING:
            if mode == "cancel":
                self._note_stop("cancel")
            await self._stopped.wait()
            return
        if not self._lifecycle.begin_stop():
            return
        self._note_stop(mode)
        try:
            await self._settled.wait()  # a start under way finishes first
            await self.system.stop(self._stop_mode or mode)
        finally:
            with anyio.CancelScope(shield=True):
                drained = await self._log_drained()
                await self._release()
            self._lifecycle.stopped()
            self._stopped.set()
        self._log_stopped(drained)

    def _log_stopped(self, drained: dict[str, object]) -> None:
        """The one line that ends a daemon's log: what ran, what the stop gave back
        or cancelled, and how long the stop took (from the stop request)."""
        engine = self.jobs_adapter.engine
        ran = 0
        if engine is not None:
            outcomes = engine.statistics().outcomes
            ran = sum(n for state, n in outcomes.items() if state != "available")
        requested = self._stop_requested_at or time.monotonic()
        log.info(
            "daemon stopped",
            name=self.name,
            jobs_run=ran,
            finished=drained["finished"],
            given_back=drained["given_back"],
            cancelled=drained["cancelled"],
            stop_took=round(time.monotonic() - requested, 3),
            uptime=round(time.time() - self.started_at, 3),
        )

    async def _release(self) -> None:
        """What start() set up beside the tree: forwarding of runtime events, the
        engine's event subscription, a drain's task, the outage filter, the endpoint
        file and the data folder's lock (let go last)."""
        if self._released:
            return
        self._released = True
        if self._stop_forwarding is not None:
            self._stop_forwarding()
            self._stop_forwarding = None
        self.jobs_adapter.detach()
        if self._drain_task is not None:
            # Stopping the tree stopped the engine too; collect the drain's end.
            with contextlib.suppress(Exception):
                await self._drain_task
        if self._remove_outage_filter is not None:
            self._remove_outage_filter()
            self._remove_outage_filter = None
        if self._lock is not None:
            # Only the daemon holding the folder may remove its control.json: a
            # second one refused on it must leave the running one's address there.
            if self._lock.held:
                withdraw_endpoint(self.config.data_path)
            self._lock.release()

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop("drain" if exc_info[1] is None else "cancel")

    async def _start_tree(
        self, store: Store, tokens: TokenTable, modules: list[UserModule]
    ) -> None:
        try:
            await self._start_children(store, tokens, modules)
        finally:
            # Even on failure: a drain waiting for the start must not wait forever.
            self._tree_started.set()

    async def _start_children(
        self, store: Store, tokens: TokenTable, modules: list[UserModule]
    ) -> None:
        config = self.config
        root = self.system.root
        # The store is a child like the others, so that it closes last; it is started
        # first and open before the modules' setup hooks run (they may use it).
        store_service = StoreService(
            store,
            migrate=config.store.migrate,
            url_for_logs=_redact(config.store_url),
            outages=self.outages,
        )
        await root.start_child(
            ServiceSpec(
                "store", lambda: store_service, restart=Restart.TEMPORARY, shutdown=_STOP_MARGIN
            )
        )
        jobs = self.jobs_adapter
        mounts = self.vault_host.open(
            store,
            self.system,
            jobs.registrar if config.jobs.enabled else None,
            lambda: jobs.engine,
        )
        await self.vault_host.attach()
        await set_up_modules(self, modules)
        tls = self.tls.context if self.tls is not None else None
        server = ControlServer(
            self, config.control, tokens, self.metrics, mounts=mounts, ssl_context=tls
        )
        try:
            await root.start_child(
                ServiceSpec(
                    "control",
                    lambda: server,
                    shutdown=config.control.shutdown_timeout + _STOP_MARGIN,
                )
            )
        except OSError as exc:
            # Taken since the start's checks bound it: the same line as theirs.
            raise ConfigurationError(listen_error(exc, config.control)) from exc
        self.server = server
        if config.jobs.enabled and not self._draining:
            engine = await self.jobs_adapter.build_engine()
            assert self.jobs_adapter.engine is not None
            self.vault_host.register(self.jobs_adapter.engine)
            # Read again: a drain (or a stop) may have arrived while the engine was
            # built (it awaits the pausing of the configured queues). Nothing awaits
            # between this check and start_child, and a drain waits for the start to
            # finish before it stops the engine.
            if not self._draining:
                await root.start_child(
                    ServiceSpec(
                        "jobs",
                        lambda: engine,
                        shutdown=config.daemon.shutdown_timeout + _STOP_MARGIN,
                    )
                )
        host, _ = config.control.host_port()
        scheme = "https" if tls is not None else "http"
        url = f"{scheme}://{_url_host(host)}:{server.port}"
        if self.vault_host.vault is not None:
            # Last: stopped first, before the store it uses closes.
            vault = HostedService(f"{self.system.name}/vault", self.vault_host.background, 1.0)
            await root.start_child(ServiceSpec("vault", lambda: vault, shutdown=_STOP_MARGIN))
        publish_endpoint(config.data_path, url, self.name)
        # Where the command line finds the admin token, when that is what it uses.
        token = {} if config.control.tokens else {"admin_token": str(config.admin_token_path)}
        if tls is None and not config.control.loopback():
            log.warning(
                "the control channel is not encrypted: tokens and data cross the network "
                "in clear; set control.tls_cert and control.tls_key",
                listen=config.control.listen,
            )
        log.info(
            "daemon ready", name=self.name, url=url, loop=self.loop_name, pid=os.getpid(), **token
        )


def _url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def _redact(url: str) -> str:
    # Never log a database password.
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}" if ":" in creds else url
    return url
