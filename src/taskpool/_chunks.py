"""What a worker runs for one chunk of ``map``: the function over several items, in order.

Module-level so that process workers import it by reference; ``map`` hands it over as
``functools.partial(run_chunk, fn)``, made once per ``map``, so a process worker receives
the function once, not with every chunk.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["run_chunk", "run_chunk_async"]


def run_chunk(fn: Callable[[Any], Any], items: tuple[Any, ...]) -> list[Any]:
    """``[fn(item) for item in items]``; the first exception stops the chunk and is raised."""
    return [fn(item) for item in items]


async def run_chunk_async(fn: Callable[[Any], Awaitable[Any]], items: tuple[Any, ...]) -> list[Any]:
    """``[await fn(item) for item in items]``, one at a time; the first exception is raised."""
    return [await fn(item) for item in items]
