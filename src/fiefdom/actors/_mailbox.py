"""A bounded single-consumer mailbox. Tells are stored as the bare message and asks
as an ``_Ask`` envelope, so the hot path of a tell allocates nothing of its own.
An ask whose deadline passes while queued is removed in O(1) by leaving a tombstone
that the consumer skips; tombstones do not count against the capacity."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final

from .._errors import ActorStopped
from ._envelope import DONE, Ask


class MailboxClosed(ActorStopped):
    """Raised by a put on a closed mailbox: the message was not taken. A domain
    catches it to route the message to the key's next activation instead."""


class _Empty:
    __slots__ = ()


EMPTY: Final = _Empty()


class Mailbox:
    """Bounded FIFO with back-pressure for writers and one reader."""

    __slots__ = ("_capacity", "_closed", "_getter", "_items", "_path", "_putters", "_size")

    def __init__(self, capacity: int, path: str) -> None:
        if capacity < 1:
            raise ValueError(f"mailbox capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._path = path
        self._items: deque[object] = deque()
        self._size = 0  # live items: the deque may also hold tombstoned asks
        self._getter: asyncio.Future[None] | None = None
        # Made by the first writer that has to wait: most mailboxes never fill up.
        self._putters: deque[asyncio.Future[None]] | None = None
        self._closed: str | None = None

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def depth(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def put_nowait(self, item: object) -> bool:
        """Append ``item``; False when full. Raises MailboxClosed (an ActorStopped) when closed."""
        if self._closed is not None:
            raise MailboxClosed(self._path, self._closed)
        if self._size >= self._capacity:
            return False
        self._items.append(item)
        self._size += 1
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)
        return True

    async def put(self, item: object) -> None:
        """Append ``item``, waiting for space (back-pressure)."""
        while not self.put_nowait(item):
            waiter = asyncio.get_running_loop().create_future()
            if self._putters is None:
                self._putters = deque()
            self._putters.append(waiter)
            try:
                await waiter
            except BaseException:
                # Pass our wake-up on so a freed slot is not lost with us.
                if waiter.done() and not waiter.cancelled():
                    self._wake_putter()
                raise

    def reader_idle(self) -> bool:
        """The reader is waiting on an empty mailbox: the next item is taken at once."""
        getter = self._getter  # a cancelled reader leaves a cancelled (done) getter
        return getter is not None and not getter.done() and self._size == 0

    def queued_asks(self) -> list[Ask]:
        """The asks still queued (not removed by a deadline)."""
        return [i for i in self._items if type(i) is Ask and i.state != DONE]

    def get_nowait(self) -> object:
        """The next live item, or EMPTY."""
        items = self._items
        while items:
            item = items.popleft()
            if type(item) is Ask and item.state == DONE:
                continue  # removed by its deadline or its caller
            self._size -= 1
            if self._putters:
                self._wake_putter()
            return item
        return EMPTY

    def waiter(self, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[None] | None:
        """None when an item is available; else a future that completes when one may
        be, or when ``wake()`` is called. (The reader may pass the running loop: Python
        3.11's get_running_loop costs a getpid system call.)"""
        if self._size:
            return None
        getter: asyncio.Future[None] = (loop or asyncio.get_running_loop()).create_future()
        self._getter = getter
        return getter

    def wake(self) -> None:
        """Wake the reader without an item (a stop or restart request)."""
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)

    def discard(self, ask: Ask) -> None:
        """Remove a queued ask (its deadline passed or its caller gave up); the caller
        has set its state to DONE, which makes it a tombstone."""
        self._size -= 1
        if self._putters:
            self._wake_putter()
        if len(self._items) > 2 * self._capacity:
            # Tombstones of a stuck actor must not grow without bound.
            self._items = deque(i for i in self._items if not (type(i) is Ask and i.state == DONE))

    def close(self, reason: str) -> None:
        """Refuse further puts; writers waiting for space get MailboxClosed."""
        if self._closed is None:
            self._closed = reason
        while self._putters:
            waiter = self._putters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the woken putter retries and sees the close
        self.wake()

    def reopen(self) -> None:
        self._closed = None

    def drain(self) -> list[object]:
        """Remove and return every live item (used when the actor is gone for good)."""
        out: list[object] = []
        while (item := self.get_nowait()) is not EMPTY:
            out.append(item)
        return out

    def _wake_putter(self) -> None:
        while self._putters:
            waiter = self._putters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
