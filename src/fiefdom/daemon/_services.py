"""The daemon's own children in its supervisor tree, beside the user's actors: the
store as a service (the job engine and the control server are services already)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio
import structlog

from .._errors import StoreError
from ..actors import StopMode
from ..storage import Store, StoreState

log = structlog.get_logger("fiefdom.daemon")

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
    restart type is ``temporary``, and ``serve`` never fails once it has started."""

    def __init__(self, store: Store, *, migrate: bool, url_for_logs: str) -> None:
        self.store = store
        self.migrate = migrate
        self._url = url_for_logs
        self._stop_requested = asyncio.Event()

    async def serve(self, started: Callable[[], None] | None = None) -> None:
        """Open the store, call ``started()``, and close it once a stop is requested."""
        if self.store.state is not StoreState.NEW:
            raise StoreError(f"the store {self._url} is {self.store.state}: it opens only once")
        log.info("opening the store", url=self._url, migrate=self.migrate)
        # A failure here (no database, a schema it does not know) fails the daemon's
        # start with that error: the supervisor hands it to start_child's caller.
        await self.store.open(migrate=self.migrate)
        try:
            if started is not None:
                started()
            await self._stop_requested.wait()
        finally:
            with anyio.move_on_after(_CLOSE_DEADLINE, shield=True):
                await self.store.close()
            log.info("store closed", url=self._url)

    def request_stop(self, mode: StopMode) -> None:
        """Close the store (everything that used it has stopped before: reverse order)."""
        self._stop_requested.set()

    def cancel(self) -> None:
        """Close now (closing is bounded anyway)."""
        self._stop_requested.set()

    def close(self, reason: str) -> None:
        """Nothing to release beyond what ``serve`` closes."""

    def reset(self) -> None:
        """Never restarted (temporary); a new ``serve`` would refuse the closed store."""
