"""What a worker runs for one chunk of ``map``: the function over several items, in order.

Module-level so that process workers import it by reference; ``map`` hands it over as
``functools.partial(run_chunk, fn)``, made once per ``map``, so a process worker receives
the function once, not with every chunk.
"""

from __future__ import annotations

import asyncio
import pickle
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from ._errors import RemoteTraceback, as_task_failed

__all__ = ["ItemFailed", "item_failed", "run_chunk", "run_chunk_async", "run_chunk_settled", "run_chunk_settled_async"]


def run_chunk(fn: Callable[[Any], Any], items: tuple[Any, ...]) -> list[Any]:
    """``[fn(item) for item in items]``; the first exception stops the chunk and is raised."""
    return [fn(item) for item in items]


async def run_chunk_async(fn: Callable[[Any], Awaitable[Any]], items: tuple[Any, ...]) -> list[Any]:
    """``[await fn(item) for item in items]``, one at a time; the first exception is raised."""
    return [await fn(item) for item in items]


class ItemFailed:
    """One item's failure inside a chunk of ``map(return_exceptions=True)``: its
    exception and the worker's formatted traceback (made the exception's ``__cause__``
    in the parent by :meth:`exception`).

    Pickled with the exception when it can be, else with a :class:`TaskFailed` carrying
    its type name, message and traceback, so one odd exception never fails its chunk.
    """

    __slots__ = ("exc", "tb")

    def __init__(self, exc: BaseException, tb: str) -> None:
        self.exc = exc
        self.tb = tb

    def __reduce__(self) -> tuple[Any, ...]:
        exc = self.exc
        try:
            pickle.loads(pickle.dumps(exc))  # noqa: S301 (our own bytes: can it come back?)
        except Exception:
            exc = as_task_failed(exc, self.tb)
        return (ItemFailed, (exc, self.tb))

    def exception(self) -> BaseException:
        """The item's exception, with the worker's traceback as its ``__cause__``."""
        exc = self.exc
        if exc.__cause__ is None:
            exc.__cause__ = RemoteTraceback(self.tb)
        return exc


def run_chunk_settled(fn: Callable[[Any], Any], items: tuple[Any, ...]) -> list[Any]:
    """``fn(item)`` for each item; an item that raises gives an :class:`ItemFailed`.

    Whatever an item raises (``SystemExit`` too) fails only that item, as a task of its
    own would: the items after it still run.
    """
    out: list[Any] = []
    for item in items:
        try:
            out.append(fn(item))
        except BaseException as exc:
            out.append(item_failed(exc))
    return out


async def run_chunk_settled_async(fn: Callable[[Any], Awaitable[Any]], items: tuple[Any, ...]) -> list[Any]:
    """``await fn(item)`` for each item, one at a time; failures as :class:`ItemFailed`.

    A cancellation of the chunk itself (a timeout, ``task.cancel()``) stops it; an item's
    own ``CancelledError``, ``SystemExit`` or anything else fails only that item.
    """
    out: list[Any] = []
    for item in items:
        try:
            out.append(await fn(item))
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and _cancelling():
                raise  # the chunk is being cancelled, not this item failing
            out.append(item_failed(exc))
    return out


def item_failed(exc: BaseException) -> ItemFailed:
    """``exc`` raised by one item, as its :class:`ItemFailed`: what an exception that is
    not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``, an own ``CancelledError``)
    becomes as a task of its own, a :class:`TaskFailed`, so it never stops the map."""
    tb = "".join(traceback.format_exception(exc))
    return ItemFailed(exc if isinstance(exc, Exception) else as_task_failed(exc, tb), tb)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
