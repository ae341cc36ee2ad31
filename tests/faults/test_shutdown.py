"""Workers that will not stop, and a parent that dies with busy workers.

- ``aclose(grace=...)`` with a worker blocked in C code and one that swallows
  cancellation, both ignoring SIGTERM: aclose returns in bounded time, every task settles
  (``TaskCancelled``), no process is left.
- The pool's parent process SIGKILLed while its workers run long sync or async calls:
  every worker is gone within 2 s (Linux: ``PR_SET_PDEATHSIG``; elsewhere EOF on the
  channel, which a sync call would not see).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

import psutil
import pytest

from taskpool import FunctionPool, RestartPolicy, TaskCancelled, TaskState, WorkerCrashed
from taskpool._spawn import spawn_child
from taskpool._wire import FrameProtocol, Hello, Shutdown, parent_parser
from taskpool._workers._process import CANCEL_GRACE

from .. import _funcs as f
from .._support import WAIT, Gate, collect_until, settle
from . import _faults as x
from ._poll import gone, poll_until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

GRACE = 0.5
#: Killing and reaping a process, closing the pool's books: generous on a loaded 2-core box.
MARGIN = 0.75


async def _close_timed(pool: FunctionPool, grace: float) -> float:
    t0 = time.monotonic()
    async with asyncio.timeout(WAIT):
        await pool.aclose(grace=grace)
    return time.monotonic() - t0


@pytest.mark.uvloop
async def test_aclose_grace_with_a_worker_blocked_in_c_code() -> None:
    async with Gate() as gate:
        pool = FunctionPool(2, worker="process")
        await pool.start()
        pids = [w.pid for w in pool.snapshot().workers]
        blocked = pool.add_task(x.ignore_sigterm_and_block, gate.path, "blocked", 60)
        fine = pool.add_task(f.wait_gate, gate.path, "fine")
        queued = pool.add_task(f.add, 1, 1)
        await gate.arrived("blocked", "fine")
        elapsed = await _close_timed(pool, GRACE)
        assert GRACE <= elapsed < GRACE + MARGIN, elapsed
        assert pool.state == "closed"
        for t in (blocked, fine, queued):
            assert t.state is TaskState.CANCELLED
            assert isinstance(await settle(t), TaskCancelled)
        await gate.hung_up("blocked", "fine")
        assert all(gone(pid) for pid in pids if pid is not None)
        assert pool.snapshot().workers[0].current_task is None


@pytest.mark.uvloop
async def test_aclose_grace_with_a_worker_swallowing_cancellation() -> None:
    """An async call that swallows its cancellation (and ignores SIGTERM) gets the
    cancellation grace, then its worker is killed."""
    async with Gate() as gate:
        pool = FunctionPool(1, worker="process")
        await pool.start()
        pid = pool.snapshot().workers[0].pid
        assert pid is not None
        stubborn = pool.add_task(x.ignore_sigterm_and_cancellation, gate.path, "stubborn", 60)
        await gate.arrived("stubborn")
        elapsed = await _close_timed(pool, GRACE)
        assert GRACE <= elapsed < GRACE + CANCEL_GRACE + MARGIN, elapsed
        assert isinstance(await settle(stubborn), TaskCancelled)
        await gate.hung_up("stubborn")
        assert gone(pid)


async def test_aclose_cancel_true_with_stuck_workers_returns_promptly() -> None:
    async with Gate() as gate:
        pool = FunctionPool(2, worker="process")
        await pool.start()
        pids = [w.pid for w in pool.snapshot().workers]
        blocked = pool.add_task(x.ignore_sigterm_and_block, gate.path, "blocked", 60)
        stubborn = pool.add_task(x.ignore_sigterm_and_cancellation, gate.path, "stubborn", 60)
        await gate.arrived("blocked", "stubborn")
        t0 = time.monotonic()
        async with asyncio.timeout(WAIT):
            await pool.aclose(cancel=True)
        elapsed = time.monotonic() - t0
        assert elapsed < CANCEL_GRACE + MARGIN, elapsed
        assert [t.state for t in (blocked, stubborn)] == [TaskState.CANCELLED] * 2
        await gate.hung_up("blocked", "stubborn")
        assert all(gone(pid) for pid in pids if pid is not None)


# --- the parent dies -------------------------------------------------------------------------

SCRIPT = os.path.join(os.path.dirname(__file__), "_doomed_parent.py")


@pytest.mark.parametrize("busy", ["sync", "async"])
async def test_workers_die_with_their_sigkilled_parent(busy: str) -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        SCRIPT,
        busy,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        async with asyncio.timeout(WAIT * 2):
            while not pids:
                line = await parent.stdout.readline()
                assert line, "the parent exited before its workers started"
                if line.startswith(b"PIDS "):
                    pids = json.loads(line[5:])
        assert len(pids) == 2
        workers = [psutil.Process(pid) for pid in pids]
        assert all(w.ppid() == parent.pid for w in workers)
        os.kill(parent.pid, signal.SIGKILL)
        await parent.wait()
        # Polling a condition with a deadline: the 2 s is the requirement itself.
        await poll_until(lambda: all(gone(pid) for pid in pids), "the workers to die with their parent", 2.0)
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        for pid in pids:  # never leave an orphan behind, even when the test failed
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


# --- stopped before it was up ----------------------------------------------------------------


@pytest.mark.uvloop
async def test_a_worker_told_to_stop_before_its_handshake_answers_then_exits_cleanly() -> None:
    """A Shutdown already waiting in the socket when the worker connects must not close
    the channel before Hello: the pool would see a start failure instead of a stop."""
    received: list[Any] = []
    proc, proto = await spawn_child(lambda: FrameProtocol(parent_parser(), received.append))
    proto.send(Shutdown())
    proto.flush()  # in the socket before the child has even imported taskpool
    async with asyncio.timeout(WAIT):
        await proto.closed
        assert await proc.wait() == 0
    assert [type(m) for m in received] == [Hello]


async def test_aclose_while_a_worker_restarts() -> None:
    """The pool closes just as a crashed worker's replacement is being spawned: the new
    worker is stopped as soon as it can be told, cleanly, and aclose does not wait for a
    stop timeout."""
    async with FunctionPool(1, worker="process", restart=RestartPolicy(delay=0)) as pool:
        async with pool.events.subscribe("worker.*") as sub:
            assert isinstance(await settle(pool.add_task(x.exit_with, 1)), WorkerCrashed)
            await collect_until(sub, lambda e: e.topic == "worker.restarted")
            t0 = time.monotonic()  # the replacement is spawning right now
            async with asyncio.timeout(WAIT):
                await pool.aclose()
            elapsed = time.monotonic() - t0
            events = drain(sub)
    exits = [e for e in events if e.topic == "worker.exited"]
    assert len(exits) == 1
    assert exits[0].reason == "stopped", exits[0]
    assert elapsed < 2.0, elapsed  # a spawn, not STOP_GRACE


def drain(sub: Any) -> list[Any]:
    out = []
    while (event := sub.get_nowait()) is not None:
        out.append(event)
    return out
