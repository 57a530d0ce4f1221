"""The youngest generation's threshold of Python's cyclic garbage collector, raised
while an actor system runs or a store is open.

A domain keeps up to ``max_active`` actors alive, each a handful of objects the
collector tracks, and its churn of activations and messages allocates steadily: with
the interpreter's threshold of 700, that churn starts a collection of the oldest
generation every few thousand activations, and each one scans every live actor. Half
of a fresh activation's time went to those collections (docs/performance.md has the
figures).

The threshold counts allocations minus deallocations, and that churn frees about as
much as it allocates: raised to 10,000 (``THRESHOLD``), it is seldom reached, and far
fewer collections run at every level. The cost: cyclic garbage may wait for up to
10,000 more allocations before it is freed. Nothing else changes (the older
generations' thresholds are kept).

The rules:

- only ever raised, never lowered: an application that set a higher threshold of its
  own keeps it;
- held while any system runs or any store is open (they may nest or run side by
  side) and put back when the last one stops, unless the application changed it
  meanwhile (its change is kept);
- ``ActorSystem(tune_gc=False)`` and ``open_store(url, tune_gc=False)`` opt out; so
  does ``FIEFDOM_GC=default`` in the environment, for every system, store and the
  daemon; ``FIEFDOM_GC=<n>`` sets ``n``.

A store raises it because a batch enqueue allocates a few objects per job (its
row, the values encoded for the driver): with the interpreter's threshold, a batch
of 20,000 ran 75-78 young collections, a sixth of its time.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Mapping

from ._log import get_logger

ENV = "FIEFDOM_GC"
THRESHOLD = 10_000

log = get_logger("fiefdom.gc")


def gc_threshold(environ: Mapping[str, str] | None = None) -> int | None:
    """The youngest generation's threshold ``environ`` asks for (the process's
    environment by default); None: leave the collector alone."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip().lower()
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


class _Raised:
    """Who holds the raised threshold, and what to put back after the last one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # systems may run in several threads' loops
        self.holders = 0
        self.before: tuple[int, int, int] | None = None
        self.ours: tuple[int, int, int] | None = None


_raised = _Raised()


def _noop() -> None:
    pass


def raise_threshold(threshold: int | None) -> Callable[[], None]:
    """Raise the youngest generation's threshold to ``threshold`` (None: do nothing)
    until the function returned is called (once is enough; more calls do nothing)."""
    if threshold is None:
        return _noop
    with _raised.lock:
        if _raised.holders == 0:
            current = gc.get_threshold()
            if current[0] >= threshold:
                return _noop  # the application's own, at least as high: kept
            _raised.before = current
            _raised.ours = (threshold, current[1], current[2])
            gc.set_threshold(*_raised.ours)
        _raised.holders += 1
    released = False

    def release() -> None:
        nonlocal released
        with _raised.lock:
            if released:
                return
            released = True
            _raised.holders -= 1
            if _raised.holders == 0:
                before, ours = _raised.before, _raised.ours
                _raised.before = _raised.ours = None
                if before is not None and gc.get_threshold() == ours:
                    gc.set_threshold(*before)

    return release


def tune_gc(environ: Mapping[str, str] | None = None) -> Callable[[], None]:
    """What ``fiefdom serve`` applies once its tree has started: a full collection,
    then ``gc.freeze()`` (what start-up allocated, the modules, the configuration, the
    supervision tree, moves to the permanent generation, which no collection scans
    again), and the threshold raised as a running system raises it. An embedding
    application decides on a freeze itself: only it knows when its start-up is over.
    ``FIEFDOM_GC=default`` opts out. Returns the function that undoes both."""
    threshold = gc_threshold(environ)
    if threshold is None:
        return _noop
    gc.collect()  # no garbage of start-up is frozen
    gc.freeze()
    release = raise_threshold(threshold)
    log.info(
        "garbage collector tuned", threshold=gc.get_threshold()[0], frozen=gc.get_freeze_count()
    )

    def undo() -> None:
        release()
        gc.unfreeze()

    return undo
