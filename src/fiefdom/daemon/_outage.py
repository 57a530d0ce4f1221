"""Database outages in the daemon's log: one warning when an outage begins and one when
the database is back, instead of asyncpg's traceback at each attempt of its pool to
restore its connections (after 1, 2, 4 ... 60 s, for as long as the outage lasts)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
import structlog

from ._storage import Store

log = structlog.get_logger("fiefdom.daemon")

_POOL_LOGGER = "asyncpg.pool"
_POOL_RECONNECT = "Failed to restore the pool connection floor"
# Between two readings of the store's health (an attribute: no query is made).
_CHECK_EVERY = 1.0
# During an outage, between two pings of the store: soon at first, then less often.
_PROBE_FIRST = 0.25
_PROBE_MAX = 5.0


class OutageLog(logging.Filter):
    """The daemon's database outages, each logged as two lines.

    As a filter on asyncpg's pool logger (``install()``), it drops the pool's
    reconnect warnings and their tracebacks: the first of an outage becomes "database
    outage began", and each one a debug event "database reconnect failed" (kept by
    the flight recorder; on stderr at log level debug only). ``watch(store)``, run
    by the store service, notices an outage that no reconnect reported (an operation
    of the store could not reach the database), then pings the store until it
    answers: "database is back"."""

    def __init__(self, url_for_logs: str) -> None:
        super().__init__()
        self.url = url_for_logs
        # When the outage under way began (monotonic); None while the database answers.
        # Written by the filter (asyncpg logs from its pool's task, on the loop) and
        # read by watch(): a plain attribute is enough.
        self._began_at: float | None = None

    @property
    def in_outage(self) -> bool:
        return self._began_at is not None

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
        self.began(error)
        log.debug("database reconnect failed", url=self.url, error=error)
        return False

    def began(self, error: str | None) -> None:
        """Log the start of an outage, unless one is already under way."""
        if self._began_at is not None:
            return
        self._began_at = time.monotonic()
        fields = {"url": self.url} if error is None else {"url": self.url, "error": error}
        log.warning("database outage began: retrying until it is back", **fields)

    async def watch(self, store: Store) -> None:
        """Until cancelled: notice outages, and log the end of each one."""
        while True:
            while self._began_at is None:
                if not store.healthy:
                    self.began(None)
                else:
                    await anyio.sleep(_CHECK_EVERY)
            delay = _PROBE_FIRST
            while not await store.ping():
                await anyio.sleep(delay)
                delay = min(delay * 2, _PROBE_MAX)
            began_at, self._began_at = self._began_at, None
            lasted = time.monotonic() - began_at
            log.warning("database is back", url=self.url, outage_seconds=round(lasted, 1))
