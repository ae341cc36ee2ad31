"""Task functions of the benchmarks.

They live at module level in a module of their own, so that every peer sends them
by reference and every worker (forked, spawned, or a fresh interpreter) can import
them. Each plain function has a coroutine twin for peers that only run coroutines
(aiomultiprocess).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def noop(*_args: object) -> None:
    """The empty task: measures pure dispatch overhead."""


async def noop_async(*_args: object) -> None:
    """The empty coroutine task."""


def getpid() -> int:
    return os.getpid()


async def getpid_async() -> int:
    return os.getpid()


def fib(n: int) -> int:
    """Pure-Python CPU work (fib(24) is about 75,000 calls, ~10 ms on CPython 3.11)."""
    return n if n < 2 else fib(n - 1) + fib(n - 2)


async def fib_async(n: int) -> int:
    return fib(n)


def echo(data: bytes) -> bytes:
    """Returns its argument: measures moving a large payload there and back."""
    return data


async def echo_async(data: bytes) -> bytes:
    return data


async def sleep_async(seconds: float) -> None:
    """An I/O-bound coroutine task."""
    await asyncio.sleep(seconds)


async def wait_event(event: asyncio.Event) -> None:
    """Blocks an inline worker until ``event`` is set (used to keep tasks queued)."""
    await event.wait()


def _register(directory: str) -> Path:
    folder = Path(directory)
    (folder / str(os.getpid())).touch()
    return folder


def barrier_pid(directory: str, parties: int, timeout: float) -> int:
    """Wait until ``parties`` distinct processes run this task, then return this pid.

    Each worker leaves a file named by its pid in ``directory``. Since the task blocks
    its worker until ``parties`` distinct pids are there, ``parties`` such tasks can
    only complete once ``parties`` workers are up and running them at the same time.
    After ``timeout`` seconds it returns anyway: the caller sees fewer distinct pids.
    """
    folder = _register(directory)
    deadline = time.monotonic() + timeout
    while len(os.listdir(folder)) < parties and time.monotonic() < deadline:
        time.sleep(0.0005)
    return os.getpid()


async def barrier_pid_async(directory: str, parties: int, timeout: float) -> int:
    """:func:`barrier_pid` for coroutine-only peers (polls without blocking the loop)."""
    folder = _register(directory)
    deadline = time.monotonic() + timeout
    while len(os.listdir(folder)) < parties and time.monotonic() < deadline:
        await asyncio.sleep(0.0005)
    return os.getpid()


#: plain function -> its coroutine twin
ASYNC_TWIN: dict[Callable[..., Any], Callable[..., Any]] = {
    noop: noop_async,
    getpid: getpid_async,
    fib: fib_async,
    echo: echo_async,
    barrier_pid: barrier_pid_async,
}
