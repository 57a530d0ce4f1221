"""Quieter logs under attack: ``RepeatFilter`` lets a storm of one error
(``accept()`` failing with EMFILE, say) through once per interval with a count, not
once per occurrence; ``quiet_repeats`` puts it on the loggers of the libraries that
log per connection or per accept() while a server runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

# The loggers of the libraries that log per connection or per accept().
_LIBRARY_LOGGERS: Final = (
    "asyncio",
    "fiefdom.accept",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.websocket",
)


class RepeatFilter(logging.Filter):
    """Lets one record of a kind (logger, message, exception type) through per
    ``interval``; the first one after it says how many were held back, in one line."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._seen: dict[tuple[str, str, str], list[float]] = {}  # kind: [since, held]

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        kind = (record.name, str(record.msg), exc)
        now = self._clock()
        seen = self._seen.get(kind)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            return False
        if len(self._seen) >= 1000:
            self._seen.clear()  # bounded: kinds are few, unless messages embed values
        self._seen[kind] = [now, 0]
        if seen is not None and seen[1]:
            record.msg = (
                f"{record.getMessage()} ({int(seen[1])} more like it in the last "
                f"{self.interval:g}s)"
            )
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


_REPEATS: Final = RepeatFilter()
_attached = 0


def quiet_repeats() -> None:
    """Rate-limit the repeated errors of the libraries' loggers (until ``loud_repeats``;
    counted, so two servers in one process share it)."""
    global _attached
    if _attached == 0:
        for name in _LIBRARY_LOGGERS:
            logging.getLogger(name).addFilter(_REPEATS)
    _attached += 1


def loud_repeats() -> None:
    global _attached
    _attached -= 1
    if _attached == 0:
        for name in _LIBRARY_LOGGERS:
            logging.getLogger(name).removeFilter(_REPEATS)
