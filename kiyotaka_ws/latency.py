"""Latency percentiles over a sliding window, with fixed memory and no allocation per value.

A ``Window`` is a ring of ``SLOTS`` histograms, each covering ``SLOT_SECONDS`` of recording; the
dispatcher rotates them (``rotate``, once per batch) and adds nanosecond values (``add``) on its
own thread. ``percentiles`` may be called from any thread: it copies the slots that are recent
enough (the last 50 to 60 s) and sums them; a value added meanwhile may be missed or, during a
rotation, counted in the slot it lands in, which is fine for monitoring.

Buckets are log-scale: four per octave (each octave split linearly in four, so a bucket's upper
bound is at most 1.25 times its lower bound) from 1.024 us up; smaller values (and negative ones:
a feed latency under clock skew) fall in bucket 0, values from 2**62 ns (146 years: a bogus
exchange time) in the last; 256 buckets in all.
Each percentile is reported as the upper bound of its bucket, capped by the exact maximum.

Who records what: the dispatcher adds ``feed_latency`` (``received_ns`` minus the exchange's
``time_ns``: network, exchange and service delays, and any clock difference), ``queue_delay``
(the first handler's start minus ``received_ns``) and ``handler_time`` (each handler call) on the
first event and the last point of each frame, about 0.4 us per frame in all (see ``dispatch``).
``received_ns`` is the local ``time.time_ns()`` when the reader read the frame; in a replay, the
recorded receive time; from NATS, when the batch's first point arrived. Why our own histograms
and not a library's: fixed memory, no allocation and no lock on the hot path, and a sliding
window that a monitoring read can copy from any thread.
"""

from __future__ import annotations

import time

from .status import Percentiles

SLOTS = 6
SLOT_SECONDS = 10.0
SLOT_NS = int(SLOT_SECONDS * 1e9)
BUCKETS = 64 * 4  # index = bit length * 4 + the next two bits: any value below 2**63 ns fits


def bucket(value: int) -> int:
    """The bucket index of a nanosecond value (values below 1024 ns: 0)."""
    if value < 1024:
        return 0
    if value >= 0x4000000000000000:
        return BUCKETS - 1
    bits = value.bit_length()
    return bits << 2 | (value >> (bits - 3)) & 3


def upper_bound(index: int) -> int:
    """The (exclusive) upper bound of a bucket, in nanoseconds."""
    if index == 0:
        return 1024
    if index == BUCKETS - 1:
        return 1 << 63
    bits, quarter = index >> 2, index & 3
    return (5 + quarter) << (bits - 3)


class Window:
    """A sliding-window histogram of nanosecond values (see the module notes)."""

    __slots__ = ("_counts", "_index", "_maxes", "_starts", "counts", "max")

    def __init__(self) -> None:
        self._counts = [[0] * BUCKETS for _ in range(SLOTS)]
        self._maxes = [0] * SLOTS
        self._starts = [0] * SLOTS   # time.monotonic_ns() when each slot began (0: never used)
        self._index = 0
        self.counts = self._counts[0]  # the current slot's histogram (``add`` writes here)
        self.max = 0                   # the current slot's maximum

    def rotate(self, now: int) -> None:
        """Start a new slot if the current one is ``SLOT_SECONDS`` old (``now``: monotonic ns)."""
        index = self._index
        if self._starts[index] and now - self._starts[index] < SLOT_NS:
            return
        if self._starts[index]:
            self._maxes[index] = self.max
            index = self._index = (index + 1) % SLOTS
        counts = self._counts[index] = [0] * BUCKETS  # a new list: a reader may hold the old one
        self._starts[index] = now
        self._maxes[index] = 0
        self.counts, self.max = counts, 0

    def add(self, value: int) -> None:
        """Count one nanosecond value in the current slot."""
        if value > self.max:  # noqa: PLR1730 - faster than max() on the hot path
            self.max = value
        if value < 1024:
            self.counts[0] += 1
        elif value >= 0x4000000000000000:  # 2**62 and more (a bogus exchange time): the last bucket
            self.counts[-1] += 1
        else:
            bits = value.bit_length()
            self.counts[bits << 2 | (value >> (bits - 3)) & 3] += 1

    def percentiles(self, now: int | None = None) -> Percentiles | None:
        """p50, p90, p99 and max (seconds) and the count of the last 50 to 60 s; None if empty."""
        if now is None:
            now = time.monotonic_ns()
        oldest = now - SLOTS * SLOT_NS
        total = [0] * BUCKETS
        top = 0
        current = self._index
        for i in range(SLOTS):
            start = self._starts[i]
            if not start or start <= oldest:
                continue
            counts = list(self.counts if i == current else self._counts[i])
            top = max(top, self.max if i == current else self._maxes[i])
            total = [a + b for a, b in zip(total, counts)]
        count = sum(total)
        if not count:
            return None
        marks = []
        for q in (0.50, 0.90, 0.99):
            rank, seen = q * count, 0
            for index, n in enumerate(total):
                seen += n
                if seen >= rank and n:
                    marks.append(min(upper_bound(index), max(top, 0)))
                    break
        p50, p90, p99 = (m / 1e9 for m in marks)
        return Percentiles(p50=p50, p90=p90, p99=p99, max=max(top, 0) / 1e9, count=count)
