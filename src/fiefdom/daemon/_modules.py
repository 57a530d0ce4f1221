"""The user's modules (``daemon.modules``): imported before the daemon writes anything,
so that a missing one fails the start with nothing created; their ``setup(daemon)``
hooks run later, once the store is open, each with its own ``ModuleHost``."""

from __future__ import annotations

import contextlib
import gc
import importlib
import inspect
import linecache
import re
import sys
import warnings
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, overload

import msgspec
from structlog.typing import FilteringBoundLogger

from .._errors import ConfigurationError, FiefdomError
from .._log import get_logger
from ..actors import ActorRef, Domain
from ..protocol import Registry
from ..supervisors import ActorSystem, Backoff, Restart, ServiceSpec, SupervisorSpec
from ._config import Config
from ._jobs import JobRegistrar, JobsAdapter
from ._module_services import HostedService, ServiceTarget
from ._storage import Store

log = get_logger("fiefdom.daemon")

# How long a service's supervisor waits beyond the service's own deadline.
_STOP_MARGIN = 5.0

S = TypeVar("S", bound=msgspec.Struct)


class _Daemon(Protocol):
    """What the modules' hooks reach of the daemon (named here, so that this module
    needs no import of the daemon's)."""

    config: Config
    system: ActorSystem
    registry: Registry
    jobs_adapter: JobsAdapter
    store: Store | None


class ModuleHost:
    """What a module's ``setup(daemon)`` hook receives: the daemon as its modules see it.

    ::

        class Settings(msgspec.Struct):
            port: int = 8080

        async def setup(daemon: fiefdom.ModuleHost) -> None:
            settings = daemon.settings(Settings)          # [app.<module>] in config.toml
            documents = daemon.system.domain("documents", Document)
            daemon.expose("documents", documents, [Append, Read])
            daemon.jobs.register(WordCount, count_words)

    One is made per module. The hook runs once at start, after the store has opened
    and before the control server and the job engine start; what it spawns joins the
    daemon's supervisor tree in module order and stops, in reverse order, after the
    engine and the control server have stopped. An exception raised by the hook fails
    the daemon's start (``fiefdom serve`` exits 2).

    The await rule: a call that returns once something has happened is a coroutine,
    and must be awaited: an actor started (``system.spawn``, ``start_supervisor``), a
    service started (``run_service``), a message delivered or answered (``tell``,
    ``ask``), the database written or read. A call that only declares something
    returns at once and is not awaited: ``system.domain`` (its actors start on their
    first message), ``expose``, ``jobs.register``, ``settings``. A coroutine that
    setup leaves never awaited fails the start with one line naming the call."""

    def __init__(self, daemon: _Daemon, module: str) -> None:
        self._daemon = daemon
        self._module = module
        self._section = module.rsplit(".", 1)[-1]
        self._log: FilteringBoundLogger = get_logger(module)

    @property
    def module(self) -> str:
        """The module's import name, as listed in ``daemon.modules``."""
        return self._module

    @property
    def section(self) -> str:
        """The name of the module's own settings section, ``[app.<section>]``: the last
        part of its import name (``[app.webhooks]`` for ``myapp.webhooks``)."""
        return self._section

    @property
    def system(self) -> ActorSystem:
        """The daemon's actor system: ``await system.spawn(...)`` an actor, or create a
        domain with ``system.domain(...)``; both join the daemon's supervisor tree."""
        return self._daemon.system

    @property
    def store(self) -> Store:
        """The daemon's store, open and migrated: ``store.transaction()`` to write the
        application's own tables (and enqueue jobs with them), ``store.read()`` to read
        them."""
        store = self._daemon.store
        if store is None:  # pragma: no cover - setup runs after the store opened
            raise FiefdomError("the store is not open")
        return store

    @property
    def jobs(self) -> JobRegistrar:
        """The job engine's registrar: ``jobs.register(JobType, handler)`` a job kind,
        ``jobs.domain(name, domain)`` a domain job kinds run in, ``jobs.periodic(...)``
        a job enqueued on a schedule. Only during setup: the engine starts after it."""
        return self._daemon.jobs_adapter.registrar

    @property
    def data_dir(self) -> Path:
        """The daemon's data folder (``daemon.data_dir``), for files of the module's own."""
        return self._daemon.config.data_path

    @property
    def config(self) -> Config:
        """The daemon's whole configuration, read-only by convention."""
        return self._daemon.config

    @property
    def log(self) -> FilteringBoundLogger:
        """A logger named after the module; its lines go wherever the daemon's go."""
        return self._log

    def expose(
        self,
        name: str,
        target: ActorRef[Any] | Domain[Any, Any],
        messages: Iterable[type[msgspec.Struct]],
    ) -> None:
        """Make ``target`` callable over the control channel as ``name``, for the
        message types listed (``client.call(name, msg, key=...)``, ``fiefdom call``).
        An exposed domain is also where job kinds declaring ``domain=name`` run."""
        self._daemon.registry.expose(name, target, messages)
        if isinstance(target, Domain):
            # Job kinds may run in an exposed domain under the same name.
            self._daemon.jobs_adapter.registrar.domains.setdefault(name, target)

    async def run_service(
        self,
        name: str,
        service: ServiceTarget,
        *,
        restart: Restart = Restart.PERMANENT,
        max_restarts: int = 3,
        within: float = 5.0,
        backoff: Backoff | None = None,
        shutdown: float = 10.0,
    ) -> None:
        """Run a long-lived service (an HTTP server, a consumer) in the daemon's tree,
        supervised, and stopped with the daemon; returns once it has started.

        ``service`` is an async function that runs until it is cancelled (``await
        service()``; its ``finally`` blocks clean up), or an object with ``async
        start()`` (returning once it serves) and ``async stop()``. At the daemon's
        stop, services stop in reverse order of their start, after the job engine
        and the control server (so a webhook server can still enqueue while jobs
        drain) and before the store closes; each gets ``shutdown`` seconds, then is
        cancelled. A function is cancelled to stop it.

        It runs under a supervisor of its own named ``name`` (its child is
        ``service``): a crash (the function raising, or returning when ``restart``
        is ``PERMANENT``) restarts it after ``backoff``; more than ``max_restarts``
        within ``within`` seconds and that supervisor gives up, escalating to the
        daemon's root, which restarts it within its own intensity and past that
        stops the daemon with the error. A failure of ``start()`` here fails the
        daemon's start."""
        path = f"{self.system.name}/{name}/service"
        hosted = HostedService(path, service, shutdown)
        spec = SupervisorSpec(
            name,
            children=[ServiceSpec("service", lambda: hosted, restart=restart, shutdown=shutdown)],
            max_restarts=max_restarts,
            within=within,
            backoff=backoff,
            shutdown=shutdown + _STOP_MARGIN,
        )
        await self.system.start_supervisor(spec)
        log.info("service started", module=self._module, service=name)

    @overload
    def settings(self) -> dict[str, Any]: ...

    @overload
    def settings(self, kind: type[S]) -> S: ...

    def settings(self, kind: type[S] | None = None) -> dict[str, Any] | S:
        """The module's own section of ``config.toml``, ``[app.<section>]``.

        Without an argument: a copy of the section as a dict (empty when there is
        none). With a ``msgspec.Struct`` type: the section decoded and validated into
        it (its defaults fill what the section leaves out; ``forbid_unknown_fields=True``
        on the Struct refuses misspelt keys). Environment variables override keys as
        for any setting: ``FIEFDOM_APP__<SECTION>__<KEY>``. A bad value raises
        ConfigurationError naming ``app.<section>.<key>``; raised in ``setup``, it
        fails the daemon's start with that one line (``fiefdom serve`` exits 2)."""
        raw = self._daemon.config.app.get(self._section, {})
        if not isinstance(raw, dict):
            raise ConfigurationError(
                f"app.{self._section}: expected a table ([app.{self._section}]), "
                f"got {type(raw).__name__}"
            )
        if kind is None:
            return dict(raw)
        try:
            # Not strict: environment overrides arrive as text ("9000" for an int).
            return msgspec.convert(raw, kind, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigurationError(_explain(exc, f"app.{self._section}")) from None


def _explain(exc: msgspec.ValidationError, section: str) -> str:
    """One line naming the key of ``section`` that msgspec refused, and why."""
    text = str(exc)
    message, marker, where = text.rpartition(" - at `")
    if not marker:
        message, where = text, "$"
    key = where.rstrip("`").removeprefix("$").lstrip(".")
    path = f"{section}.{key}" if key else section
    if message.startswith("Object contains unknown field"):
        field = message.split("`")[1]
        return f"{path}.{field}: unknown key (check its spelling)"
    if message.startswith("Object missing required field"):
        field = message.split("`")[1]
        return f"{path}.{field}: missing (the module requires it)"
    detail = message[0].lower() + message[1:] if message else "invalid value"
    return f"{path}: {detail}"


@dataclass(frozen=True, slots=True)
class UserModule:
    """An imported user module and its ``setup(daemon)`` hook."""

    name: str
    setup: Callable[[ModuleHost], object]


def import_modules(config: Config) -> list[UserModule]:
    """Import ``daemon.modules`` (from ``daemon.python_path`` too) and find each one's
    hook; raises ConfigurationError naming the module that cannot be used."""
    base = Path(config.base_dir)
    for folder in config.daemon.python_path:
        path = str((base / folder).resolve())
        if path not in sys.path:
            sys.path.insert(0, path)
    modules: list[UserModule] = []
    for name in config.daemon.modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigurationError(
                f"daemon.modules: cannot import {name!r}: {exc} "
                "(is it installed, or its folder listed in daemon.python_path?)"
            ) from exc
        except Exception as exc:
            # The module's own code failed: a bug of the module, not of the setting.
            raise ConfigurationError(
                f"daemon.modules: importing {name!r} raised {type(exc).__name__}: {exc}"
            ) from exc
        setup = getattr(module, "setup", None)
        if not callable(setup):
            raise ConfigurationError(
                f"daemon.modules: {name!r} has no setup(daemon) function to call"
            )
        modules.append(UserModule(name, setup))
    return modules


async def set_up_modules(daemon: _Daemon, modules: Sequence[UserModule]) -> None:
    """Run each module's hook in order (awaiting it when it is a coroutine). A hook
    that leaves a coroutine never awaited (``daemon.system.spawn(...)`` without
    ``await``: nothing was spawned) fails the start, naming the call."""
    for module in modules:
        with _unawaited_coroutines() as unawaited:
            result = module.setup(ModuleHost(daemon, module.name))
            if inspect.isawaitable(result):
                await result
            del result
        if unawaited:
            raise FiefdomError(_describe_unawaited(module.name, unawaited))
        log.info("module set up", module=module.name)


_NEVER_AWAITED = r"coroutine .* was never awaited"


@contextlib.contextmanager
def _unawaited_coroutines() -> Iterator[list[Coroutine[Any, Any, Any]]]:
    """Collect the coroutines the block leaves never awaited (with where each was
    made); other warnings raised meanwhile are shown as usual afterwards."""
    found: list[Coroutine[Any, Any, Any]] = []
    depth = sys.get_coroutine_origin_tracking_depth()
    sys.set_coroutine_origin_tracking_depth(max(depth, 1))
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as recorded:
            warnings.filterwarnings("always", message=_NEVER_AWAITED, category=RuntimeWarning)
            try:
                yield found
            finally:
                # A coroutine kept in a reference cycle warns only once collected.
                gc.collect()
                caught = list(recorded)
    finally:
        sys.set_coroutine_origin_tracking_depth(depth)
        for warning in caught:
            source = warning.source
            if (
                issubclass(warning.category, RuntimeWarning)
                and inspect.iscoroutine(source)
                and re.match(_NEVER_AWAITED, str(warning.message))
            ):
                found.append(source)
            else:
                warnings.warn_explicit(
                    warning.message, warning.category, warning.filename, warning.lineno
                )


def _describe_unawaited(module: str, coroutines: Sequence[Coroutine[Any, Any, Any]]) -> str:
    first = coroutines[0]
    name = getattr(first, "__qualname__", type(first).__name__)
    origin = getattr(first, "cr_origin", None)
    where = ""
    if origin:
        filename, lineno, _ = origin[0]
        code = linecache.getline(filename, lineno).strip()
        where = f" at {filename}:{lineno}" + (f" ({code})" if code else "")
    more = f" (and {len(coroutines) - 1} more)" if len(coroutines) > 1 else ""
    return (
        f"daemon.modules: {module!r} setup called {name}() without await{where}{more}: "
        "it did nothing; write await before the call"
    )
