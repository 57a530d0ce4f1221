"""The daemon: opens the store, runs the actor system with the user's modules and
the job engine, serves the control channel, and shuts down in order.

Start order: store, actor system, user modules (their setup hooks register
actors, domains and job kinds), job engine, control server. On the first
SIGTERM/SIGINT it drains: it reports not ready, the engine stops claiming jobs and
lets running ones finish until ``shutdown_timeout``, then cancels them (they go
back to their queue); then everything stops in reverse order. A second signal
cancels at once."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import msgspec
import structlog

from .._errors import ConfigurationError, FiefdomError
from ..actors import ActorRef, Domain
from ..protocol import (
    ControlMetrics,
    ControlServer,
    EventHub,
    JobService,
    Registry,
    TokenTable,
)
from ..supervisors import ActorSystem
from ._config import Config
from ._jobs import JobRegistrar, JobsAdapter
from ._logging import FlightRecorder, configure_logging
from ._tokens import token_table

if TYPE_CHECKING:
    from ._storage import Store

log = structlog.get_logger("fiefdom.daemon")

StopMode = Literal["drain", "cancel"]


class DaemonContext:
    """What a user module's ``setup(daemon)`` hook gets: the actor system to spawn
    into, ``expose`` to make actors callable over the control channel, the job
    engine to register job kinds with, its own settings, and the data folder."""

    def __init__(self, daemon: Daemon, module: str) -> None:
        self._daemon = daemon
        self.module = module
        self.system: ActorSystem = daemon.system
        self.data_dir: Path = daemon.config.data_path
        self.settings: dict[str, Any] = dict(daemon.config.app.get(module.rsplit(".", 1)[-1], {}))
        self.log = structlog.get_logger(module)

    def expose(
        self,
        name: str,
        target: ActorRef[Any] | Domain[Any, Any],
        messages: Iterable[type[msgspec.Struct]],
    ) -> None:
        """Make ``target`` callable over the control channel as ``name``."""
        self._daemon.registry.expose(name, target, messages)
        if isinstance(target, Domain):
            # Job kinds may run in an exposed domain under the same name.
            self._daemon.jobs_adapter.registrar.domains.setdefault(name, target)

    @property
    def store(self) -> Store:
        store = self._daemon.store
        if store is None:  # pragma: no cover - setup runs after the store opened
            raise FiefdomError("the store is not open")
        return store

    @property
    def jobs(self) -> JobRegistrar:
        """Register job kinds, their handlers and the domains they run in."""
        return self._daemon.jobs_adapter.registrar


class Daemon:
    """One run of the daemon. ``await Daemon(config).run()`` returns when it has stopped."""

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
        self._log_stream = log_stream
        self._draining = False
        self._stop_mode: StopMode | None = None
        self._stop_requested = asyncio.Event()
        self._drain_scope: anyio.CancelScope | None = None
        self._signals = 0

    # -- ControlHost -----------------------------------------------------------------

    @property
    def jobs(self) -> JobService | None:
        return self.jobs_adapter.service

    @property
    def draining(self) -> bool:
        return self._draining

    async def readiness(self) -> dict[str, bool]:
        store_ok = False
        if self.store is not None:
            with anyio.move_on_after(2.0):
                try:
                    store_ok = bool(await self.store.ping())
                except FiefdomError:
                    store_ok = False
        return {
            "store": store_ok,
            "jobs": self.jobs_adapter.running or not self.config.jobs.enabled,
            "accepting": not self._draining,
        }

    def request_stop(self, mode: StopMode) -> None:
        if mode == "cancel" or self._stop_mode == "drain":
            self._stop_mode = "cancel"
            # Ends a drain in progress at once: running jobs are cancelled (and go
            # back to their queue).
            if self._drain_scope is not None:
                self._drain_scope.cancel()
            self.jobs_adapter.cancel_running()
        else:
            self._stop_mode = "drain"
        self._draining = True
        self._stop_requested.set()

    async def drain(self, timeout: float | None) -> None:
        self._draining = True
        log.info("draining: no new jobs are claimed; running ones finish")
        await self.jobs_adapter.drain(None, timeout)

    async def dump(self) -> tuple[str, int]:
        path, count = self.recorder.dump("request")
        log.info("flight recorder written", path=str(path), events=count)
        return str(path), count

    # -- running ---------------------------------------------------------------------

    def _on_signal(self, name: str) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("signal received: draining (send it again to cancel at once)", signal=name)
            self.request_stop("drain")
        else:
            log.warning("second signal received: cancelling running work", signal=name)
            self.request_stop("cancel")

    def _install_signals(self) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig.name)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or a platform without signals
            installed.append(sig)

        def remove() -> None:
            for sig in installed:
                loop.remove_signal_handler(sig)

        return remove

    async def run(self) -> None:
        """Run until stopped (signal or ``stop`` request); raises what made it fail."""
        config = self.config
        configure_logging(
            config.daemon.log_level,
            config.daemon.log_format,
            self.recorder,
            self.hub,
            stream=self._log_stream,
        )
        remove_signals = self._install_signals()
        try:
            try:
                await self._run()
            except BaseExceptionGroup as group:
                # The task groups of the actor system wrap what a start step raised;
                # the operator wants that one error, not the group around it.
                leaves = _leaves(group)
                if len(leaves) == 1 and isinstance(leaves[0], Exception):
                    raise leaves[0] from None
                raise
        except BaseException as exc:
            if isinstance(exc, FiefdomError):
                # An expected failure (configuration, schema, database): one line.
                log.error("daemon failed", error=str(exc), error_type=type(exc).__name__)
            elif not isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
                log.error("daemon failed", exc_info=exc)
            if not isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
                with contextlib.suppress(OSError):
                    path, _ = self.recorder.dump("crash")
                    log.error("flight recorder written", path=str(path))
            raise
        finally:
            remove_signals()
            with contextlib.suppress(FileNotFoundError):
                config.endpoint_path.unlink()

    async def _run(self) -> None:
        config = self.config
        data = config.data_path
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        tokens: TokenTable = token_table(config)
        from ._storage import open_store

        async with AsyncExitStack() as stack:
            store = open_store(config.store_url)
            log.info("opening the store", url=_redact(config.store_url))
            await store.open(migrate=config.store.migrate)
            stack.push_async_callback(store.close)
            self.store = store
            await stack.enter_async_context(self.system)
            self.jobs_adapter.attach(store)
            await self._load_modules()
            if config.jobs.enabled:
                await stack.enter_async_context(self.jobs_adapter.running_engine())
            server = ControlServer(self, config.control, tokens, self.metrics)
            await server.start()
            stack.push_async_callback(server.stop)
            self.server = server
            self._write_endpoint(server)
            log.info(
                "daemon ready",
                name=self.name,
                url=f"http://{config.control.host_port()[0]}:{server.port}",
                loop=self.loop_name,
                pid=os.getpid(),
            )
            await self._stop_requested.wait()
            await self._shutdown()
        log.info("daemon stopped", name=self.name)

    async def _shutdown(self) -> None:
        self._draining = True
        timeout = self.config.daemon.shutdown_timeout
        if self._stop_mode == "cancel":
            self.jobs_adapter.cancel_running()
        log.info("draining", deadline=timeout, mode=self._stop_mode)
        # The engine stops claiming, lets running jobs finish within the deadline,
        # then cancels them and gives them back to their queue. A second signal
        # cancels at once (request_stop -> cancel_running).
        with anyio.CancelScope() as scope:
            self._drain_scope = scope
            await self.jobs_adapter.stop()
        self._drain_scope = None

    async def _load_modules(self) -> None:
        base = Path(self.config.base_dir)
        for folder in self.config.daemon.python_path:
            path = str((base / folder).resolve())
            if path not in sys.path:
                sys.path.insert(0, path)
        for name in self.config.daemon.modules:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise ConfigurationError(
                    f"daemon.modules: cannot import {name!r}: {exc} "
                    "(is it installed, or its folder listed in daemon.python_path?)"
                ) from exc
            setup = getattr(module, "setup", None)
            if not callable(setup):
                raise ConfigurationError(
                    f"daemon.modules: {name!r} has no setup(daemon) function to call"
                )
            result = setup(DaemonContext(self, name))
            if inspect.isawaitable(result):
                await result
            log.info("module set up", module=name)

    def _write_endpoint(self, server: ControlServer) -> None:
        host, _ = self.config.control.host_port()
        info = {
            "url": f"http://{host}:{server.port}",
            "pid": os.getpid(),
            "name": self.name,
        }
        path = self.config.endpoint_path
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info), encoding="utf-8")
        os.replace(tmp, path)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            leaves.extend(_leaves(exc))
        else:
            leaves.append(exc)
    return leaves


def _redact(url: str) -> str:
    # Never log a database password.
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}" if ":" in creds else url
    return url
