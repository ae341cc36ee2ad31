"""What a worker runs for one chunk of ``map``: the function over several items, in order.

Module-level so that process workers import it by reference; ``map`` hands it over as
``functools.partial(run_chunk, fn)``, made once per ``map``, so a process worker receives
the function once, not with every chunk.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from ._errors import RemoteTraceback, as_task_failed

__all__ = ["ItemFailed", "run_chunk", "run_chunk_async", "run_chunk_settled", "run_chunk_settled_async"]


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
    """``fn(item)`` for each item; an item that raises gives an :class:`ItemFailed`."""
    out: list[Any] = []
    for item in items:
        try:
            out.append(fn(item))
        except Exception as exc:
            out.append(ItemFailed(exc, "".join(traceback.format_exception(exc))))
    return out


async def run_chunk_settled_async(fn: Callable[[Any], Awaitable[Any]], items: tuple[Any, ...]) -> list[Any]:
    """``await fn(item)`` for each item, one at a time; failures as :class:`ItemFailed`."""
    out: list[Any] = []
    for item in items:
        try:
            out.append(await fn(item))
        except Exception as exc:
            out.append(ItemFailed(exc, "".join(traceback.format_exception(exc))))
    return out
