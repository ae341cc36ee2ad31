"""Busy time per worker slot: what ``utilisation`` reports (see :class:`BusyMeter`)."""

from __future__ import annotations

import math

__all__ = ["BUCKET", "BUSY_WINDOW", "BusyMeter"]

#: Seconds of history behind ``utilisation``, kept in buckets of BUCKET seconds.
BUSY_WINDOW = 10
BUCKET = 0.25
_PER_SECOND = 4  # 1 / BUCKET


class BusyMeter:
    """Busy seconds per wall-clock second over the last :data:`BUSY_WINDOW` seconds.

    Fed with the run intervals taken in the worker; O(1) memory (one bucket per
    :data:`BUCKET` seconds) and, per task, O(buckets it spanned): usually one.
    """

    __slots__ = ("_busy", "_key", "capacity", "up_since")

    def __init__(self, capacity: int = 1) -> None:
        n = int(BUSY_WINDOW / BUCKET) + 2
        self._busy = [0.0] * n
        self._key = [-1] * n  # which bucket of wall-clock time each entry holds
        self.capacity: int = capacity  # tasks the worker runs at once
        self.up_since: float | None = None

    def add(self, start: float, end: float) -> None:
        """Count the interval ``[start, end]`` as busy."""
        if end <= start:
            return
        busy, key, n = self._busy, self._key, len(self._busy)
        k = int(start * _PER_SECOND)  # times are positive: int() floors, and is cheaper
        last = int(end * _PER_SECOND)
        if k == last:  # the common case: a call within one bucket
            i = k % n
            if key[i] != k:
                key[i] = k
                busy[i] = end - start
            else:
                busy[i] += end - start
            return
        if last - k >= n:  # longer than the window: only its end matters
            k = last - n + 1
            start = k * BUCKET
        while k <= last:
            i = k % n
            if key[i] != k:
                key[i] = k
                busy[i] = 0.0
            busy[i] += min(end, (k + 1) * BUCKET) - max(start, k * BUCKET)
            k += 1

    def utilisation(self, now: float, running_since: list[float]) -> float:
        """Busy share (0-1) of the last window, counting calls still running from ``running_since``."""
        lo = now - BUSY_WINDOW
        young = self.up_since is not None and self.up_since > lo
        if young:
            assert self.up_since is not None
            lo = self.up_since  # busy time before the worker was up is an earlier worker's
        span = now - lo
        if span <= 0:
            return 0.0
        total = 0.0
        first = math.floor(lo / BUCKET)
        for k, b in zip(self._key, self._busy, strict=True):
            if k < first or not b:
                continue
            # The bucket straddling the window's start: take its inside share.
            total += b * ((k + 1) * BUCKET - lo) / BUCKET if k == first and not young else b
        for started in running_since:
            total += now - max(started, lo)
        return max(0.0, min(1.0, total / (span * self.capacity)))
