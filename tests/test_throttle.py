"""Repeated failure lines are throttled: the first is logged at once, the repeats within
the interval are counted into the next line, and other events are not held back."""

from __future__ import annotations

import structlog
from structlog.testing import capture_logs

from fiefdom._throttle import Throttle


def test_repeats_within_the_interval_are_counted_into_the_next_line() -> None:
    """Ten failures of one kind make one line; after the interval the next says how many
    were held back; another event is logged at once meanwhile."""
    log = structlog.get_logger("test")
    throttle = Throttle(interval=0.0)
    with capture_logs() as lines:
        first = Throttle(interval=3600.0)
        for _ in range(10):
            first.warning(log, "promoting due jobs failed", error="down")
        first.warning(log, "rescue failed", error="down")
        for _ in range(3):
            throttle.warning(log, "heartbeat failed")
    events = [(e["event"], e.get("repeated")) for e in lines]
    assert events[:2] == [("promoting due jobs failed", None), ("rescue failed", None)]
    # With no interval nothing is held back.
    assert events[2:] == [("heartbeat failed", None)] * 3


def test_the_count_of_held_back_lines_is_reported() -> None:
    """Once the interval has passed, the line carries the number of repeats it held back."""
    log = structlog.get_logger("test")
    throttle = Throttle(interval=3600.0)
    with capture_logs() as lines:
        for _ in range(5):
            throttle.warning(log, "rescue failed")
        throttle._last["rescue failed"] -= 7200  # the interval has passed
        throttle.warning(log, "rescue failed")
    assert [e.get("repeated") for e in lines] == [None, 4]
