"""Functions the tests run as tasks.

Every one is module-level so a process worker can import it by reference
(``tests._funcs.NAME``). Tasks that must wait for the test use a :class:`taskpool.testing.Gate`
by its socket path: a Unix socket works the same from the pool's loop (inline), a worker
thread's loop (thread) and another interpreter (process). The gate's own task functions,
``wait_gate`` and ``block_gate``, are taskpool's public ones (:mod:`taskpool.testing`),
re-exported here. Side effects a test must observe across a process boundary are files
(:func:`mark`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any

import taskpool
from taskpool.testing import _FAIL, _RELEASE, block_gate, wait_gate  # noqa: F401  # re-exported

# --- plain results and errors ------------------------------------------------------------


class CustomError(Exception):
    """An exception type of the tests' own, to check the same type is raised."""


def add(a: int, b: int) -> int:
    return a + b


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


def identity(x: Any) -> Any:
    return x


async def async_identity(x: Any) -> Any:
    await asyncio.sleep(0)
    return x


def square(x: int) -> int:
    return x * x


async def async_square(x: int) -> int:
    await asyncio.sleep(0)
    return x * x


def fail(message: str) -> None:
    raise ValueError(message)


async def async_fail(message: str) -> None:
    await asyncio.sleep(0)
    raise CustomError(message)


def fail_on(bad: int, x: int) -> int:
    """``x``, or ``ValueError`` when ``x == bad`` (for map failure tests)."""
    if x == bad:
        raise ValueError(f"bad input {x}")
    return x


def with_kwargs(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def where() -> tuple[str, int]:
    """The thread name and process id the task runs in."""
    return threading.current_thread().name, os.getpid()


# --- publishing from inside a task ---------------------------------------------------------


def publish_sync(topic: str, data: Any) -> str:
    taskpool.publish(topic, data)
    return "published"


async def publish_async(topic: str, data: Any) -> str:
    await asyncio.sleep(0)
    taskpool.publish(topic, data)
    await asyncio.sleep(0)
    return "published"


# --- gates: tasks that wait until the test lets them go -----------------------------------
# wait_gate and block_gate are taskpool.testing's (imported above): a process worker imports
# them from there. These build on them.


def mark(path: str) -> None:
    """Leave a side effect the test can check from any process: create ``path``."""
    with open(path, "w") as f:
        f.write("ran")


async def wait_gate_then_mark(path: str, tag: str, marker: str) -> str:
    """Wait at the gate, then :func:`mark`: the mark proves the work went past the await."""
    await wait_gate(path, tag)
    mark(marker)
    return tag


async def sleep_then_mark(seconds: float, marker: str) -> None:
    """Sleep (the work itself, for timeout tests), then :func:`mark`."""
    await asyncio.sleep(seconds)
    mark(marker)


# --- killing the worker ------------------------------------------------------------------

#: Set by the tests' conftest (and inherited by worker processes): tells a task whether it
#: runs in the test process itself (inline, thread) or in a worker process.
PARENT_PID_ENV = "TASKPOOL_TESTS_PARENT_PID"


async def crash_worker(code: int = 3) -> None:
    """End the worker running this task: its process (``os._exit``), or its thread.

    A thread worker dies the way a broken one would: its event loop stops under the
    running task (a task's own SystemExit is only that task's failure, on every kind).
    """
    if os.environ.get(PARENT_PID_ENV) != str(os.getpid()):
        os._exit(code)
    asyncio.get_running_loop().stop()
    await asyncio.Event().wait()


# --- thread-only helpers (objects that cannot cross a process boundary) -------------------


def block_on_event(event: threading.Event, started: threading.Event | None = None) -> str:
    """Block the worker thread until the test sets ``event`` (never interruptible)."""
    if started is not None:
        started.set()
    event.wait()
    return "unblocked"


# --- inline-only helpers (they hold the pool itself) ---------------------------------------


async def spawn(pool: taskpool.FunctionPool, n: int) -> list[int]:
    """An orchestrating task (the seed pattern): add ``n`` tasks to its own pool, await them."""
    tasks = [pool.add_task(async_add, i, 1) for i in range(n)]
    return [await t for t in tasks]


# --- issue 12: retries and map(return_exceptions=) -----------------------------------------


async def crash_once(marker: str, result: str) -> str:
    """Crash the worker (see :func:`crash_worker`) the first time, leaving ``marker``;
    return ``result`` when run again."""
    if not os.path.exists(marker):
        mark(marker)
        await crash_worker(3)
    return result


async def slow_once(marker: str, seconds: float) -> str:
    """Sleep ``seconds`` the first time (leaving ``marker``), return ``"quick"`` after."""
    if not os.path.exists(marker):
        mark(marker)
        await asyncio.sleep(seconds)
    return "quick"


def fail_on_multiple_of_3(x: int) -> int:
    """``x``, or ValueError(x) for a multiple of 3."""
    if x % 3 == 0:
        raise ValueError(x)
    return x


async def async_fail_on_multiple_of_3(x: int) -> int:
    """The coroutine version of :func:`fail_on_multiple_of_3`."""
    await asyncio.sleep(0)
    return fail_on_multiple_of_3(x)


def exit_on_3(x: int) -> int:
    """``x``, but ``sys.exit(4)`` for 3 (a BaseException from one item of a map)."""
    if x == 3:
        sys.exit(4)
    return x


async def async_cancel_on_3(x: int) -> int:
    """``x``, but the call's own ``CancelledError`` for 3 (not a cancellation from outside)."""
    await asyncio.sleep(0)
    if x == 3:
        raise asyncio.CancelledError("its own")
    return x


def lock_on(bad: int, x: int) -> Any:
    """``x``, but a ``threading.Lock`` (which does not pickle) for ``bad``."""
    return threading.Lock() if x == bad else x
