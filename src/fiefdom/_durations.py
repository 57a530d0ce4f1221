"""Durations counted the way a Prometheus histogram exposes them, for the metrics the
library keeps itself (the store pool's acquire times, the job engine's claim and
outcome-write times): how many, their sum, and cumulative counts per upper bound."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec


class StoreTimes(msgspec.Struct, frozen=True, kw_only=True):
    """How long store operations took (an engine's claims or outcome writes, a pool's
    acquires), as a Prometheus histogram counts them: ``buckets[i]`` is how many took
    at most ``bounds[i]`` seconds."""

    count: int
    seconds: float
    bounds: tuple[float, ...]
    buckets: tuple[int, ...]


class Durations:
    """A count of durations, their sum, and ``buckets[i]`` counting those that took
    at most ``bounds[i]`` seconds (each bucket holds every smaller one: cumulative)."""

    __slots__ = ("bounds", "buckets", "count", "seconds")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * len(self.bounds)

    def snapshot(self) -> StoreTimes:
        return StoreTimes(
            count=self.count, seconds=self.seconds, bounds=self.bounds, buckets=tuple(self.buckets)
        )

    def observe(self, took: float) -> None:
        self.count += 1
        self.seconds += took
        buckets = self.buckets
        for i, bound in enumerate(self.bounds):
            if took <= bound:
                buckets[i] += 1
