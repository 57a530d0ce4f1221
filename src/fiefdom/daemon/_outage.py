"""Database outages in the daemon's log: one warning when an outage begins and one when
the database is back, instead of asyncpg's traceback at each attempt of its pool to
restore its connections (after 1, 2, 4 ... 60 s, for as long as the outage lasts)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import anyio

from .._errors import StoreError
from .._log import get_logger
from ._storage import Store

log = get_logger("fiefdom.daemon")

_POOL_LOGGER = "asyncpg.pool"
_POOL_RECONNECT = "Failed to restore the pool connection floor"
# Between two readings of the store's health (an attribute: no query is made); a
# failed reconnect of the pool is taken at once.
_CHECK_EVERY = 1.0
# During an outage, between two reads of the store: soon at first, then less often.
_PROBE_FIRST = 0.25
_PROBE_MAX = 5.0


class OutageLog(logging.Filter):
    """The daemon's database outages, each logged as two lines.

    As a filter on asyncpg's pool logger (``install()``), it drops the pool's
    reconnect warnings and their tracebacks, each one a debug event "database
    reconnect failed" instead (kept by the flight recorder; on stderr at log level
    debug only). ``watch(store)``, run by the store service, takes such a failure, or
    an operation of the store that could not reach the database, as a sign; reads
    the store to confirm it ("database outage began"), then reads it again until it
    answers ("database is back")."""

    def __init__(self, url_for_logs: str) -> None:
        super().__init__()
        self.url = url_for_logs
        # Set by the filter (asyncpg logs from its pool's task, on the loop), cleared
        # by watch().
        self._sign = asyncio.Event()

    def install(self) -> Callable[[], None]:
        """Filter asyncpg's pool logger; returns the function that removes the filter."""
        logger = logging.getLogger(_POOL_LOGGER)
        logger.addFilter(self)
        return lambda: logger.removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(_POOL_RECONNECT):
            return True
        error = None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            error = f"{type(exc).__name__}: {exc}"
        self._sign.set()
        log.debug("database reconnect failed", url=self.url, error=error)
        return False

    async def watch(self, store: Store) -> None:
        """Until cancelled: log the beginning and the end of each outage."""
        while True:
            with anyio.move_on_after(_CHECK_EVERY):
                await self._sign.wait()
            if not self._sign.is_set() and store.healthy:
                continue
            self._sign.clear()
            # A sign alone is no outage: one dropped connection, or a late failure of
            # an operation begun before the database came back, is followed by a
            # read that works.
            error = await _unreachable(store)
            if error is None:
                continue
            began_at = time.monotonic()
            log.warning(
                "database outage began: retrying until it is back", url=self.url, error=error
            )
            delay = _PROBE_FIRST
            while await _unreachable(store) is not None:
                await anyio.sleep(delay)
                delay = min(delay * 2, _PROBE_MAX)
            # The signs given during the outage were the outage's own.
            self._sign.clear()
            lasted = round(time.monotonic() - began_at, 1)
            log.warning("database is back", url=self.url, outage_seconds=lasted)


async def _unreachable(store: Store) -> str | None:
    """Why the store cannot be read now, or None if it can (which marks it healthy)."""
    try:
        await store.schema_version()
    except StoreError as exc:
        return str(exc)
    return None
