"""``map``: a function over any ``submit``, streaming results with bounded work in flight,
items sent one per task or in chunks (one task and one frame per chunk)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import sys
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sized
from typing import TYPE_CHECKING, Any

from ._chunks import ItemFailed, run_chunk, run_chunk_async, run_chunk_settled, run_chunk_settled_async
from ._errors import SerializationError
from ._options import check_callable, check_count
from ._progress import Progress
from ._wire import is_async_callable

if TYPE_CHECKING:
    from ._task import Task

__all__ = ["CHUNK_TARGET", "MAX_CHUNK", "TINY_CALL", "map_tasks", "start_map", "unsent"]

#: A plain call shorter than this (seconds, in the worker) is tiny: a task's own cost
#: dominates it, and "auto" starts sending such calls in chunks.
TINY_CALL = 0.0001
#: Seconds of work an "auto" chunk aims at.
CHUNK_TARGET = 0.005
#: The most items in one chunk.
MAX_CHUNK = 1024


async def map_tasks(
    submit: Callable[[Callable[..., Any], Any], Awaitable[Task[Any]]],
    fn: Callable[..., Any],
    iterable: Iterable[Any] | AsyncIterable[Any],
    *,
    ordered: bool,
    window: int,
    chunksize: int | None = 1,
    progress: Progress | None = None,
    close_progress: bool = False,
    return_exceptions: bool = False,
) -> AsyncIterator[Any]:
    """Yield ``fn(item)`` for each item, submitted with ``submit(fn, item)``.

    The input is consumed lazily with at most ``window`` tasks in flight. Results come
    in input order (``ordered``) or as they finish. A failure raises as soon as it
    happens (in ordered mode too, ahead of earlier items still running) and cancels the
    tasks still in flight; so does closing the iterator early.

    ``chunksize``: items per task (``submit(partial(run_chunk, fn), items)``: one task,
    one frame for the whole chunk), or ``None`` for "auto": one item per task, until the
    calls of a plain function are measured to be tiny (under :data:`TINY_CALL` seconds in
    the worker, where a task's own cost dominates); then as many per task as run about
    :data:`CHUNK_TARGET` seconds (at most :data:`MAX_CHUNK`). Coroutine functions are
    never chunked by "auto": their calls wait on I/O, and a chunk would serialise them.

    ``progress`` is advanced by each task's item count as it settles (a failed chunk
    counts all its items failed; a task cancelled by the map's end is not counted), and
    closed when the map ends if ``close_progress``.

    ``return_exceptions``: a failure is yielded as its exception, in its place, and the
    map goes on (a chunk runs every item, each failure in its own place; one that could
    not be sent goes again an item per task, each counted as it settles; a chunk lost as
    a whole, to a crashed worker say, gives its exception for each of its items).
    """
    # (task, items (0: unchunked), the chunk's items when failures are values, else None)
    inflight: collections.deque[tuple[Task[Any], int, tuple[Any, ...] | None]] = collections.deque()
    ready: collections.deque[tuple[Task[Any], int, tuple[Any, ...] | None]] = collections.deque()  # settled
    failed: list[Task[Any]] = []  # the first task that failed (either mode fails fast)
    waiter: list[asyncio.Future[None] | None] = [None]
    is_async = is_async_callable(fn)
    auto = chunksize is None and not is_async
    size = 1 if chunksize is None else chunksize
    chunk_fn: Callable[..., Any] | None = None  # made on first use: one object per map

    def on_done(t: Task[Any], n: int, chunk: tuple[Any, ...] | None) -> None:
        nonlocal size
        exc = t.exception()
        if progress is not None and not t.cancelled() and not (chunk is not None and unsent(t)):
            if exc is None and n and return_exceptions:
                bad = sum(type(v) is ItemFailed for v in t.result())
                progress.advance(n - bad)
                if bad:
                    progress.advance(bad, failed=True)
            else:
                progress.advance(n or 1, failed=exc is not None)
        if exc is not None:
            if not failed and not return_exceptions:
                failed.append(t)
        elif auto and t.started_at is not None and t.finished_at is not None:
            per_item = (t.finished_at - t.started_at) / max(n, 1)
            if per_item < TINY_CALL:
                size = MAX_CHUNK if per_item <= 0 else max(1, min(MAX_CHUNK, int(CHUNK_TARGET / per_item)))
            else:
                size = 1
        if not ordered:
            ready.append((t, n, chunk))
        w = waiter[0]
        if w is not None and not w.done():
            w.set_result(None)

    async def wait_for_news() -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter[0] = fut
        try:
            await fut
        finally:
            waiter[0] = None

    if isinstance(iterable, AsyncIterable):
        aiter_: AsyncIterator[Any] | None = aiter(iterable)
        it = None
    else:
        it = iter(iterable)
        aiter_ = None

    async def pull(k: int) -> list[Any]:
        items: list[Any] = []
        try:
            while len(items) < k:
                items.append(next(it) if it is not None else await anext(aiter_))  # type: ignore[arg-type]
        except (StopIteration, StopAsyncIteration):
            pass
        return items

    exhausted = False
    try:
        while True:
            while not exhausted and len(inflight) < window and not failed:
                k = size
                items = await pull(k)
                if len(items) < k:
                    exhausted = True
                if not items:
                    break
                chunk: tuple[Any, ...] | None = None
                if k == 1:
                    task = await submit(fn, items[0])
                    n = 0
                else:
                    if chunk_fn is None:
                        if return_exceptions:
                            runner: Any = run_chunk_settled_async if is_async else run_chunk_settled
                        else:
                            runner = run_chunk_async if is_async else run_chunk
                        chunk_fn = functools.partial(runner, fn)
                    whole = tuple(items)
                    task = await submit(chunk_fn, whole)
                    n = len(items)
                    if return_exceptions:
                        chunk = whole  # (kept until yielded: see unsent below)
                inflight.append((task, n, chunk))
                task.add_done_callback(functools.partial(on_done, n=n, chunk=chunk))
            if failed:
                # Any failure ends the map at once, even behind unfinished earlier items.
                for entry in inflight:
                    if entry[0] is failed[0]:
                        inflight.remove(entry)
                        break
                failed[0].result()
            if not inflight:
                return
            if ordered:
                head, n, chunk = inflight[0]
                while not head.done() and not failed:
                    await wait_for_news()
                if failed:
                    continue
                inflight.popleft()
            else:
                while not ready:
                    await wait_for_news()
                entry = ready.popleft()
                if entry not in inflight:
                    continue
                inflight.remove(entry)
                head, n, chunk = entry
            if not return_exceptions:
                for value in head.result() if n else (head.result(),):
                    yield value
            elif chunk is not None and unsent(head):
                # Nothing of it ran: its items go one by one, each failing in its own place.
                split: list[Task[Any]] = []
                try:
                    for item in chunk:
                        split.append(await submit(fn, item))  # noqa: PERF401 (each, as added: see finally)
                    for task in split:
                        with contextlib.suppress(Exception):  # (its failure is yielded)
                            await task
                        if progress is not None:  # (counted here, not as its chunk)
                            progress.advance(1, failed=task.exception() is not None)
                        yield _values(task, 0)[0]
                finally:
                    for task in split:
                        task.cancel()  # (the map was closed or cancelled meanwhile)
            else:
                for value in _values(head, n):
                    yield value
    finally:
        for t, _, _ in inflight:
            t.cancel()
        if close_progress and progress is not None:
            progress.close()


def unsent(task: Task[Any]) -> bool:
    """Whether ``task`` failed because the pool could not send it (an argument that does
    not pickle, a message over ``max_message_size``): it never ran."""
    exc = task.exception()
    return task.started_at is None and isinstance(exc, SerializationError) and not str(exc).startswith("cannot receive")


def _values(task: Task[Any], n: int) -> list[Any]:
    """A settled task's values for ``return_exceptions``: failures as their exceptions."""
    exc = task.exception()
    if exc is not None:
        return [exc] * (n or 1)
    if not n:
        return [task.result()]
    return [v.exception() if type(v) is ItemFailed else v for v in task.result()]


def start_map(
    submit: Callable[[Callable[..., Any], Any], Awaitable[Task[Any]]],
    fn: Callable[..., Any],
    iterable: Iterable[Any] | AsyncIterable[Any],
    *,
    pool_size: int,
    recycles_by_count: bool = False,
    ordered: bool,
    window: int | None,
    chunksize: int | str,
    return_exceptions: bool,
    progress: bool | Progress,
) -> AsyncIterator[Any]:
    """Check ``FunctionPool.map``'s arguments, set up its progress line, and start it.

    Raises:
        TypeError: ``fn`` is not callable, ``iterable`` is not iterable, or ``progress``
            is neither a bool nor a ``Progress``.
        ValueError: ``window`` < 1, or ``chunksize`` neither ``"auto"`` nor an int >= 1.
    """
    check_callable("map()", fn)
    if not isinstance(iterable, (Iterable, AsyncIterable)):
        raise TypeError(f"map() needs an iterable or async iterable, got {type(iterable).__name__}")
    # A pool replacing workers after N tasks counts a chunk as one: "auto" would let a
    # worker run thousands of calls before it is replaced, so it sends one item per task.
    size: int | None = 1 if recycles_by_count else None
    if chunksize != "auto":
        if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
            raise ValueError(f"chunksize must be 'auto' or an int >= 1, got {chunksize!r}")
        size = chunksize
    if not isinstance(progress, (bool, Progress)):
        raise TypeError(f"progress must be a bool or a Progress, got {type(progress).__name__}")
    known = _length(iterable) if progress is not False else None
    bar: Progress | None = None
    if isinstance(progress, Progress):
        bar = progress
        if known is not None:
            bar.total = (bar.total or 0) + known
    elif progress and sys.stderr is not None:  # (no console at all: nothing to show)
        name = getattr(fn, "__name__", None)
        bar = Progress(known, label=name if isinstance(name, str) else "map")
        if not bar.enabled:
            bar = None  # not a terminal: nothing to show, nothing to count
    return map_tasks(
        submit,
        fn,
        iterable,
        ordered=ordered,
        window=check_count("window", window) or 2 * pool_size,
        chunksize=size,
        progress=bar,
        close_progress=bar is not progress,
        return_exceptions=bool(return_exceptions),
    )


def _length(iterable: object) -> int | None:
    """The input's length for a progress bar, if it tells one cheaply; never an error.

    Asked only when progress is shown: a map must not call ``len()`` on an input it reads
    lazily (``range(10**20)`` has no ``len()``, some objects decline to count).
    """
    if not isinstance(iterable, Sized):
        return None
    try:
        return len(iterable)
    except (TypeError, ValueError, OverflowError):
        return None
