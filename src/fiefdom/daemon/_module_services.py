"""A module's long-lived services (``await daemon.run_service(name, service)``): an
HTTP server, a consumer, a poller, run as a supervised ``Service`` in the daemon's
tree, restarted when it crashes and stopped in reverse order with the rest.

A service is either an async function that runs until it is cancelled, or an
object with ``async start()`` and ``async stop()``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import anyio

from .._lifecycle import StopMode
from .._log import get_logger

log = get_logger("fiefdom.daemon")


@runtime_checkable
class StartStop(Protocol):
    """A service as an object: ``start()`` returns once it serves (a server bound to
    its port), ``stop()`` once it has stopped."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


ServiceTarget = Callable[[], Awaitable[object]] | StartStop
"""What ``run_service`` runs: an async function, or an object with start and stop."""


class HostedService:
    """Adapts a module's service to the supervisor's ``Service``: ``serve`` runs the
    function in a task of its own (cancelled to stop it), or calls ``start`` and,
    once a stop is requested, ``stop``. A function that raises, or returns without a
    stop request, has crashed or exited, and its supervisor restarts it."""

    def __init__(self, path: str, target: ServiceTarget, grace: float) -> None:
        self.path = path
        self._target = target
        # How long ``stop()`` of an object gets when the service is cancelled.
        self._grace = grace
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[object] | None = None
        self._scope: anyio.CancelScope | None = None

    async def serve(self, started: Callable[[], None] | None = None) -> None:
        if isinstance(self._target, StartStop):
            await self._serve_object(self._target, started)
        else:
            await self._serve_function(self._target, started)

    async def _serve_function(
        self, function: Callable[[], Awaitable[object]], started: Callable[[], None] | None
    ) -> None:
        loop = asyncio.get_running_loop()

        async def run() -> object:
            return await function()

        task = loop.create_task(run(), name=self.path)
        self._task = task
        if started is not None:
            started()
        stopping = loop.create_task(self._stopping.wait(), name=f"{self.path} (stop request)")
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                # A stop: the function's own cleanup (finally, async with) runs now,
                # within the service's shutdown deadline.
                task.cancel()
                await asyncio.wait({task})
        finally:
            stopping.cancel()
            if not task.done():
                # Cut short (the deadline passed): the function is cancelled again.
                task.cancel()
            self._task = None
        if task.cancelled():
            if self._stopping.is_set():
                return
            raise RuntimeError(f"service {self.path} was cancelled without a stop request")
        exc = task.exception()
        if exc is not None:
            raise exc
        if not self._stopping.is_set():
            log.info("service returned without a stop request", service=self.path)

    async def _serve_object(self, target: StartStop, started: Callable[[], None] | None) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            await target.start()
            try:
                if started is not None:
                    started()
                await self._stopping.wait()
            finally:
                # On a stop request as when cancelled: stop() runs, shielded from the
                # cancellation but bounded, so that a server always closes its port.
                with anyio.move_on_after(self._grace, shield=True):
                    await target.stop()
        self._scope = None

    def request_stop(self, mode: StopMode) -> None:
        self._stopping.set()

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._scope is not None:
            self._scope.cancel()
        self._stopping.set()

    def close(self, reason: str) -> None:
        """Nothing to release beyond what ``serve`` ends."""

    def reset(self) -> None:
        self._stopping = asyncio.Event()
