"""The user's modules (``daemon.modules``): imported before the daemon writes anything,
so that a missing one fails the start with nothing created; their ``setup(daemon)``
hooks run later, once the store is open, with a ``DaemonContext``."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec
import structlog

from .._errors import ConfigurationError, FiefdomError
from ..actors import ActorRef, Domain
from ..protocol import Registry
from ..supervisors import ActorSystem
from ._config import Config
from ._jobs import JobRegistrar, JobsAdapter
from ._storage import Store

log = structlog.get_logger("fiefdom.daemon")


class ModuleHost(Protocol):
    """What the modules' hooks reach of the daemon (named here, so that this module
    needs no import of the daemon's)."""

    config: Config
    system: ActorSystem
    registry: Registry
    jobs_adapter: JobsAdapter
    store: Store | None


class DaemonContext:
    """What a user module's ``setup(daemon)`` hook gets: the actor system to spawn
    into, ``expose`` to make actors callable over the control channel, the job
    engine to register job kinds with, its own settings, and the data folder."""

    def __init__(self, daemon: ModuleHost, module: str) -> None:
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


@dataclass(frozen=True, slots=True)
class UserModule:
    """An imported user module and its ``setup(daemon)`` hook."""

    name: str
    setup: Callable[[DaemonContext], object]


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


async def set_up_modules(daemon: ModuleHost, modules: Sequence[UserModule]) -> None:
    """Run each module's hook in order (awaiting it when it is a coroutine)."""
    for module in modules:
        result = module.setup(DaemonContext(daemon, module.name))
        if inspect.isawaitable(result):
            await result
        log.info("module set up", module=module.name)
