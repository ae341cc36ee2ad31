"""Functions the executor tests run in workers, and a synchronous gate to hold them.

Every function is module-level so a process worker imports it by reference
(``tests._executor_funcs.NAME``). :class:`SyncGate` is a rendezvous for plain
synchronous tests (the executors' callers): a call running :func:`gate` connects to its
Unix socket, names itself and blocks until the test releases it, on thread and process
workers alike, so a test can hold a call *running* without sleeping. Side effects a test
must see across a process boundary are files (:func:`mark`).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import socket
import sys
import tempfile
import threading
import time
from types import TracebackType
from typing import Any

_RELEASE = b"x"


class SyncGate:
    """Hold calls in their workers until the test lets them go.

    ``with SyncGate() as g:`` listens at ``g.path``; a call of :func:`gate` with that
    path and a tag arrives (:meth:`arrived` waits for it) and blocks until
    :meth:`release` (or the end of the block, which releases everything).

    Args:
        timeout: seconds :meth:`arrived` waits before failing the test (a broken test
            only: it turns a hang into a failure).
    """

    def __init__(self, timeout: float = 20.0) -> None:
        self.timeout = timeout
        self._dir = tempfile.mkdtemp(prefix="tpx-")  # short: Unix socket paths are limited
        self.path = os.path.join(self._dir, "gate")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(128)
        self._waiting: dict[str, list[socket.socket]] = {}
        self.arrivals: list[str] = []

    def __enter__(self) -> SyncGate:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _accept(self, timeout: float | None) -> bool:
        self._listener.settimeout(timeout)
        try:
            conn, _ = self._listener.accept()
        except (TimeoutError, BlockingIOError):
            return False
        conn.settimeout(self.timeout)
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(256)
            if not chunk:
                conn.close()
                return True
            data += chunk
        tag = data[:-1].decode()
        self.arrivals.append(tag)
        self._waiting.setdefault(tag, []).append(conn)
        return True

    def arrived(self, *tags: str, count: int = 1) -> None:
        """Wait until each of ``tags`` arrived ``count`` times (their calls are running)."""
        deadline = time.monotonic() + self.timeout
        while any(self.arrivals.count(t) < count for t in tags):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._accept(remaining):
                raise AssertionError(f"gate: waited for {tags} (x{count}), arrived {self.arrivals}")

    def poll(self) -> list[str]:
        """Take in whoever arrived by now, without waiting; the arrivals so far."""
        while self._accept(0.0):
            pass
        return list(self.arrivals)

    def release(self, *tags: str) -> None:
        """Let the calls waiting under ``tags`` go on."""
        for tag in tags:
            for conn in self._waiting.pop(tag, []):
                try:
                    conn.sendall(_RELEASE)
                except OSError:
                    pass
                conn.close()

    def close(self) -> None:
        """Release every call waiting (arrived or about to), stop listening."""
        self.poll()
        self.release(*list(self._waiting))
        self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def gate(path: str, tag: str) -> str:
    """Arrive at the test's :class:`SyncGate` as ``tag``; block until released; ``tag``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(tag.encode() + b"\n")
        reply = s.recv(1)
    if reply != _RELEASE:
        raise RuntimeError(f"gate closed before {tag!r} was released")
    return tag


def gate_then_mark(path: str, tag: str, marker: str) -> str:
    """:func:`gate`, then :func:`mark` (so the test sees the call ran to its end)."""
    gate(path, tag)
    mark(marker)
    return tag


def mark(marker: str) -> None:
    """Create the file ``marker``: the test sees the call ran (on any kind)."""
    with open(marker, "w") as f:
        f.write("ran")


# --- plain results and failures -----------------------------------------------------------


def add(a: int, b: int) -> int:
    return a + b


def mul(x: int, y: int) -> int:
    return x * y


def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def identity(x: Any) -> Any:
    return x


def boom(message: str) -> None:
    raise ValueError(message)  # the line the remote traceback must show


def fail_on(bad: int, x: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x * 10


def exit_with(code: Any) -> None:
    sys.exit(code)


def sleep_then(seconds: float, value: Any) -> Any:
    time.sleep(seconds)  # work, not synchronisation
    return value


class Token:
    """An object a call returns; the tests watch it being freed."""

    def method(self) -> None:
        return None


def make_token(_: Any = None) -> Token:
    return Token()


async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def sleep_and_print(seconds: float, message: str) -> None:
    time.sleep(seconds)  # work, not synchronisation
    print(message)
    sys.stdout.flush()


def worker_pid(_: Any = None) -> int:
    return os.getpid()


def worker_thread_name(_: Any = None) -> str:
    return threading.current_thread().name


def crash(code: int = 3) -> None:
    """End the worker process at once (process workers only)."""
    os._exit(code)


# --- values that do not cross -----------------------------------------------------------


def _refuse_to_load() -> None:
    raise pickle.UnpicklingError("cannot be rebuilt here")


class BadOnLoad:
    """Pickles, but unpickling it raises (on the other side)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_to_load, ())


class BadOnDump:
    """Cannot be pickled at all."""

    def __reduce__(self) -> tuple[Any, ...]:
        raise pickle.PicklingError("cannot be pickled")


def return_bad_on_load(_: Any = None) -> BadOnLoad:
    return BadOnLoad()


def return_bad_on_dump(_: Any = None) -> BadOnDump:
    return BadOnDump()


def bad_on_dump_at(bad: int, x: int) -> Any:
    """``x``, but a result that cannot be pickled for ``bad``."""
    return BadOnDump() if x == bad else x


# --- initializers ---------------------------------------------------------------------------

INIT_STATE = "uninitialized"


def init(value: str) -> None:
    global INIT_STATE
    INIT_STATE = value


def get_init(_: Any = None) -> str:
    return INIT_STATE


def init_fail() -> None:
    raise ValueError("error in initializer")
