"""What dashboards and metrics read: histograms, rates, restarts and recent failures.

One :class:`Recorder` per pool, attached by the first viewer that asks for it (a status
app, a Prometheus collector). Its memory is fixed, whatever the number of tasks: bucket
counts, a ring of samples for rates and windowed quantiles, the last
:data:`FAILURES_KEPT` failures.

It costs the hot path nothing. The scheduler already keeps the last ``keep_records``
settled tasks as plain tuples (with their queue, start and finish times); the recorder
reads the new ones every :data:`CATCH_UP` seconds (and before each read). While at
most :data:`SAMPLE_LIMIT` tasks settle between two catch-ups (8,000 tasks/s; fewer
when ``keep_records`` is smaller) every task is counted; above that the newest ones
stand for the rest: each is counted with the weight ``settled / read``, so ``count``
stays exact while ``sum`` and the bucket shares are estimated from the latest tasks.
Failures are never sampled: each one still kept is listed. Counting each task as it
settles instead would cost ~0.3 µs per task on the loop, about a tenth of the thread
kind's whole per-task cost. With ``keep_records=0`` there is nothing to read, and the
core feeds :meth:`Recorder.settled` per task instead.

Counts by outcome, queue depth and utilisation are not duplicated here: the scheduler
already keeps them in O(1) (see ``_status``).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import itertools
import math
import time
from typing import TYPE_CHECKING, Any

from ._types import TaskState

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._scheduler import Scheduler
    from ._task import Task
    from ._types import WorkerEvent

__all__ = ["BUCKETS", "FAILURES_KEPT", "Histogram", "Recorder", "quantile", "restart_reason"]

#: Histogram bucket upper bounds, seconds (Prometheus ``le``); the last bucket is +Inf.
BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
#: Seconds between two catch-ups with the scheduler's records.
CATCH_UP = 0.25
#: Records read per catch-up at most: past this (8,000 tasks/s), the newest ones are a
#: sample that stands for the rest; reading them all would cost ~1% of a busy loop.
SAMPLE_LIMIT = 2000
#: Failures kept for the live page (newest last).
FAILURES_KEPT = 20
#: Seconds between two rate samples, and how far back the samples reach.
SAMPLE_EVERY = 0.5
SAMPLES_SPAN = 65.0
#: Rates are measured over (about) this many seconds; quantiles over QUANTILE_SPAN.
RATE_SPAN = 10.0
QUANTILE_SPAN = 60.0
_META_CUT = 200

_SUCCEEDED = TaskState.SUCCEEDED
_FAILED = TaskState.FAILED


class Histogram:
    """Counts of observed durations in :data:`BUCKETS`, with their count and sum."""

    __slots__ = ("counts", "n", "total")

    def __init__(self) -> None:
        # Floats: above keep_records per catch-up, each kept task counts for several.
        self.counts: list[float] = [0.0] * (len(BUCKETS) + 1)
        self.n: float = 0.0
        self.total: float = 0.0

    def observe(self, value: float) -> None:
        """Add one duration (seconds; a negative one, from clock skew, counts as 0)."""
        value = max(value, 0.0)
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.n += 1
        self.total += value

    def cumulative(self) -> list[float]:
        """Prometheus-style cumulative bucket counts (the last one is the total)."""
        out: list[float] = []
        acc = 0.0
        for c in self.counts:
            acc += c
            out.append(acc)
        return out


def quantile(counts: list[float], q: float) -> float | None:
    """Estimate the ``q`` quantile from per-bucket counts (linear within a bucket).

    ``None`` when there is nothing counted. Values past the last bound read as that bound.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    acc = 0.0
    for i, c in enumerate(counts):
        if c and acc + c >= rank:
            lo = BUCKETS[i - 1] if i > 0 else 0.0
            if i >= len(BUCKETS):
                return BUCKETS[-1]
            hi = BUCKETS[i]
            return lo + (hi - lo) * max(0.0, min(1.0, (rank - acc) / c))
        acc += c
    return BUCKETS[-1]


def restart_reason(reason: str | None) -> str:
    """A worker's end reason folded into a small fixed set (a bounded metric label)."""
    if not reason:
        return "other"
    r = reason.lower()
    if r in ("recycled", "retired", "stopped"):
        return r
    if "memory" in r:
        return "memory"
    if "handshake" in r or "start" in r or "initializ" in r:
        return "start_failed"
    if r.startswith("killed"):
        return "killed"
    if "exited with code" in r or "died" in r or "ended unexpectedly" in r or "crash" in r:
        return "crashed"
    return "other"


def _meta_text(meta: Any) -> str | None:
    if meta is None:
        return None
    try:
        text = meta if isinstance(meta, str) else str(meta)
    except Exception:  # a meta whose __str__ raises still shows as something
        text = f"<{type(meta).__name__}>"
    return text if len(text) <= _META_CUT else text[: _META_CUT - 1] + "…"


class Recorder:
    """Run and wait histograms, restarts by reason, rate samples and recent failures.

    Lives on the pool's loop. Histograms count tasks settled since the recorder was
    made (the first viewer attached); counts by outcome come from the pool itself.
    """

    def __init__(self, sched: Scheduler, alive: Callable[[], bool] = lambda: True) -> None:
        self.sched: Scheduler = sched
        self._alive = alive  # False once the pool closed: the periodic catch-up stops
        self.since: float = time.time()
        self.run: Histogram = Histogram()
        self.wait: Histogram = Histogram()
        self.restarts: dict[str, int] = {}
        self.failures: collections.deque[dict[str, Any]] = collections.deque(maxlen=FAILURES_KEPT)
        # (time, added, completed, failed, run bucket counts, wait bucket counts)
        self._samples: collections.deque[tuple[float, int, int, int, list[float], list[float]]] = collections.deque()
        self._seen = sched.n_completed  # settled tasks already counted (or before we came)
        self._seen_failed = sched.n_failed
        self._timer: asyncio.TimerHandle | None = None
        self.sample(self.since)

    @property
    def per_task(self) -> bool:
        """True when the core must feed :meth:`settled` (no records kept to read)."""
        return self.sched.keep_records == 0

    # --- catching up with the scheduler's records ------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Catch up every :data:`CATCH_UP` s on ``loop`` (until :meth:`stop`)."""
        if self._timer is None and not self.per_task:
            self._timer = loop.call_later(CATCH_UP, self._on_timer, loop)

    def stop(self) -> None:
        """Stop the periodic catch-up (the pool closed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self.catch_up()
        if self._alive() and not loop.is_closed():
            self._timer = loop.call_later(CATCH_UP, self._on_timer, loop)

    def catch_up(self) -> None:
        """Count the tasks settled since the last catch-up, from the scheduler's records."""
        sched = self.sched
        new = sched.n_completed - self._seen
        if new <= 0 or self.per_task:
            return
        self._seen = sched.n_completed
        new_failed = sched.n_failed - self._seen_failed
        self._seen_failed = sched.n_failed
        done = sched._done
        kept = min(new, len(done), SAMPLE_LIMIT)
        if kept == 0:
            return
        weight = new / kept
        b = bisect.bisect_left
        bounds = BUCKETS
        run, wait = self.run, self.wait
        rc, wc = run.counts, wait.counts
        run_sum = wait_sum = 0.0
        n_run = n_wait = 0
        failed: list[tuple[Any, ...]] = []
        # The newest `kept` records: (id, meta, state, worker_id, queued, started, finished, error, dispatched)
        for rec in itertools.islice(reversed(done), kept):
            started = rec[5]
            if started is not None:
                w = started - rec[4]
                wc[b(bounds, w)] += weight
                wait_sum += w
                n_wait += 1
                finished = rec[6]
                if finished is not None:
                    r = finished - started
                    rc[b(bounds, r)] += weight
                    run_sum += r
                    n_run += 1
            if rec[2] is _FAILED and len(failed) < FAILURES_KEPT:
                failed.append(rec)
        want = min(new_failed, FAILURES_KEPT)
        if len(failed) < want:  # failures older than the sample: every one is shown, not a sample
            for rec in itertools.islice(reversed(done), kept, min(new, len(done))):
                if rec[2] is _FAILED:
                    failed.append(rec)
                    if len(failed) >= want:
                        break
        run.n += n_run * weight
        run.total += run_sum * weight
        wait.n += n_wait * weight
        wait.total += wait_sum * weight
        for rec in reversed(failed):  # oldest first, so the deque ends with the newest
            self.failures.append(
                {"id": rec[0], "meta": _meta_text(rec[1]), "error": rec[7], "worker_id": rec[3], "finished_at": rec[6]}
            )

    # --- fed by the core (keep_records=0 only) ----------------------------------------------

    def settled(self, task: Task[Any], state: TaskState) -> None:
        """A task reached its final state: counted at once (used when no records are kept)."""
        started = task._started_at
        if started is not None:
            finished = task.finished_at
            if finished is not None:
                self.run.observe(finished - started)
            self.wait.observe(started - task.queued_at)
        if state is _FAILED:
            exc = task._exc
            self.failures.append(
                {
                    "id": task.id,
                    "meta": _meta_text(task.meta),
                    "error": None if exc is None else f"{type(exc).__name__}: {exc}"[:2000],
                    "worker_id": task._worker_id,
                    "finished_at": task.finished_at,
                }
            )

    def worker_event(self, event: WorkerEvent) -> None:
        """A worker listener: counts ``worker.restarted`` by reason."""
        if event.topic == "worker.restarted":
            key = restart_reason(event.reason)
            self.restarts[key] = self.restarts.get(key, 0) + 1

    # --- read by viewers --------------------------------------------------------------------

    def sample(self, now: float | None = None) -> None:
        """Take a rate sample (at most one per :data:`SAMPLE_EVERY`); viewers call it per tick."""
        now = time.time() if now is None else now
        self.catch_up()
        samples = self._samples
        if samples and now - samples[-1][0] < SAMPLE_EVERY:
            return
        sched = self.sched
        samples.append(
            (now, sched.n_total, sched.n_completed, sched.n_failed, list(self.run.counts), list(self.wait.counts))
        )
        while len(samples) > 2 and now - samples[1][0] > SAMPLES_SPAN:
            samples.popleft()

    def _back(self, now: float, span: float) -> tuple[float, int, int, int, list[float], list[float]]:
        # The newest sample at least ``span`` old, else the oldest one.
        best = self._samples[0]
        for s in self._samples:
            if now - s[0] >= span:
                best = s
            else:
                break
        return best

    def rates(self, now: float | None = None) -> dict[str, float]:
        """Tasks added, completed and failed per second over the last ~:data:`RATE_SPAN` s."""
        now = time.time() if now is None else now
        self.sample(now)
        t0, added0, done0, failed0, _, _ = self._back(now, RATE_SPAN)
        dt = now - t0
        sched = self.sched
        if dt <= 0.0:
            return {"added": 0.0, "completed": 0.0, "failed": 0.0}
        return {
            "added": round((sched.n_total - added0) / dt, 3),
            "completed": round((sched.n_completed - done0) / dt, 3),
            "failed": round((sched.n_failed - failed0) / dt, 3),
        }

    def summary(self, which: str, now: float | None = None) -> dict[str, Any]:
        """``count``/``sum`` since the recorder was made, p50/p90/p99 over the last minute."""
        now = time.time() if now is None else now
        hist = self.run if which == "run" else self.wait
        back = self._back(now, QUANTILE_SPAN)
        base = back[4] if which == "run" else back[5]
        recent = [a - b for a, b in zip(hist.counts, base, strict=True)]
        if not any(recent):  # nothing in the last minute: describe everything seen
            recent = hist.counts
        out: dict[str, Any] = {"count": round(hist.n), "sum": round(hist.total, 6)}
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            v = quantile(recent, q)
            out[name] = None if v is None or math.isnan(v) else round(v, 6)
        return out

    def oldest_queued_age(self, now: float) -> float:
        """Seconds the oldest task still in the pool's queue has waited (0.0 when none)."""
        task = self.sched.oldest_queued()  # O(1) but for settled ones it drops on the way
        return 0.0 if task is None else max(0.0, now - task.queued_at)
