"""``Executor.map``: every item taken at call time, fed to the pool in chunks, results
handed back in order, in batches::

    caller: map(fn, *iterables) ── items = list(zip(*iterables)) ──► MapJob (through the
            bridge's batches, after what was submitted before)
    loop:   MapJob.fill(): at most `window` tasks in flight, each one item (fn, args) or a
            chunk (partial(run_items, fn), items: one task, one frame for the chunk);
            a task settles ──► its results, in input order ──► ready (one lock, one notify)
    caller: for value in iterate(job): a batch at a time, each value dropped as yielded

``chunksize=1`` (the default) is a hint, not a rule: one item per task until calls are
measured tiny (a task's own cost dominates them), then chunks of about ``CHUNK_TARGET``
seconds of work; a bigger ``chunksize`` is used as given. A coroutine function is never
chunked. Whatever the chunking, the results are the same: in order, a failure raised at
its own position after the results before it, ``TimeoutError`` per ``timeout`` counted
from the call, and closing the iterator early withdraws every call not started.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._chunks import ItemFailed
from ._errors import QueueFull, TaskCancelled
from ._executor import LIVENESS_POLL, withdraw_all
from ._executor_calls import DONE_ATTR, run_items, run_star_items
from ._executor_errors import cancelled_error
from ._loop import in_asyncio, out_of_asyncio
from ._map import CHUNK_TARGET, TINY_CALL, unsent
from ._wire import is_async_callable

if TYPE_CHECKING:
    from ._executor import Bridge
    from ._task import Task

__all__ = ["MapJob", "iterate"]

#: The most items in one chunk. Larger than ``pool.map``'s: an executor's process
#: workers hold no prefetched call (see taskpool._executor_owned), so each chunk costs a
#: round trip of idle worker; a bigger chunk of tiny calls pays it less often.
MAX_CHUNK = 4096
#: Seconds before a map held up by a full queue (``max_queue``) tries again.
QUEUE_FULL_RETRY = 0.01

_Entry = tuple[list[Any], BaseException | None]  # results in order; then the failure, if any


class MapJob:
    """The loop side of one ``map`` (and the handover its caller reads from).

    Args:
        bridge: the executor's bridge to its pool.
        fn: the function.
        items: the arguments: single items, or tuples of them when ``star``.
        star: call ``fn(*item)`` rather than ``fn(item)``.
        chunksize: 1 for chunks sized by measurement, else the chunk size.
        window: tasks of this map in the pool at once, at most.
    """

    def __init__(
        self, bridge: Bridge, fn: Callable[..., Any], items: list[Any], *, star: bool, chunksize: int, window: int
    ) -> None:
        self.bridge = bridge
        self.fn = fn
        self.items: list[Any] = items
        self.n = len(items)
        self.star = star
        is_async = is_async_callable(fn)
        self.size = 1 if is_async else chunksize
        # (max_tasks_per_child counts tasks: chunks made by measurement would let a worker
        # run far more calls than that before it is replaced; cf's chunksize=1 never does.)
        self.auto = chunksize == 1 and not is_async and bridge.core.options.max_tasks_per_worker is None
        self.chunk_fn: Callable[..., Any] | None = (
            None if is_async else functools.partial(run_star_items if star else run_items, fn)
        )
        self.window = window
        self.next = 0  # the next item to submit
        self.emit = 0  # the next item to hand over
        # task -> (first item, items (0: one, unchunked), the chunk's items or None)
        self.inflight: dict[Task[Any], tuple[int, int, tuple[Any, ...] | None]] = {}
        self.settled: dict[int, _Entry] = {}  # by first item: settled, not handed over yet
        self.stopped: BaseException | None = None  # why nothing more is submitted
        self.finished = False  # the last entry was handed over (or nobody reads any more)
        self._retry_pending = False
        # Shared with the caller's thread, under `cond`.
        self.cond = threading.Condition(threading.Lock())
        self.ready: collections.deque[_Entry] = collections.deque()
        self.end = False  # no entry will follow those in `ready`
        self.complete = False  # every result was handed over (nothing to cancel at the end)

    # --- loop side -------------------------------------------------------------------------

    def start(self) -> None:
        """Begin submitting (the bridge calls it on the loop, in submission order)."""
        self.fill()
        self._maybe_end()

    def fill(self) -> None:
        """Submit items while the window has room."""
        core = self.bridge.core
        inflight = self.inflight
        items = self.items
        while self.stopped is None and self.next < self.n and len(inflight) < self.window:
            start = self.next
            size = self.size
            try:
                chunk: tuple[Any, ...] | None = None
                if size == 1:
                    task = self._add_item(items[start])
                    count, taken = 0, 1
                else:
                    chunk = tuple(items[start : start + size])
                    task = core.add(self.chunk_fn, (chunk,), None, None)  # type: ignore[arg-type]
                    count = taken = len(chunk)
            except QueueFull:
                if not inflight and not self._retry_pending:  # nothing of ours settles to retry
                    self._retry_pending = True
                    self.bridge.loop.call_later(QUEUE_FULL_RETRY, self._retry)
                return
            except BaseException as exc:
                self.stopped = self.bridge.style.translate(exc)
                break
            self.next = start + taken
            inflight[task] = (start, count, chunk)
            task.add_done_callback(self._done)
        if self.next >= self.n:
            self.items = []  # all submitted: the tasks hold what they need
        if self.stopped is not None:
            self._hand_over()

    def _retry(self) -> None:
        self._retry_pending = False
        token = in_asyncio()
        try:
            self.fill()
        finally:
            out_of_asyncio(token)
        self._maybe_end()

    def _done(self, task: Task[Any]) -> None:
        start, count, chunk = self.inflight.pop(task)
        if not self.finished:
            exc = task.exception()
            if exc is not None and chunk is not None and unsent(task):
                self._split(start, chunk)  # nothing of it ran: its items go one by one
            elif exc is None:
                value = task.result()
                values: list[Any] = value if count else [value]
                if self.auto:
                    self._adapt(task, count or 1)
                if count and values and type(values[-1]) is ItemFailed:
                    # A result the worker could not send: the list ends with why, there.
                    unsent_result = values.pop()
                    self._failed_at(start, values, self.bridge.style.translate(unsent_result.exception()))
                else:
                    self.settled[start] = (values, None)
            else:
                done: list[Any] = []
                if count:
                    done = getattr(exc, DONE_ATTR, None) or []
                    try:
                        delattr(exc, DONE_ATTR)
                    except AttributeError:
                        pass
                if isinstance(exc, TaskCancelled):
                    err: BaseException = cancelled_error()
                else:
                    err = self.bridge.style.translate(exc)
                self._failed_at(start, done, err)
            self._hand_over()
            token = in_asyncio()  # (a worker's report is a loop callback, not a task)
            try:
                self.fill()
            finally:
                out_of_asyncio(token)
        self._maybe_end()

    def _split(self, start: int, chunk: tuple[Any, ...]) -> None:
        """Send a chunk that could not be sent (an item that does not pickle, a chunk over
        ``max_message_size``) again, an item per task: the items before a bad one run and
        it fails in its own place, as with ``concurrent.futures``' ``chunksize=1``."""
        for i, item in enumerate(chunk):
            try:
                task = self._add_item(item)
            except BaseException as exc:
                self._failed_at(start + i, [], self.bridge.style.translate(exc))
                return
            self.inflight[task] = (start + i, 0, None)
            task.add_done_callback(self._done)

    def _add_item(self, item: Any) -> Task[Any]:
        """One item as a task of its own (raises what ``core.add`` raises)."""
        return self.bridge.core.add(self.fn, item if self.star else (item,), None, None)

    def _failed_at(self, start: int, done: list[Any], err: BaseException) -> None:
        """The entry at ``start``: the results ``done`` before it, then ``err``; nothing
        after a failure is wanted, so nothing more is submitted."""
        self.settled[start] = (done, err)
        if self.stopped is None:
            self.stopped = err

    def _adapt(self, task: Task[Any], count: int) -> None:
        began, ended = task.started_at, task.finished_at
        if began is None or ended is None:
            return
        per_item = (ended - began) / count
        if per_item < TINY_CALL:
            self.size = MAX_CHUNK if per_item <= 0 else max(1, min(MAX_CHUNK, int(CHUNK_TARGET / per_item)))
        else:
            self.size = 1

    def _hand_over(self) -> None:
        """Move the entries now in input order to the caller's side."""
        moved: list[_Entry] = []
        settled = self.settled
        while not self.finished:
            entry = settled.pop(self.emit, None)
            if entry is None:
                if self.stopped is not None and self.emit == self.next and self.emit < self.n:
                    entry = ([], self.stopped)  # never submitted: fails with why it stopped
                else:
                    break
            moved.append(entry)
            values, err = entry
            self.emit += len(values)
            if err is not None or self.emit >= self.n:
                self.finished = True
                self.complete = err is None
        if moved or self.finished:
            with self.cond:
                self.ready.extend(moved)
                if self.finished:
                    self.end = True
                self.cond.notify_all()
        if self.finished:
            settled.clear()

    def _maybe_end(self) -> None:
        if not self.inflight and (self.finished or self.stopped is not None or self.next >= self.n):
            if not self.finished:
                self._hand_over()
            self.bridge.job_ended(self)

    def stop(self) -> list[Task[Any]]:
        """Submit nothing more (``shutdown(cancel_futures=True)``): the items not submitted
        raise ``CancelledError``. Returns the tasks in flight, for withdrawing."""
        if self.stopped is None:
            self.stopped = cancelled_error()
            self._hand_over()
            self._maybe_end()
        return list(self.inflight)

    async def abandon(self) -> None:
        """The caller stopped reading (closed the iterator, a timeout, a failure): submit
        nothing more and withdraw every call not started (running ones finish)."""
        if self.stopped is None:
            self.stopped = cancelled_error()
        self.finished = True
        with self.cond:
            self.end = True
        tasks = list(self.inflight)
        self._maybe_end()
        await withdraw_all(self.bridge.core, tasks)

    # --- the caller's side -----------------------------------------------------------------

    def take(self, deadline: float | None) -> _Entry | None:
        """The next entry (blocking until there is one, or ``deadline``); None at the end.

        Raises:
            TimeoutError: ``deadline`` (``time.monotonic()``) passed first.
            RuntimeError: the pool's loop stopped with the map unfinished, or the caller
                is that loop's own thread (the wait would block it for good).
        """
        with self.cond:
            while not self.ready:
                if self.end:
                    return None
                if self.bridge.on_loop():
                    raise RuntimeError(
                        "reading map() results on the pool's own loop thread would block that loop for good"
                    )
                wait = LIVENESS_POLL
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    wait = min(wait, remaining)
                if not self.cond.wait(wait) and not self.ready and not self.end and not self.bridge.loop.is_running():
                    raise RuntimeError("the pool's event loop stopped while map() was running")
            return self.ready.popleft()

    def close(self) -> None:
        """The caller is done reading: withdraw what has not started, unless all was read."""
        if self.complete:
            return
        bridge = self.bridge
        if bridge.on_loop():
            bridge.loop.create_task(self.abandon())
            return
        try:
            bridge.call(self.abandon())
        except RuntimeError:  # the loop is gone, and with it the map's tasks
            pass


def iterate(job: MapJob, deadline: float | None) -> Iterator[Any]:
    """Yield ``job``'s results in order (see the module docstring), raising
    ``TimeoutError`` once ``deadline`` (``time.monotonic()``, taken when ``map`` was
    called) passes first; each value is let go of as it is yielded."""
    try:
        while True:
            entry = job.take(deadline)
            if entry is None:
                return
            values, err = entry
            del entry
            values.reverse()
            while values:
                yield values.pop()
            if err is not None:
                raise err
    finally:
        job.close()


def empty() -> Iterator[Any]:
    """The iterator of a ``map`` over nothing (a generator, so it can be closed)."""
    yield from ()
