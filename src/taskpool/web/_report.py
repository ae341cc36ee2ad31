"""The status report every viewer shares: one JSON document per tick, and task pages.

Building a report costs O(workers), never O(tasks): counts and queue depth are the
scheduler's O(1) counters, the oldest queued task is the queue's head, and histograms
and failures come from the pool's :class:`~taskpool._recorder.Recorder`. A report is
rebuilt at most once per ``tick``; every viewer (page, SSE clients, ``/status`` pollers,
``taskpool top``) reads the same bytes. ``seq`` grows only when the content changed,
so it doubles as the ``/status`` ETag.
"""

from __future__ import annotations

import itertools
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from .._recorder import Recorder
from .._scheduler import FIELDS
from .._status import snapshot
from .._types import PoolState, TaskRecord, TaskState

if TYPE_CHECKING:
    from .._core import PoolCore

__all__ = ["PoolLike", "Reporter", "attach_recorder", "task_page"]

_encode = msgspec.json.Encoder(enc_hook=repr).encode


class PoolLike(Protocol):
    """What the status app needs of a pool (a ``FunctionPool``): its name and its core."""

    _core: PoolCore

    @property
    def name(self) -> str:
        """The pool's name."""
        ...


_FINAL = {"succeeded", "failed", "cancelled", "completed"}
MAX_LIMIT = 1000


_recorders: weakref.WeakKeyDictionary[PoolCore, Recorder] = weakref.WeakKeyDictionary()


def attach_recorder(core: PoolCore) -> Recorder:
    """The pool's recorder (shared by all its viewers), made when first asked for.

    It reads the scheduler's records periodically (see ``_recorder``); only a pool that
    keeps no records has the core feed it per task (``core.recorder``).
    """
    rec = _recorders.get(core)
    if rec is None:
        rec = _recorders[core] = Recorder(core.sched, alive=lambda: core.state is not PoolState.CLOSED)
        core.worker_listeners.append(rec.worker_event)
        if rec.per_task:
            core.recorder = rec
    loop = core.loop
    if loop is not None and loop.is_running() and core.state is not PoolState.CLOSED:
        rec.start(loop)
    return rec


class Reporter:
    """Builds (at most once per ``tick`` seconds) the status document of one pool."""

    def __init__(self, core: PoolCore, *, title: str | None, tick: float) -> None:
        self.core: PoolCore = core
        self.title: str = title or core.name
        self.tick: float = tick
        self.recorder: Recorder = attach_recorder(core)
        self.seq: int = 0
        self._body = b""  # the last report without its time and seq: what "changed" compares
        self._built_at = -1.0
        self._data = b"{}"

    def current(self, *, fresh: bool = False) -> tuple[int, bytes]:
        """``(seq, JSON bytes)`` of the report, rebuilt when older than a tick (or ``fresh``)."""
        now = time.monotonic()
        if fresh or now - self._built_at >= self.tick:
            self._build()
            self._built_at = now
        return self.seq, self._data

    def _build(self) -> None:
        core = self.core
        rec = attach_recorder(core)  # (re)starts its catch-up once the pool's loop runs
        snap = snapshot(core)
        now = snap.time
        doc: dict[str, Any] = msgspec.to_builtins(snap)
        doc.pop("time")
        doc["title"] = self.title
        doc["queue_oldest_age"] = round(rec.oldest_queued_age(now), 3)
        doc["rates"] = rec.rates(now)
        doc["run_seconds"] = rec.summary("run", now)
        doc["wait_seconds"] = rec.summary("wait", now)
        doc["restarts"] = dict(rec.restarts)
        doc["failures"] = list(reversed(rec.failures))
        body = _encode(doc)
        if body != self._body:
            self._body = body
            self.seq += 1
        doc["time"] = now
        doc["seq"] = self.seq
        self._data = _encode(doc)

    def health(self) -> tuple[int, bytes]:
        """``/healthz``: 200 while the pool can take work, else 503."""
        state = self.core.state
        ok = state in (PoolState.NEW, PoolState.RUNNING, PoolState.CLOSING)
        return (200 if ok else 503), _encode({"ok": ok, "state": str(state)})


def _records(core: PoolCore, field: str) -> tuple[list[TaskRecord], Iterator[TaskRecord]]:
    """The records behind a status field, oldest first: ``(bounded part, queued part)``.

    The bounded part (kept records, tasks held by workers) is a list; the queued part,
    which may hold millions, is built one record at a time, in queue (= id) order.
    """
    sched = core.sched
    core.sync_starts()
    nothing: Iterator[TaskRecord] = iter(())

    def queued() -> Iterator[TaskRecord]:
        return (t.record for t in sched.iter_queued_by_id())

    def active() -> list[TaskRecord]:
        return [t.record for s in sched.slots for t in s.inflight if not t.done()]

    if field in _FINAL:
        done = sched.records
        if field == "completed":
            return done, nothing
        state = TaskState(field)
        return [r for r in done if r.state is state], nothing
    if field == "queued":
        return [], queued()
    if field == "active":
        return active(), nothing
    if field == "remaining":
        return active(), queued()
    if field == "started":
        return [r for r in [*sched.records, *active()] if r.started_at is not None], nothing
    return [*sched.records, *active()], queued()  # total


def task_page(core: PoolCore, field: str, limit: int, after: int | None) -> bytes:
    """``/tasks``: up to ``limit`` records of ``field`` after the one with id ``after``, as JSON.

    Records come oldest first; ``next`` is the ``after`` of the following page (or null).

    Raises:
        ValueError: unknown ``field`` or a ``limit`` outside 1..1000.
    """
    if field not in FIELDS:
        raise ValueError(f"unknown state {field!r}; accepted: {', '.join(FIELDS)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_LIMIT}, got {limit}")
    bounded, queued = _records(core, field)
    records: Iterator[TaskRecord]
    if after is None:
        records = itertools.chain(bounded, queued)
    else:
        at = next((i for i, r in enumerate(bounded) if r.id == after), None)
        if at is not None:  # continue after that record, then the whole queue
            records = itertools.chain(bounded[at + 1 :], queued)
        else:  # it is queued (ids grow along the queue), or it moved on: go by id
            records = itertools.chain((r for r in bounded if r.id > after), (r for r in queued if r.id > after))
    page = list(itertools.islice(records, limit + 1))
    more = len(page) > limit
    page = page[:limit]
    out = [msgspec.to_builtins(r, enc_hook=repr) for r in page]
    for r in out:
        m = r.get("meta")
        if m is not None and not isinstance(m, (str, int, float, bool)):
            r["meta"] = str(m)
    return _encode({"tasks": out, "next": page[-1].id if more and page else None})
