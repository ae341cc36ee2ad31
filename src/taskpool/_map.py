"""``map``: a function over any ``submit``, streaming results with bounded work in flight."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._task import Task

__all__ = ["map_tasks"]


async def map_tasks(
    submit: Callable[[Callable[..., Any], Any], Awaitable[Task[Any]]],
    fn: Callable[..., Any],
    iterable: Iterable[Any] | AsyncIterable[Any],
    *,
    ordered: bool,
    window: int,
) -> AsyncIterator[Any]:
    """Yield ``fn(item)`` for each item, submitted with ``submit(fn, item)``.

    The input is consumed lazily with at most ``window`` tasks in flight. Results come
    in input order (``ordered``) or as they finish. A failure raises as soon as it
    happens (in ordered mode too, ahead of earlier items still running) and cancels the
    tasks still in flight; so does closing the iterator early.
    """
    inflight: collections.deque[Task[Any]] = collections.deque()
    ready: collections.deque[Task[Any]] = collections.deque()  # settled, not yet yielded
    failed: list[Task[Any]] = []  # the first task that failed (either mode fails fast)
    waiter: list[asyncio.Future[None] | None] = [None]

    def on_done(t: Task[Any]) -> None:
        if t.exception() is not None and not failed:
            failed.append(t)
        if not ordered:
            ready.append(t)
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
    exhausted = False
    try:
        while True:
            while not exhausted and len(inflight) < window and not failed:
                try:
                    item = next(it) if it is not None else await anext(aiter_)  # type: ignore[arg-type]
                except (StopIteration, StopAsyncIteration):
                    exhausted = True
                    break
                task = await submit(fn, item)
                inflight.append(task)
                task.add_done_callback(on_done)
            if failed:
                # Any failure ends the map at once, even behind unfinished earlier items.
                inflight.remove(failed[0])
                failed[0].result()
            if not inflight:
                return
            if ordered:
                head = inflight[0]
                while not head.done() and not failed:
                    await wait_for_news()
                if failed:
                    continue
                inflight.popleft()
                yield head.result()
            else:
                while not ready:
                    await wait_for_news()
                done = ready.popleft()
                if done in inflight:
                    inflight.remove(done)
                    yield done.result()
    finally:
        for t in inflight:
            t.cancel()
