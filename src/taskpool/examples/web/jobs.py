"""The work the web examples hand to their pools: module-level, so process workers import it.

This module imports only the standard library: each process worker imports it to find
the function a task runs, and must not pay for a web framework.
"""

from __future__ import annotations

import time

#: The largest ``n`` the examples accept for :func:`fib` (about a second of CPU).
MAX_FIB = 32


def fib(n: int) -> int:
    """The n-th Fibonacci number, the slow recursive way: CPU work for a worker.

    Raises:
        ValueError: ``n`` is negative.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def slow(seconds: float) -> float:
    """Stand-in for a slow call (a render, a report, a model): blocks ``seconds``, returns them.

    Raises:
        ValueError: ``seconds`` is negative.
    """
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    time.sleep(seconds)
    return seconds
