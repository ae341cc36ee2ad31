"""A module for persistent workers: state, plain and async functions, order, crashes, timeouts.

Importing it has a top-level side effect: when ``$TASKPOOL_TEST_IMPORT_LOG`` names a
file, a line ``<pid> <thread id>`` is appended to it. The tests use that to see where
(and how often) the module's code ran.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading

from tests import _funcs

IMPORT_LOG = "TASKPOOL_TEST_IMPORT_LOG"

_path = os.environ.get(IMPORT_LOG)
if _path:
    with open(_path, "a", encoding="utf-8") as _f:
        _f.write(f"{os.getpid()} {threading.get_ident()}\n")

counter = 0
label = "stateful"
journal: list[str] = []


@dataclasses.dataclass
class Point:
    """A dataclass (with string annotations): it needs its module in ``sys.modules``."""

    x: int
    y: int = 0


def add(a: int, b: int) -> int:
    """``a + b``, counting the call."""
    global counter
    counter += 1
    return a + b


async def async_add(a: int, b: int) -> int:
    """``a + b`` after a yield to the loop, counting the call."""
    global counter
    await asyncio.sleep(0)
    counter += 1
    return a + b


def state() -> int:
    return counter


def set_label(value: str) -> str:
    global label
    label = value
    return label


def options(a: int, *, b: int = 0, c: str = "") -> list[object]:
    """Echo positional and keyword arguments."""
    return [a, b, c]


def point(x: int, y: int) -> Point:
    return Point(x, y)


async def record(i: int) -> int:
    """Log entering and leaving, with yields to the loop in between (shows overlap if any)."""
    journal.append(f"enter {i}")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    journal.append(f"exit {i}")
    return i


def record_sync(i: int) -> int:
    journal.append(f"enter {i}")
    journal.append(f"exit {i}")
    return i


def log() -> list[str]:
    return list(journal)


def where() -> list[int]:
    """[pid, thread id] of the worker running the call."""
    return [os.getpid(), threading.get_ident()]


def crash(code: int = 3) -> None:
    """End the worker process at once (process workers only)."""
    os._exit(code)


async def wait_gate(path: str, tag: str) -> str:
    """Wait (cancellably) at the test's gate."""
    return await _funcs.wait_gate(path, tag)  # type: ignore[no-any-return]


def block_gate(path: str, tag: str) -> str:
    """Wait at the test's gate, blocking: no one can interrupt it."""
    return _funcs.block_gate(path, tag)  # type: ignore[no-any-return]


def block_gate_twice(path: str, tag: str) -> str:
    """Block at the gate as ``tag``, then arrive again as ``tag + "-after"``: the second
    arrival shows the call went on after it was released (even if it timed out)."""
    _funcs.block_gate(path, tag)
    return _funcs.block_gate(path, tag + "-after")  # type: ignore[no-any-return]


def fail(message: str) -> None:
    raise ValueError(message)
