"""The faults the tests inject, as module-level functions and classes.

A process worker imports all of these by reference (``tests.faults._faults.NAME``), so they
must stay module-level. A *fault* is one of :data:`FAULTS`:

- ``"raise"``: raise :class:`FaultError` (safe anywhere);
- ``"exit"``: ``os._exit(EXIT_CODE)``: the interpreter ends without unwinding;
- ``"segfault"``: a real SIGSEGV (core dumps suppressed first);
- ``"sigkill"``: the process SIGKILLs itself.

Only ``"raise"`` may ever run in the test process itself: :func:`fault` refuses the others
there, so a mistake in a test fails it instead of killing the whole run.

Where a fault fires is chosen with the pickling hooks, like CPython's ``test_deadlock.py``:
:class:`FaultOnPickle` runs it while being pickled (the parent for an argument, the worker for
a result), :class:`FaultOnUnpickle` while being unpickled (the worker for an argument, the
parent for a result).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import signal
import socket
import sys
import time
from typing import Any

FAULTS = ("raise", "exit", "segfault", "sigkill")
#: The exit code of the ``"exit"`` fault (distinct from 1, which a Python error would give).
EXIT_CODE = 7


class FaultError(Exception):
    """The exception the ``"raise"`` fault raises: rebuilt by type in the parent."""


def _in_worker() -> bool:
    """This runs in a worker process of the test run, not in the test process itself."""
    from tests._funcs import PARENT_PID_ENV

    parent = os.environ.get(PARENT_PID_ENV)  # set by the tests' conftest, inherited by workers
    return parent is not None and parent != str(os.getpid())


def _no_core_dump() -> None:
    """Like CPython's SuppressCrashReport: no core file, whatever the core pattern."""
    with contextlib.suppress(Exception):
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_dumpable = 4
        ctypes.CDLL(None).prctl(pr_set_dumpable, 0, 0, 0, 0)


def fault(kind: str, where: str = "somewhere") -> Any:
    """Inject ``kind`` (one of :data:`FAULTS`) here."""
    if kind == "raise":
        raise FaultError(f"injected fault while {where}")
    if kind not in FAULTS:
        raise ValueError(f"unknown fault {kind!r}")
    if not _in_worker():
        raise AssertionError(f"refusing to inject {kind!r} into the test process ({where})")
    sys.stdout.flush()
    sys.stderr.flush()
    if kind == "exit":
        os._exit(EXIT_CODE)
    if kind == "segfault":
        _no_core_dump()
        faulthandler.disable()
        faulthandler._sigsegv()  # type: ignore[attr-defined]
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError(f"fault {kind!r} did not end the process")  # pragma: no cover


class FaultOnPickle:
    """Injects its fault when pickled (argument: in the parent; result: in the worker)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        fault(self.kind, "pickling")
        return (FaultOnPickle, (self.kind,))  # pragma: no cover


class FaultOnUnpickle:
    """Pickles fine; injects its fault when unpickled (argument: in the worker; result: in the parent)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        return (fault, (self.kind, "unpickling"))


class UnpicklableError(Exception):
    """An exception that cannot be pickled in the worker (it holds a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        import threading

        self.lock = threading.Lock()


class ErrorFailingInParent(Exception):
    """An exception that pickles in the worker but fails to unpickle in the parent."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (fault, ("raise", "unpickling an exception"))


# --- task functions ------------------------------------------------------------------------


def take(*args: Any) -> int:
    """Receive the arguments (the fault is in them): the number received."""
    return len(args)


def give(kind: str, where: str) -> Any:
    """Return a result whose (un)pickling injects ``kind``: ``where`` is "pickle" or "unpickle"."""
    return FaultOnPickle(kind) if where == "pickle" else FaultOnUnpickle(kind)


def run_fault(kind: str) -> None:
    fault(kind, "running a sync task")


async def async_run_fault(kind: str) -> None:
    await asyncio.sleep(0)
    fault(kind, "running an async task")


def raise_unpicklable(message: str) -> None:
    raise UnpicklableError(message)


def raise_failing_in_parent() -> None:
    raise ErrorFailingInParent("cannot be rebuilt")


def exit_with(code: int) -> None:
    """Crash the worker: ``os._exit(code)``."""
    os._exit(code)


async def stay_up(seconds: float) -> str:
    """Healthy work that takes ``seconds`` (a worker staying up, for ``reset_after``)."""
    await asyncio.sleep(seconds)
    return "up"


def pid() -> int:
    return os.getpid()


# --- large frames ------------------------------------------------------------------------


def size_of(data: bytes) -> int:
    return len(data)


def big_result(n: int) -> bytes:
    print("returning a big result", flush=True)
    return b"\xa5" * n


# --- workers that will not stop ----------------------------------------------------------

_held: list[socket.socket] = []


def _arrive(path: str, tag: str) -> None:
    """Arrive at a taskpool.testing.Gate and stay connected (the gate sees a hang-up when the
    process dies), without waiting for a release."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(tag.encode() + b"\n")
    _held.append(s)


def ignore_sigterm_and_block(path: str, tag: str, seconds: float) -> str:
    """Ignore SIGTERM, arrive at the gate, then block in C code (``time.sleep``)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _arrive(path, tag)
    time.sleep(seconds)
    return "woke up"


async def ignore_sigterm_and_cancellation(path: str, tag: str, seconds: float) -> str:
    """Ignore SIGTERM, arrive at the gate, then swallow every cancellation for ``seconds``."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _arrive(path, tag)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(end - loop.time())
    return "outlived"


# --- output ------------------------------------------------------------------------------


def chatter(tag: str) -> str:
    print(f"stdout line {tag}")
    print(f"stderr line {tag}", file=sys.stderr)
    sys.stderr.write(f"raw stderr {tag}\n")
    return tag


def last_words(tag: str) -> None:
    print(f"last words {tag}", flush=True)
    sys.stderr.write(f"last error {tag}\n")
    sys.stderr.flush()
    os._exit(EXIT_CODE)


# --- the soak ----------------------------------------------------------------------------


def soak_sync(what: str, i: int) -> int:
    if what == "raise":
        raise ValueError(f"soak {i}")
    if what == "crash":
        os._exit(EXIT_CODE)
    if what == "hang":
        time.sleep(30)  # only ever stopped by its timeout: the worker is killed
    return 2 * i


async def soak_async(what: str, i: int) -> int:
    await asyncio.sleep(0)
    if what == "raise":
        raise ValueError(f"soak {i}")
    if what == "hang":
        await asyncio.sleep(30)  # cancelled in the worker by its timeout
    return 2 * i


def crash_with(data: bytes, kind: str) -> None:
    """Receive ``data`` (a large argument), then inject ``kind``."""
    fault(kind, f"holding {len(data)} bytes")


def publish_then_exit(topic: str) -> None:
    """Publish an event, then die: the event must still reach the pool's bus."""
    import taskpool

    taskpool.publish(topic, {"pid": os.getpid()})
    os._exit(EXIT_CODE)


async def chatter_at_gate(path: str, tag: str) -> str:
    """Write a line to stdout and one to stderr, then wait at the gate (so each of two
    such tasks holds its own worker)."""
    print(f"stdout line {tag}")
    print(f"stderr line {tag}", file=sys.stderr)
    from taskpool.testing import wait_gate

    return await wait_gate(path, tag)


def until_file(path: str, tag: str) -> str:
    """Block until ``path`` exists (made by the test, from a callback that blocks the
    pool's loop: a Gate, served by that loop, could not release the call then)."""
    while not os.path.exists(path):
        time.sleep(0.001)
    return tag
