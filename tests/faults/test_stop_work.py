"""Timeouts and cancellation really stop the work on process workers.

- An async call is cancelled *in the worker*: the code after its await point never runs
  (it would leave a marker file), and the worker lives on.
- A sync call cannot be interrupted: its worker is killed and replaced, the task raises
  ``TaskTimeout`` / ``TaskCancelled``, and the pool keeps its capacity.

The synchronisation point is a follow-up task on the same worker: a worker runs its calls
in order, so once the follow-up answered, the cancelled call can no longer write anything.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from taskpool import FunctionPool, TaskCancelled, TaskState, TaskTimeout

from .. import _funcs as f
from .._support import WAIT, Gate, collect_until, process_worker, settle
from ._poll import gone, poll_until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


@pytest.mark.uvloop
async def test_cancelled_async_call_stops_at_its_await_point(tmp_path: Path) -> None:
    marker = str(tmp_path / "ran-past-the-await")
    async with Gate() as gate, FunctionPool(1, worker="process") as pool:
        pid = pool.snapshot().workers[0].pid
        task = pool.add_task(f.wait_gate_then_mark, gate.path, "a", marker)
        await gate.arrived("a")
        assert task.cancel() is True
        async with asyncio.timeout(WAIT):
            assert isinstance(await settle(task), TaskCancelled)
            await gate.hung_up("a")  # the coroutine was cancelled where it waited
            # The same worker answers the next call: the cancelled one is over for good.
            follow = pool.add_task(f.where)
            assert (await follow)[1] == pid
        gate.release("a")  # even a late release finds nobody waiting
        assert not os.path.exists(marker)
        assert task.state is TaskState.CANCELLED
        assert pool.snapshot().workers[0].restarts == 0  # cancelled, not killed


@pytest.mark.uvloop
async def test_async_timeout_cancels_in_the_worker(tmp_path: Path) -> None:
    marker = str(tmp_path / "slept-to-the-end")
    async with FunctionPool(1, worker="process") as pool:
        pid = pool.snapshot().workers[0].pid
        task = pool.add_task(f.sleep_then_mark, 30, marker, timeout=0.2)
        async with asyncio.timeout(WAIT):
            exc = await settle(task)
            assert (await pool.add_task(f.where))[1] == pid
        assert isinstance(exc, TaskTimeout) and isinstance(exc, TimeoutError)
        assert task.state is TaskState.FAILED
        assert not os.path.exists(marker)
        assert pool.snapshot().workers[0].restarts == 0


@pytest.mark.uvloop
@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_sync_call_that_must_stop_costs_its_worker(how: str, tmp_path: Path) -> None:
    async with Gate() as gate, FunctionPool(2, worker="process") as pool:
        async with pool.events.subscribe("worker.*") as sub:
            timeout = 0.3 if how == "timeout" else None
            task = pool.add_task(f.block_gate, gate.path, "stuck", timeout=timeout)
            await gate.arrived("stuck")
            slot = task.worker_id
            assert slot is not None
            pid = pool.snapshot().workers[slot].pid
            assert pid is not None
            if how == "cancel":
                assert task.cancel() is True
            async with asyncio.timeout(WAIT):
                exc = await settle(task)
            assert isinstance(exc, TaskTimeout if how == "timeout" else TaskCancelled), repr(exc)
            await gate.hung_up("stuck")  # the blocked call's process is gone
            await poll_until(lambda: gone(pid), "the killed worker to be reaped")
            await collect_until(sub, lambda e: e.topic == "worker.started" and e.worker_id == slot)
            # Full capacity again: two calls hold both workers at once.
            both = [pool.add_task(f.block_gate, gate.path, tag) for tag in ("x", "y")]
            await gate.arrived("x", "y")
            gate.release("x", "y")
            async with asyncio.timeout(WAIT):
                assert [await t for t in both] == ["x", "y"]
        snap = pool.snapshot()
        assert snap.workers[slot].restarts == 1
        assert snap.workers[slot].pid != pid
        assert gate.arrivals.count("stuck") == 1  # never run twice


async def test_cancelled_queued_call_never_runs(tmp_path: Path) -> None:
    marker = str(tmp_path / "queued-ran")
    async with Gate() as gate, FunctionPool(1, worker="process") as pool:
        first = pool.add_task(f.wait_gate, gate.path, "first")
        queued = pool.add_task(f.mark, marker)
        await gate.arrived("first")
        assert queued.cancel() is True
        gate.release("first")
        async with asyncio.timeout(WAIT):
            assert await first == "first"
            assert isinstance(await settle(queued), TaskCancelled)
            await pool.add_task(f.add, 1, 1)
        assert not os.path.exists(marker)
        assert queued.started_at is None


@pytest.mark.uvloop
@pytest.mark.parametrize("reported", [True, False], ids=["started-frame", "control-block"])
async def test_sync_call_cancelled_while_its_start_is_on_the_way_is_stopped(reported: bool) -> None:
    """The pool cancels a call it still thinks is queued, but the worker has already
    started it: its Started frame is in flight (a call whose start is reported), or the
    control block was read an instant before the worker marked it begun (one whose start
    is not). A sync call cannot be interrupted: once the pool learns it began (the late
    Started, or the block read again after the cancel grace), the worker must be killed,
    not left blocked."""
    async with Gate() as gate, FunctionPool(1, worker="process") as pool:
        pid = pool.snapshot().workers[0].pid
        assert pid is not None
        worker = process_worker(pool, 0)
        channel = worker._channel
        block = worker._control
        channel.transport.pause_reading()  # the pool will not see Started for now
        worker._control = _NothingBegunYet(block)  # nor, for a moment, the control block
        try:
            # A timeout asks for the start to be reported; without one it is not.
            task = pool.add_task(f.block_gate, gate.path, "stuck", timeout=60 if reported else None)
            await gate.arrived("stuck")  # it is running in the worker
            assert task.state is TaskState.QUEUED  # as far as the pool knows
            assert task.cancel() is True
        finally:
            worker._control = block
            channel.transport.resume_reading()
        async with asyncio.timeout(WAIT):
            assert isinstance(await settle(task), TaskCancelled)
            await gate.hung_up("stuck")  # its worker was killed: the call did not go on
            assert await pool.add_task(f.add, 1, 1) == 2
        assert gone(pid)
        assert pool.snapshot().workers[0].restarts == 1
        assert pool.status("started") == 1  # the follow-up only: the cancelled one never counted


class _NothingBegunYet:
    """A worker's control block, read as it was before any call began."""

    def __init__(self, block: Any) -> None:
        self._block = block

    def begun(self) -> tuple[int, float, int]:
        return 0, 0.0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._block, name)


@pytest.mark.uvloop
async def test_calls_to_a_busy_worker_share_a_frame_and_a_cancel_follows_its_call(tmp_path: Path) -> None:
    """Calls handed to a busy worker in one loop iteration go in one frame, written at its
    end; a Cancel for one of them is written after that frame, so the call never runs."""
    async with Gate() as gate, FunctionPool(1, worker="process") as pool:
        for i in range(5):  # short calls: the worker's window opens
            await pool.add_task(f.add, i, i)
        first = pool.add_task(f.wait_gate, gate.path, "first")
        await gate.arrived("first")
        markers = [str(tmp_path / f"ran-{i}") for i in range(8)]
        burst = [pool.add_task(f.mark, m) for m in markers]
        worker = process_worker(pool, 0)
        assert [t for t, _ in worker._batch] == burst  # not written yet: one frame soon
        assert burst[3].cancel() is True  # its Call is written first, then the Cancel
        assert worker._batch == []
        gate.release("first")
        async with asyncio.timeout(WAIT):
            assert await first == "first"
            outcomes = [await settle(t) for t in burst]
    assert isinstance(outcomes[3], TaskCancelled)
    assert [os.path.exists(m) for m in markers] == [i != 3 for i in range(8)]
