"""Log lines that repeat while a fault lasts (a database outage makes every poll of
every service fail) are throttled: the first one is logged, then at most one per
``interval`` per event, carrying how many were held back.

``exc_fields(exc)``: what to log of an exception raised by application code, whose
text is data (a lone surrogate in it cannot be written to a UTF-8 stream, and a
log call that raises would take the runtime down with it)."""

from __future__ import annotations

import sys
import time
import traceback
from typing import Any

from structlog.typing import FilteringBoundLogger


class Throttle:
    """``throttle.warning(log, "event", **fields)``: log it now unless the same event
    was logged less than ``interval`` seconds ago (then count it)."""

    __slots__ = ("_held", "_interval", "_last")

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, log: FilteringBoundLogger, event: str, **fields: Any) -> None:
        now = time.monotonic()
        last = self._last.get(event)
        if last is not None and now - last < self._interval:
            self._held[event] = self._held.get(event, 0) + 1
            return
        self._last[event] = now
        held = self._held.pop(event, 0)
        if held:
            fields["repeated"] = held
        log.warning(event, **fields)

    def clear(self, event: str) -> None:
        """The fault is over: the next occurrence is logged at once."""
        self._last.pop(event, None)
        self._held.pop(event, None)


def exc_fields(exc: BaseException | None = None) -> dict[str, Any]:
    """Log fields for ``exc`` (the exception being handled if None): ``exc_info``,
    or, when its traceback holds text no UTF-8 stream can take, that traceback
    escaped as ``error``."""
    if exc is None:
        exc = sys.exc_info()[1]
        if exc is None:
            return {}
    text = "".join(traceback.format_exception(exc))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return {"error": text.encode("utf-8", "backslashreplace").decode("utf-8")}
    return {"exc_info": exc}
