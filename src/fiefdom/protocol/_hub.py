"""The event hub: job state changes, actor crashes and log events fan out to the
control channel's subscribers. Publishing never waits: each subscriber has a
bounded buffer, and what does not fit is counted and reported as dropped."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Iterable

from ._messages import LOG_LEVEL_RANK
from ._replies import EventData, LogEvent, topic_of


class Subscription:
    """One subscriber's bounded buffer of events."""

    __slots__ = ("_buffer", "_capacity", "_ready", "closed", "dropped", "id", "min_level", "topics")

    def __init__(
        self, subscription_id: int, topics: Iterable[str], min_level: int, capacity: int
    ) -> None:
        self.id = subscription_id
        self.topics = frozenset(topics)
        self.min_level = min_level
        self._buffer: deque[EventData] = deque()
        self._ready = asyncio.Event()
        self.dropped = 0
        self.closed = False
        self._capacity = capacity

    def offer(self, event: EventData) -> None:
        if self.closed:
            return
        if len(self._buffer) >= self._capacity:
            self.dropped += 1
        else:
            self._buffer.append(event)
        self._ready.set()

    async def next_batch(self) -> tuple[list[EventData], int]:
        """Wait for events; returns them with the count dropped since the last call."""
        while not self._buffer and not self.dropped:
            if self.closed:
                return [], 0
            self._ready.clear()
            await self._ready.wait()
        batch = list(self._buffer)
        self._buffer.clear()
        dropped, self.dropped = self.dropped, 0
        return batch, dropped

    def close(self) -> None:
        self.closed = True
        self._ready.set()


class EventHub:
    """Where the daemon publishes events and the control channel subscribes."""

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self._subscriptions: dict[int, Subscription] = {}
        self._ids = itertools.count(1)
        self.published = 0

    def subscribe(self, topics: Iterable[str], level: str = "info") -> Subscription:
        sub = Subscription(next(self._ids), topics, LOG_LEVEL_RANK[level], self.capacity)
        self._subscriptions[sub.id] = sub
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        self._subscriptions.pop(sub.id, None)

    @property
    def wanted(self) -> bool:
        """Whether anybody listens at all (lets publishers skip building events)."""
        return bool(self._subscriptions)

    def publish(self, event: EventData) -> None:
        if not self._subscriptions:
            return
        self.published += 1
        topic = topic_of(event)
        level = LOG_LEVEL_RANK.get(event.level, 0) if isinstance(event, LogEvent) else 0
        for sub in self._subscriptions.values():
            if topic in sub.topics and (not isinstance(event, LogEvent) or level >= sub.min_level):
                sub.offer(event)
