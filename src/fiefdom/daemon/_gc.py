"""The daemon's settings of Python's cyclic garbage collector, applied once the tree has
started (``fiefdom serve``; an embedding application keeps its own).

A domain keeps up to ``max_active`` actors alive, and each collection of the oldest
generation scans every one of them. Two settings make that rarer and cheaper:

- ``gc.freeze()`` once started: what start-up allocated (modules, configuration, the
  supervision tree) moves to the permanent generation, which no collection scans.
- The youngest generation's threshold raised from the interpreter's 700 to 10,000
  (``THRESHOLD``): its count is allocations minus deallocations, so the churn of
  activations and messages, which frees about as much as it allocates, seldom reaches
  it, and far fewer objects reach the older generations to be scanned there. The cost:
  cyclic garbage waits for up to 10,000 more allocations before it is freed.

``FIEFDOM_GC=default`` opts out (the interpreter's settings are left alone);
``FIEFDOM_GC=<n>`` sets the threshold to ``n`` (the freeze is kept). docs/performance.md
has the figures."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Mapping

from .._log import get_logger

ENV = "FIEFDOM_GC"
THRESHOLD = 10_000

log = get_logger("fiefdom.daemon")


def gc_threshold(environ: Mapping[str, str]) -> int | None:
    """The youngest generation's threshold ``environ`` asks for; None: leave the
    collector alone."""
    value = environ.get(ENV, "").strip().lower()
    if not value:
        return THRESHOLD
    if value == "default":
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    log.warning(
        "garbage collector settings left alone: not 'default' nor a positive integer",
        variable=ENV,
        value=value,
    )
    return None


def tune_gc(environ: Mapping[str, str] | None = None) -> Callable[[], None]:
    """Freeze what start-up allocated and raise the youngest generation's threshold
    (unless ``FIEFDOM_GC=default``); returns the function that undoes both."""
    threshold = gc_threshold(os.environ if environ is None else environ)
    if threshold is None:
        return lambda: None
    before = gc.get_threshold()
    gc.collect()  # no garbage of start-up is frozen
    gc.freeze()
    gc.set_threshold(threshold, before[1], before[2])
    log.info("garbage collector tuned", threshold=threshold, frozen=gc.get_freeze_count())

    def undo() -> None:
        gc.set_threshold(*before)
        gc.unfreeze()

    return undo
