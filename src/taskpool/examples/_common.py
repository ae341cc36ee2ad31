"""What the example scenarios share: how they print and how a demo watches them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from taskpool import FunctionPool

Printer = Callable[..., None]
PoolWatcher = Callable[[FunctionPool], None]


def summary(value: Any) -> Any:
    """What the seed prints for a result: a list's length, else the value."""
    return len(value) if isinstance(value, list) else value


def percent(value: float) -> str:
    """A percentage as the seed prints it (JavaScript numbers): ``33.333``, ``50``, ``0``."""
    return f"{round(value, 3):g}"


def runtime_line(start: float) -> str:
    """The seed's closing line."""
    return f"\n\nScript runtime: {time.perf_counter() - start:.3f} sec"


def no_watch(pool: FunctionPool) -> None:
    """Default watcher: nothing."""
