"""Service functions for ``keep_alive`` and ``taskpool serve`` tests.

Each announces itself with ``taskpool.publish("svc.up", ...)`` (on the pool's bus) and a
line on stdout, so a test waits on an event instead of sleeping.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import taskpool
from tests import _funcs


def _hello(name: str) -> None:
    print(f"{name} up in {os.getpid()}", flush=True)
    taskpool.publish("svc.up", {"name": name, "pid": os.getpid(), "thread": threading.get_ident()})


async def forever(name: str = "forever") -> None:
    """An async service that runs until cancelled."""
    _hello(name)
    try:
        await asyncio.Event().wait()
    finally:
        taskpool.publish("svc.down", {"name": name, "pid": os.getpid()})


def blocking(name: str = "blocking", seconds: float = 30.0) -> None:
    """A sync service that blocks (a stop has to kill its worker); bounded by ``seconds``."""
    _hello(name)
    time.sleep(seconds)


def blocking_gate(path: str, tag: str, name: str = "blocking") -> None:
    """A sync service blocked at the test's gate (a thread cannot be killed: the test
    releases it at the end)."""
    _hello(name)
    _funcs.block_gate(path, tag)


def returns(name: str = "returns") -> str:
    """A service that ends cleanly at once."""
    _hello(name)
    return name


def fails(name: str = "fails") -> None:
    """A service that raises at once."""
    _hello(name)
    raise RuntimeError(f"{name} failed")


def crashes(name: str = "crashes") -> None:
    """A service whose worker process dies at once."""
    _hello(name)
    os._exit(7)


def main() -> None:
    """For ``taskpool serve tests._modules.services:main``: print, then run until stopped."""
    print(f"main up in {os.getpid()}", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    asyncio.run(asyncio.Event().wait())  # a sync target that runs its own loop


async def amain() -> None:
    """Async variant of :func:`main`."""
    print(f"amain up in {os.getpid()}", flush=True)
    await asyncio.Event().wait()


def crash_main() -> None:
    print(f"crash_main up in {os.getpid()}", flush=True)
    os._exit(9)


async def slow_cleanup(name: str = "slow", cleanup: float = 2.0) -> None:
    """An async service whose cleanup after cancellation takes ``cleanup`` seconds."""
    _hello(name)
    try:
        await asyncio.Event().wait()
    finally:
        deadline = time.monotonic() + cleanup
        while time.monotonic() < deadline:
            try:
                await asyncio.sleep(deadline - time.monotonic())
            except asyncio.CancelledError:
                pass
        taskpool.publish("svc.down", {"name": name, "pid": os.getpid()})


async def stubborn(cleanup: float = 30.0) -> None:
    """For ``taskpool serve``: on cancellation, keep cleaning up for ``cleanup`` seconds
    (so a graceful stop takes that long, and a second signal has to force it)."""
    print(f"stubborn up in {os.getpid()}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        print("stubborn cleaning up", flush=True)
        deadline = time.monotonic() + cleanup
        while time.monotonic() < deadline:
            try:
                await asyncio.sleep(deadline - time.monotonic())
            except asyncio.CancelledError:
                pass
