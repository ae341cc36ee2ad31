"""Waiting for a condition outside the test's reach (kernel buffers, other processes).

Not a sleep standing in for synchronisation: the condition is checked until it holds, and
the deadline only turns a hang into a readable failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psutil

from .._support import WAIT


async def poll_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout} s")
        await asyncio.sleep(0.005)


def gone(pid: int) -> bool:
    """The process ``pid`` no longer runs (a zombie nobody reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
