"""Fairness between the clients of the control channel: one client's flood must not
stall the others. Three mechanisms, each cheap on the path of a well-behaved client:

- ``RateLimiter``: a token bucket per connection; a heavy request (one that reads
  the store or walks every actor: its type's ``cost``) counts as that many frames,
  once decoded. A frame past it is dropped before it is decoded, and the first of
  a window of dropped frames is answered with one error; then the connection is
  not read from until the bucket allows a frame again.
  A flooder's frames wait in the socket buffers meanwhile, then its sends block: the
  daemon reads it (and it sends) no faster than the rate, in order, instead of
  reading and dropping every frame it manages to send;
- the per-connection cap on requests in flight (``Connection`` stops reading);
- ``FairScheduler``: the server's slots for concurrent requests, handed out to the
  connection holding the fewest, and at most ``OWNER_SLOTS`` to one connection, so
  that a newcomer's request waits for one request to end, not for every request a
  flooder has queued, and then runs behind a few of its requests, not dozens (the
  database, an actor's mailbox and the event loop serve in the order asked)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Final, Generic, TypeVar

from ._messages import HEAVY, ErrorCode
from ._replies import Error

K = TypeVar("K")

# Slots one owner (connection) holds at most, even when others are free: requests
# that run at once mostly wait in line for the same CPU, database and actors, so a
# connection running more of them gains little and delays every other connection's
# requests. A request past the slice gives its slot back, so slow requests (waiting
# on I/O) still overlap. Measured in bench/control_fairness.py.
OWNER_SLOTS: Final = 4


class RateLimiter:
    """A token bucket: ``rate`` frames per second, bursts up to ``burst``; and the
    window of a connection past it. A window opens with the first frame dropped and
    closes with the first frame taken without a pause before it (the client has
    slowed down): a flooder is told once, not once per frame or per pause."""

    __slots__ = ("_burst", "_last", "_level", "_limited", "_rate", "_resumed")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._level = float(burst)
        self._last = time.monotonic()
        self._limited = False  # in a window of dropped frames (the client was told)
        self._resumed = False  # the reading has just resumed after a pause

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self._burst, self._level + (now - self._last) * self._rate)
        self._last = now

    def take(self) -> bool:
        # (_refill, inline: this runs for every frame read.)
        now = time.monotonic()
        level = self._level + (now - self._last) * self._rate
        self._level = level if level < self._burst else self._burst
        self._last = now
        if self._level >= 1.0:
            self._level -= 1.0
            if self._resumed:
                self._resumed = False  # taken thanks to the pause: the window goes on
            else:
                self._limited = False
            return True
        return False

    def try_take(self) -> bool:
        """``take``, for a frame that may yet be given back (``untake``: see
        Connection.take_frame), when no window is open and the reading has not just
        resumed after a pause (take would then change those, and untake could not
        tell how to undo it); False, nothing taken, otherwise."""
        if self._limited or self._resumed:
            return False
        now = time.monotonic()
        level = self._level + (now - self._last) * self._rate
        if level > self._burst:
            level = self._burst
        self._last = now
        if level >= 1.0:
            self._level = level - 1.0
            return True
        # (Refilled as far as now: the same level as refilling later from the old one.)
        self._level = level
        return False

    def untake(self) -> None:
        """Give back the frame just taken by ``try_take``: the bucket is as if it had
        not been taken (refilling is the same whenever it is done)."""
        self._level += 1.0

    def charge(self, frames: int) -> None:
        """Count a request read as ``frames`` more frames (a heavy one): the bucket may
        go below empty, and the frames after it then wait until it has refilled."""
        self._level = max(self._level - frames, -self._burst)

    def refuse(self) -> bool:
        """Note a dropped frame: True when it opens a window (the client is to be told)."""
        opens = not self._limited
        self._limited = True
        return opens

    def retry_after(self) -> float:
        """Seconds until the next frame would be taken."""
        return max(0.0, (1.0 - self._level) / self._rate)

    def error(self) -> Error:
        """What the first frame of a window is answered with."""
        rate, burst, wait = self._rate, int(self._burst), self.retry_after()
        return Error(
            id=None,
            code=ErrorCode.RATE_LIMITED,
            message=f"too many frames: this connection may send {rate:g} per second "
            f"(bursts of {burst}; status, jobs.list and queues.list count as {HEAVY}); "
            f"this frame is dropped unanswered, and this connection "
            f"is not read from until the rate allows a frame again (in {wait:.3g}s); "
            f"each frame then read past the rate is dropped in the same way",
            details={
                "messages_per_second": rate,
                "burst": burst,
                "heavy_request_cost": HEAVY,
                "retry_after": wait,
            },
        )

    async def pause(self) -> None:
        """Wait until the bucket allows a frame again. The caller reads nothing
        meanwhile: its peer's frames fill the socket buffers, then its sends block."""
        await asyncio.sleep(self.retry_after())
        # A timer may fire a hair early: the next frame read is let through anyway,
        # so that frames are taken in the order sent, one after each pause.
        self._refill()
        self._level = max(self._level, 1.0)
        self._resumed = True


class FairScheduler(Generic[K]):
    """``capacity`` slots for requests running at once, shared by owners (``K``: the
    connections). A free slot goes to the waiting owner that holds the fewest slots,
    the earliest of them on a tie; an owner's own requests start in the order it
    queued them.

    An owner holds at most ``owner_slots`` at once; its further requests wait, even
    while slots are free. A request gives its slot back when it ends, or after
    ``slice_seconds`` if it runs longer (it goes on, uncounted): a request that waits
    on something else, a drain or a slow actor, must not hold up the others for as
    long as it waits."""

    def __init__(self, capacity: int, slice_seconds: float, owner_slots: int = OWNER_SLOTS) -> None:
        self.capacity = capacity
        self.slice_seconds = slice_seconds
        self.owner_slots = owner_slots
        self._free = capacity
        self._held: dict[K, int] = {}
        self._waiting: dict[K, deque[asyncio.Future[None]]] = {}  # oldest owner first
        # Slots of running requests not yet timed: a slice only matters to a request
        # that waits, so the timer is armed when one starts to (none in the common case).
        # While a slot is free, every owner waiting holds its owner_slots.
        self._running: set[Slot[K]] = set()

    def statistics(self) -> tuple[int, int]:
        """(slots held, requests waiting for one)."""
        return self.capacity - self._free, sum(len(q) for q in self._waiting.values())

    def try_grant(self, owner: K) -> bool:
        """Grant ``owner`` a slot at once when ``ticket`` would (a slot is free, the
        owner has none of its requests waiting and holds fewer than its share): True
        then, and the caller makes its ``Slot`` without a future to wait on."""
        if self._free > 0 and owner not in self._waiting:
            held = self._held.get(owner, 0)
            if held < self.owner_slots:
                self._free -= 1
                self._held[owner] = held + 1
                return True
        return False

    def ticket(self, owner: K) -> asyncio.Future[None]:
        """A place in line for one request of ``owner``, taken at once (so the order
        is the order requests were read): done when its slot is granted."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.try_grant(owner):
            future.set_result(None)
        else:
            self._waiting.setdefault(owner, deque()).append(future)
            # Someone waits from now on: the running requests' slices start to count.
            for slot in list(self._running):
                slot.arm()
        return future

    async def run(self, owner: K, ticket: asyncio.Future[None]) -> Slot[K]:
        """Wait for ``ticket``'s slot; the returned ``Slot`` gives it back."""
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():
                self._give_back(owner)  # granted just as the wait was cancelled
            else:
                self._forget(owner, ticket)
            raise
        return Slot(self, owner)

    def drop(self, owner: K) -> None:
        """``owner`` is gone and its requests have ended: forget its place in line, and
        take back the slots granted to requests cancelled before they began."""
        for future in self._waiting.pop(owner, ()):
            future.cancel()
        unclaimed = self._held.pop(owner, 0)
        for _ in range(unclaimed):
            self._held[owner] = 1
            self._give_back(owner)

    def _grant(self, owner: K, future: asyncio.Future[None]) -> None:
        self._free -= 1
        self._held[owner] = self._held.get(owner, 0) + 1
        future.set_result(None)

    def _forget(self, owner: K, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(owner)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del self._waiting[owner]

    def _give_back(self, owner: K) -> None:
        held = self._held[owner] - 1
        if held:
            self._held[owner] = held
        else:
            del self._held[owner]
        self._free += 1
        while self._free > 0 and self._waiting:
            # The fewest slots held wins; dicts keep insertion order, so min() picks
            # the owner waiting longest among equals.
            chosen = min(self._waiting, key=lambda o: self._held.get(o, 0))
            if self._held.get(chosen, 0) >= self.owner_slots:
                return  # every owner waiting holds its share already
            queue = self._waiting[chosen]
            future = queue.popleft()
            if not queue:
                del self._waiting[chosen]
            else:
                # To the back of the line among owners with as many slots.
                self._waiting[chosen] = self._waiting.pop(chosen)
            if not future.cancelled():
                self._grant(chosen, future)


class Slot(Generic[K]):
    """A slot held by one request: ``release()`` gives it back (once), at the latest
    when the scheduler's slice has passed while another request waited."""

    __slots__ = ("_owner", "_scheduler", "_started", "_timer")

    def __init__(
        self,
        scheduler: FairScheduler[K],
        owner: K,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._scheduler: FairScheduler[K] | None = scheduler
        self._owner = owner
        # The caller may pass the running loop: Python 3.11's get_running_loop costs a
        # getpid system call.
        self._started = (loop or asyncio.get_running_loop()).time()
        self._timer: asyncio.TimerHandle | None = None
        if scheduler._waiting:
            self.arm()
        else:
            scheduler._running.add(self)

    def arm(self) -> None:
        """Give the slot back once the slice (from the request's start) has passed."""
        scheduler = self._scheduler
        if scheduler is None or self._timer is not None:
            return
        scheduler._running.discard(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(self._started + scheduler.slice_seconds, self.release)

    def release(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            if self._timer is not None:
                self._timer.cancel()
            scheduler._running.discard(self)
            scheduler._give_back(self._owner)
