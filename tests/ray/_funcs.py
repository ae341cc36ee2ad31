"""Task functions for tests/ray (importable by the actors: module-level)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time

import taskpool


def crash() -> None:
    """Kill the actor's process mid-call."""
    os._exit(3)


def block(seconds: float) -> str:
    """A blocking call (cannot be interrupted)."""
    time.sleep(seconds)
    return "done"


async def talk_then_wait(tag: str) -> None:
    """Print and publish, then wait until cancelled; publish that it was cancelled."""
    print(f"out {tag}", flush=True)
    print(f"err {tag}", file=sys.stderr, flush=True)
    taskpool.publish("progress", tag)
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        taskpool.publish("cancelled", tag)
        raise


def talk_while_blocking(tag: str, seconds: float) -> str:
    """A plain call that publishes and prints, then blocks."""
    taskpool.publish("progress", tag)
    print(f"out {tag}", flush=True)
    time.sleep(seconds)
    return tag


def where() -> tuple[str, int]:
    """The host name and pid of the actor running the call."""
    time.sleep(0.2)
    return socket.gethostname(), os.getpid()


def node_id() -> str:
    """The Ray node the call runs on."""
    import ray

    time.sleep(0.3)
    return str(ray.get_runtime_context().get_node_id())


def bad_init() -> None:
    raise ValueError("no config")


def good_init(path: str) -> None:
    os.environ["TASKPOOL_TEST_INIT"] = path


def init_value() -> str | None:
    return os.environ.get("TASKPOOL_TEST_INIT")


def lock_on(bad: int, x: int) -> object:
    """``x``, but a ``threading.Lock`` (which does not pickle) for ``bad``."""
    return threading.Lock() if x == bad else x


def timed_busy(seconds: float) -> float:
    """Spin for ``seconds``; how long the call itself took, as it measured it."""
    t0 = time.time()
    while time.time() - t0 < seconds:
        pass
    return time.time() - t0


async def hold_the_loop(after: float, seconds: float) -> None:
    """After ``after`` s, block the actor's event loop for ``seconds`` (a coroutine that
    calls blocking code)."""
    await asyncio.sleep(after)
    time.sleep(seconds)
