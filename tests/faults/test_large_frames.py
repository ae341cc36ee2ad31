"""A worker killed while a large frame is on the wire, in either direction.

The frames are 64 MiB: far more than a socket buffer holds, so part of the frame waits in the
sender's transport while the rest is in the kernel. Reaching into the worker's channel (its
transport, its socket) is deliberate here: it is how the test holds a frame in flight without
sleeping and hoping.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import signal
import termios
from typing import Any

import pytest

from taskpool import FunctionPool, RestartPolicy, TaskState, WorkerCrashed

from .. import _funcs as f
from .._support import WAIT, collect, collect_until, process_worker, settle
from . import _faults as x
from ._poll import poll_until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60), pytest.mark.uvloop]

MiB = 1024 * 1024
BIG = 64 * MiB


def _channel(pool: FunctionPool, index: int = 0) -> Any:
    """The channel (protocol and transport) of the pool's process worker ``index``."""
    return process_worker(pool, index)._channel


def _unsent(channel: Any) -> int:
    """Bytes the pool has queued for the worker but the kernel has not taken yet."""
    t = channel.transport
    return (t.get_write_buffer_size() if t is not None else 0) + sum(v.nbytes for v in channel._backlog)


def _unread(channel: Any) -> int:
    """Bytes the worker wrote that wait in the pool's socket, unread."""
    fd = channel.transport.get_extra_info("socket").fileno()
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


async def test_worker_killed_while_a_large_argument_is_in_flight() -> None:
    """Parent -> worker: the call never started, so it is not lost and not failed: the
    fresh worker runs it, once."""
    big = b"\x5a" * BIG
    async with FunctionPool(1, worker="process") as pool:
        async with pool.events.subscribe("worker.*") as sub:
            channel = _channel(pool)
            pid = pool.snapshot().workers[0].pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)  # it stops reading: the frame cannot all go out
            task = pool.add_task(x.size_of, big)
            await poll_until(lambda: _unsent(channel) > BIG // 2, "the argument to be half-way out")
            os.kill(pid, signal.SIGKILL)
            async with asyncio.timeout(WAIT):
                assert await task == BIG
            events = await collect_until(sub, lambda e: e.topic == "worker.started")
        exited = [e for e in events if e.topic == "worker.exited"]
        assert [(e.pid, e.signal) for e in exited] == [(pid, signal.SIGKILL)]
        assert pool.status("started") == 1  # it ran exactly once: on the fresh worker
        assert task.state is TaskState.SUCCEEDED
        snap = pool.snapshot()
        assert snap.workers[0].restarts == 1
        assert snap.workers[0].pid != pid
        async with asyncio.timeout(WAIT):
            assert await pool.add_task(x.size_of, big) == BIG  # and large frames still go through


async def test_worker_killed_while_a_large_result_is_in_flight() -> None:
    """Worker -> parent: the call had started, so it fails with WorkerCrashed; the partial
    frame is dropped and the pool recovers."""
    async with FunctionPool(1, worker="process") as pool:
        channel = _channel(pool)
        pid = pool.snapshot().workers[0].pid
        assert pid is not None
        async with pool.events.subscribe("worker.log") as logs:
            channel.transport.pause_reading()  # the result piles up in the worker's socket
            try:
                task = pool.add_task(x.big_result, BIG)
                await collect_until(logs, lambda e: e.line == "returning a big result")
                await poll_until(lambda: _unread(channel) > 100_000, "the result to be on its way")
                os.kill(pid, signal.SIGKILL)
            finally:
                channel.transport.resume_reading()
        async with asyncio.timeout(WAIT):
            exc = await settle(task)
        assert isinstance(exc, WorkerCrashed), repr(exc)
        assert (exc.signal, exc.exitcode, exc.worker_id) == (signal.SIGKILL, None, 0)
        assert task.started_at is not None
        async with asyncio.timeout(WAIT):
            assert await pool.add_task(x.big_result, 8 * MiB) == b"\xa5" * (8 * MiB)
        snap = pool.snapshot()
        assert snap.workers[0].restarts == 1
        assert snap.workers[0].pid != pid


async def test_workers_crashing_with_large_arguments_queued() -> None:
    """CPython's test_crash_big_data: every call crashes its worker while more large
    arguments are being written; each fails with WorkerCrashed, none hangs."""
    data = b"\x00" * (16 * MiB)
    async with FunctionPool(2, worker="process", restart=RestartPolicy(delay=0.01)) as pool:
        async with pool.events.subscribe("worker.started") as sub:
            tasks = [pool.add_task(x.crash_with, data, "sigkill") for _ in range(6)]
            async with asyncio.timeout(WAIT * 2):
                errors = [await settle(t) for t in tasks]
                assert all(isinstance(e, WorkerCrashed) and e.signal == signal.SIGKILL for e in errors), errors
                assert await pool.add_task(f.add, 1, 2) == 3
            await collect(sub, 6, "replacement workers")  # one per crash, none more
        assert sum(w.restarts for w in pool.snapshot().workers) == 6
        assert pool.status("failed") == 6
