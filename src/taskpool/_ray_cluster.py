"""The process's connection to Ray, shared by every Ray worker of every pool in it.

A Ray driver is per process: one connection serves all pools. Workers take a reference
while they run (:func:`acquire` / :func:`release`); what is done at the last release
depends on who made the connection:

* a private local Ray we started (``address=None``): shut down once the last worker of a
  closing pool let go, so a closed pool leaves no Ray process behind;
* a cluster we joined: disconnected then (the cluster itself is never stopped);
* a connection the application made itself (``ray.init`` before the pool): left alone.

``ray.init`` blocks for seconds: it runs in a thread, never on the pool's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ._events import resolve
from .ray import RayWorkers

__all__ = ["LOCAL_INIT", "acquire", "in_thread", "node_ip", "release"]

T = TypeVar("T")

_lock = threading.Lock()
_users = 0
_owned = False  # we started the local Ray (shut it down) ...
_joined: str | None = None  # ... or joined this address (disconnect)
_mine = False  # the connection is ours (False: the application's, or none)

#: ``ray.init`` arguments for a private local Ray: never a cluster found through
#: ``$RAY_ADDRESS`` or a running ``ray start`` ("local" always starts a new one), no
#: dashboard, no usage statistics, loopback only, worker output left to taskpool.
LOCAL_INIT: dict[str, Any] = {
    "address": "local",
    "include_dashboard": False,
    "log_to_driver": False,
    "configure_logging": False,
    "_node_ip_address": "127.0.0.1",
}


def node_ip() -> str:
    """The address Ray nodes started by taskpool listen on (loopback)."""
    return "127.0.0.1"


def _connect(cfg: RayWorkers) -> None:
    global _users, _owned, _joined, _mine
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    with _lock:
        target = cfg.target()
        if ray.is_initialized():
            if _mine and _owned and target is not None:
                raise RuntimeError(
                    f"this process runs a private local Ray for another pool; it cannot join {target!r} as well"
                )
            if _mine and _joined is not None and target is None:
                pass  # a pool wanting a private Ray shares the cluster this process joined
            _users += 1
            return
        if target is None:
            ray.init(**LOCAL_INIT, num_cpus=_local_cpus())
            _owned, _joined = True, None
        else:
            _probe(target)
            ray.init(address=target, log_to_driver=False, configure_logging=False)
            _owned, _joined = False, target
        _mine = True
        _users += 1


#: Seconds to reach a cluster's address before joining it (Ray itself retries for minutes).
PROBE_TIMEOUT = 5.0


def _probe(address: str) -> None:
    """Fail at once when nothing answers at a ``host:port`` (or ``ray://host:port``)
    address; other forms ("auto") are Ray's to resolve.

    Raises:
        ConnectionError: nothing accepts a connection there within :data:`PROBE_TIMEOUT`.
    """
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT):
            pass
    except OSError as exc:
        raise ConnectionError(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc


def _local_cpus() -> int:
    """Logical CPUs of a private local Ray: ``$TASKPOOL_RAY_LOCAL_CPUS``, else this
    machine's (the pool's size, not Ray's accounting, bounds how many workers run)."""
    env = os.environ.get("TASKPOOL_RAY_LOCAL_CPUS")
    if env:
        return max(1, int(env))
    return max(os.cpu_count() or 1, 8)


async def acquire(cfg: RayWorkers) -> None:
    """Connect this process to Ray per ``cfg`` (once; later callers share it).

    Raises:
        RuntimeError: the process is connected to a different Ray already.
        ConnectionError: (from Ray) the cluster to join cannot be reached.
    """
    await in_thread(_connect, cfg)


def _disconnect(closing: bool) -> None:
    global _users, _owned, _joined, _mine
    with _lock:
        _users = max(0, _users - 1)
        if _users or not closing or not _mine:
            return
        import ray

        _mine, _owned, _joined = False, False, None
        ray.shutdown()  # ours: a private Ray stops, a joined cluster is only left


async def release(closing: bool) -> None:
    """Let go of the connection; the last user of a closing pool ends ours (see above)."""
    await in_thread(_disconnect, closing)


class _Owner:
    """The thread that connects and disconnects (Ray's processes die with the *thread*
    that started them: PR_SET_PDEATHSIG): it lives while the connection is ours."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._main, name="taskpool-ray", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        while True:
            fn, args, loop, fut = self.jobs.get()
            try:
                value, ok = fn(*args), True
            except BaseException as exc:
                value, ok = exc, False
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(resolve, fut, ok, value)
            del fn, args, value
            with _lock:
                if not _mine and self.jobs.empty():  # nothing of ours left: this thread ends
                    global _owner
                    if _owner is self:
                        _owner = None
                    return


_owner: _Owner | None = None


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the owner thread (started if need be); the loop stays free."""
    global _owner
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()
    with _lock:
        if _owner is None or not _owner.thread.is_alive():
            _owner = _Owner()
        _owner.jobs.put((fn, args, loop, fut))
    return await asyncio.shield(fut)


def users() -> int:
    """How many workers hold the connection (tests)."""
    return _users
