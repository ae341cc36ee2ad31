"""Functions process workers run in the initializer and multiprocessing tests.

Module-level, so a worker imports them by reference (``tests._mp_funcs.NAME``). What an
initializer leaves behind lives in :data:`STATE`, the worker's own copy of this module.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import signal
import sys
from logging.handlers import QueueHandler
from typing import Any

#: What the initializers did in this process (each worker has its own).
STATE: dict[str, Any] = {"inits": 0}


# --- initializers -------------------------------------------------------------------------


def record_init(tag: str) -> None:
    """Count one run of the initializer in this process."""
    STATE["inits"] += 1
    STATE["tag"] = tag


async def async_record_init(tag: str) -> None:
    """:func:`record_init`, as a coroutine that yields to the worker's loop first."""
    await asyncio.sleep(0)
    record_init(tag)
    STATE["loop_ran"] = asyncio.get_running_loop().is_running()


def put_pid(queue: Any, tag: str) -> None:
    """Count this run and put ``(pid, tag)`` on a multiprocessing queue, written before
    it returns: a process killed while its queue's feeder thread holds the queue's write
    lock leaves the queue unusable (multiprocessing's own caveat), and tests kill workers."""
    record_init(tag)
    queue.put((os.getpid(), tag))
    queue.close()
    queue.join_thread()


def signal_with(event: Any, semaphore: Any, lock: Any, counter: Any) -> None:
    """Set ``event``, release ``semaphore``, keep ``lock`` for :func:`kept_lock_is_free`
    and add one to the shared ``counter`` (a ``Value``)."""
    record_init("signals")
    STATE["lock"] = lock
    with counter.get_lock():
        counter.value += 1
    event.set()
    semaphore.release()


async def wait_then_record(started: Any, release: Any) -> None:
    """Set ``started``, then wait (without blocking the loop) until ``release`` is set."""
    started.set()
    while not release.is_set():
        await asyncio.sleep(0.005)
    record_init("late")


def block_until(release: Any) -> None:
    """A sync initializer that takes as long as the test wants (``release``: an Event)."""
    release.wait(60)
    record_init("slow")


def fail_init(log_queue: Any, logger_name: str) -> None:
    """Route ``logger_name``'s records to ``log_queue`` (as CPython's executor tests do),
    then raise."""
    logger = logging.getLogger(logger_name)
    logger.addHandler(QueueHandler(log_queue))
    logger.setLevel("CRITICAL")
    logger.propagate = False
    raise ValueError("error in initializer")


def exit_init(code: int) -> None:
    """An initializer that raises SystemExit(``code``)."""
    sys.exit(code)


def die_init(code: int) -> None:
    """An initializer that ends its process at once (no Python exit)."""
    os._exit(code)


# --- tasks --------------------------------------------------------------------------------


def init_state() -> tuple[int, int, str | None, bool]:
    """``(pid, initializer runs, its tag, whether its loop was running)`` in this worker."""
    return os.getpid(), STATE["inits"], STATE.get("tag"), bool(STATE.get("loop_ran"))


def kept_lock_is_free() -> bool:
    """Whether the lock the initializer kept can be taken now (released again at once)."""
    lock = STATE["lock"]
    if lock.acquire(block=False):
        lock.release()
        return True
    return False


def try_acquire(lock: Any) -> bool:
    """Whether ``lock`` (a multiprocessing lock) can be taken now (released again at once)."""
    if lock.acquire(block=False):
        lock.release()
        return True
    return False


def set_event(event: Any) -> bool:
    event.set()
    return True


def release(semaphore: Any) -> None:
    semaphore.release()


def set_item(mapping: Any, key: str, value: Any) -> None:
    mapping[key] = value


def worker_authkey() -> bytes:
    return bytes(multiprocessing.current_process().authkey)


def kill_self() -> None:
    """End this worker with SIGKILL."""
    os.kill(os.getpid(), signal.SIGKILL)


def exit_with(code: Any) -> None:
    sys.exit(code)


async def async_exit_with(code: Any) -> None:
    await asyncio.sleep(0)
    sys.exit(code)


def fork_lock() -> Any:
    """A lock made with the fork context, in the worker."""
    return multiprocessing.get_context("fork").Lock()


def new_queue() -> Any:
    """A spawn-context queue made in the worker."""
    return multiprocessing.get_context("spawn").Queue()


# --- objects that fail to cross -----------------------------------------------------------


class ReduceError(Exception):
    """Raised by :class:`RefusesPickle` when it is pickled."""


class LoadError(Exception):
    """Raised when a :class:`FailsToLoad` is unpickled."""


class RefusesPickle:
    """Raises ReduceError at pickling time (CPython's ``ErrorAtPickle``, with our error)."""

    def __reduce__(self) -> Any:
        raise ReduceError("refused in __reduce__")


class ErrorAtPickle:
    """Raises PicklingError at pickling time (CPython's ``ErrorAtPickle``)."""

    def __reduce__(self) -> Any:
        raise pickle.PicklingError("Error in pickle")


def _fail_loading(message: str) -> None:
    raise LoadError(message)


class FailsToLoad:
    """Pickles, and raises LoadError when unpickled (CPython's ``ErrorAtUnpickle``)."""

    def __reduce__(self) -> Any:
        return _fail_loading, ("cannot load this",)


def give(kind: str) -> Any:
    """An object that fails to cross (made in the worker): ``"refuses"``, ``"fails"``
    (to load) or ``"pickling"`` (raises PicklingError)."""
    return {"refuses": RefusesPickle, "fails": FailsToLoad, "pickling": ErrorAtPickle}[kind]()
