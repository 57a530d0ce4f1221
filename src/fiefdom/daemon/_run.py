"""``Daemon.run()``, what ``fiefdom serve`` does with a daemon: configure logging,
make SIGTERM and SIGINT stop requests (the first drains, a second cancels) and SIGHUP
a reload (of the TLS certificate and key), start,
wait for a stop request (or for the tree to give up), stop; on a failure, log it and
write the flight recorder."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Protocol, TextIO

import anyio

from .._errors import FiefdomError
from .._gc import tune_gc
from .._lifecycle import StopMode
from .._log import get_logger
from ..protocol import EventHub
from ..supervisors import ActorSystem
from ._config import Config
from ._logging import FlightRecorder, configure_logging
from ._notify import notify

log = get_logger("fiefdom.daemon")


class Runnable(Protocol):
    """What running a daemon as a process needs of it (named here, so that this
    module needs no import of the daemon's)."""

    name: str
    config: Config
    system: ActorSystem
    hub: EventHub
    recorder: FlightRecorder

    @property
    def reached_running(self) -> bool: ...

    @property
    def claimed_data_dir(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self, mode: StopMode = "drain") -> None: ...

    def request_stop(self, mode: StopMode) -> None: ...

    def reload(self) -> None: ...

    async def wait_stop_request(self) -> StopMode: ...


async def run_daemon(daemon: Runnable, log_stream: TextIO | None) -> None:
    """Run ``daemon`` until stopped; raises what made it fail (one error, not the
    groups of the actor system's task groups around it)."""
    config = daemon.config
    configure_logging(
        config.daemon.log_level,
        config.daemon.log_format,
        daemon.recorder,
        daemon.hub,
        stream=log_stream,
    )
    remove_signals = _install_signals(daemon)
    try:
        try:
            await _start_wait_stop(daemon)
        except BaseExceptionGroup as group:
            # The task groups of the actor system wrap what a start step raised;
            # the operator wants that one error, not the group around it.
            leaves = _leaves(group)
            if len(leaves) == 1 and isinstance(leaves[0], Exception):
                # Its own cause is kept (a --debug traceback shows it).
                raise leaves[0] from leaves[0].__cause__
            raise
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
            _report_failure(daemon, exc)
        raise
    finally:
        remove_signals()


async def _start_wait_stop(daemon: Runnable) -> None:
    await daemon.start()
    tune_gc()  # start-up frozen, a higher young threshold (FIEFDOM_GC=default: not)
    notify("READY=1")  # under systemd (Type=notify): started, /readyz answers 200
    try:
        mode = await _until_stop_requested(daemon)
    except BaseException:
        notify("STOPPING=1")
        with anyio.CancelScope(shield=True):
            await daemon.stop("cancel")
        raise
    notify("STOPPING=1")
    log.info(
        "stopping the tree in reverse order",
        mode=mode,
        deadline=daemon.config.daemon.shutdown_timeout,
    )
    # Its last line says what ran, what was given back or cancelled, and how long
    # the stop took.
    await daemon.stop(mode)


async def _until_stop_requested(daemon: Runnable) -> StopMode:
    """Return the mode of a stop request, or ``drain`` when the tree stopped by itself
    (the root gave up: stopping the system then raises why)."""
    mode: StopMode = "drain"
    async with anyio.create_task_group() as tg:

        async def root_stopped() -> None:
            await daemon.system.wait_stopped()
            tg.cancel_scope.cancel()

        tg.start_soon(root_stopped, name="daemon/root-stopped")
        mode = await daemon.wait_stop_request()
        tg.cancel_scope.cancel()
    return mode


def _report_failure(daemon: Runnable, exc: BaseException) -> None:
    if not daemon.reached_running:
        # A failure to start: the command line prints it in one line (and its
        # traceback under --debug); the flight recorder keeps it all.
        log.debug("daemon failed", error=str(exc), exc_info=exc)
    elif isinstance(exc, FiefdomError):
        # An expected failure (schema, database): one line.
        log.error("daemon failed", error=str(exc), error_type=type(exc).__name__)
    else:
        log.error("daemon failed", exc_info=exc)
    if daemon.claimed_data_dir:
        # Only into a data folder this daemon has held: a start refused by its checks
        # writes nothing anywhere.
        with contextlib.suppress(OSError):
            path, _ = daemon.recorder.dump("crash")
            log.error("flight recorder written", path=str(path))


def _install_signals(daemon: Runnable) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    received = 0

    def on_signal(name: str) -> None:
        nonlocal received
        received += 1
        if received == 1:
            log.info("signal received: draining (send it again to cancel at once)", signal=name)
            daemon.request_stop("drain")
        else:
            log.warning("second signal received: cancelling running work", signal=name)
            daemon.request_stop("cancel")

    def on_reload() -> None:
        log.info("signal received: reloading", signal="SIGHUP")
        daemon.reload()

    handlers: list[tuple[signal.Signals, Callable[..., None], tuple[str, ...]]] = [
        (signal.SIGTERM, on_signal, ("SIGTERM",)),
        (signal.SIGINT, on_signal, ("SIGINT",)),
        # A reload, never a stop (nor the default's abrupt end of the process).
        (signal.SIGHUP, on_reload, ()),
    ]
    for sig, handler, args in handlers:
        try:
            loop.add_signal_handler(sig, handler, *args)
        except (NotImplementedError, RuntimeError, ValueError):
            continue  # not the main thread, or a platform without signals
        installed.append(sig)

    def remove() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return remove


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            leaves.extend(_leaves(exc))
        else:
            leaves.append(exc)
    return leaves
