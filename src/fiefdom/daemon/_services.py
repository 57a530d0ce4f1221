"""The daemon's own children in its supervisor tree, beside the user's actors: the
store as a service (the job engine and the control server are services already)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

import anyio

from .._lifecycle import Lifecycle, State, StopMode
from .._log import get_logger
from ..storage import Store
from ._outage import OutageLog

log = get_logger("fiefdom.daemon")

# Closing a store joins its connections (a thread on SQLite, a pool on PostgreSQL):
# quick, but bounded so that a wedged database cannot hold up the process's exit.
_CLOSE_DEADLINE = 10.0


class StoreService:
    """Opens the store (migrating it when configured, then checking its schema) and
    closes it when stopped.

    It is the first child of the daemon's tree, so it opens before the user modules'
    setup hooks run (they may use ``daemon.store``) and closes after everything that
    uses it has stopped. It runs once: a ``Store`` opens only once, and an outage of
    the database is handled inside the store (reconnecting with backoff, reported by
    ``/readyz``), never by pulling it from under the engine and the actors. Hence its
    restart type is ``temporary``, and ``serve`` never fails once it has started.
    Given an ``OutageLog``, it logs each outage's beginning and end while it serves.

    It has the shared lifecycle too (``state``, ``start``, ``stop(mode)``, ``async
    with``); it holds no work of its own, so both stop modes close the store."""

    def __init__(
        self,
        store: Store,
        *,
        migrate: bool,
        url_for_logs: str,
        outages: OutageLog | None = None,
    ) -> None:
        self.store = store
        self.migrate = migrate
        self.outages = outages
        self._url = url_for_logs
        self._lifecycle = Lifecycle(
            f"store service of {url_for_logs}",
            "run it as a supervised service, or use 'async with StoreService(store, ...)'",
        )
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()

    @property
    def state(self) -> State:
        """Where the service is in its lifecycle."""
        return self._lifecycle.state

    async def start(self) -> None:
        """Open the store (migrated when configured, its schema checked). A failure
        (no database, a schema it does not know) is raised as such."""
        self._lifecycle.begin_start()
        log.info("opening the store", url=self._url, migrate=self.migrate)
        try:
            await self.store.open(migrate=self.migrate)
        except BaseException:
            self._lifecycle.stopped()
            self._stopped.set()
            raise
        if self._lifecycle.state is State.STARTING:  # not stopped meanwhile
            self._lifecycle.started()

    async def stop(self, mode: StopMode = "drain") -> None:
        """Close the store (within a bounded deadline, whatever the mode: everything
        that used it has stopped before). Before ``start()`` it returns at once."""
        if not self._lifecycle.begin_stop():
            if self._lifecycle.state is State.STOPPING:
                await self._stopped.wait()
            return
        try:
            with anyio.move_on_after(_CLOSE_DEADLINE, shield=True):
                await self.store.close()
            log.info("store closed", url=self._url)
        finally:
            self._lifecycle.stopped()
            self._stopped.set()

    async def __aenter__(self) -> StoreService:
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
        """Open the store, call ``started()``, and close it once a stop is requested."""
        # A failure here fails the daemon's start with that error: the supervisor
        # hands it to start_child's caller.
        await self.start()
        try:
            if started is not None:
                started()
            async with anyio.create_task_group() as tg:
                if self.outages is not None:
                    tg.start_soon(self.outages.watch, self.store, name="store/outages")
                await self._stop_requested.wait()
                # Before the store closes: a closed store is not an outage.
                tg.cancel_scope.cancel()
        finally:
            await self.stop()

    def request_stop(self, mode: StopMode) -> None:
        """Close the store (everything that used it has stopped before: reverse order)."""
        self._stop_requested.set()

    def cancel(self) -> None:
        """Close now (closing is bounded anyway)."""
        self._stop_requested.set()

    def close(self, reason: str) -> None:
        """Nothing to release beyond what ``serve`` closes."""

    def reset(self) -> None:
        """Never restarted (temporary); a new ``serve`` would refuse to run again."""
