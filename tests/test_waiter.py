"""``await task``: the awaiter resumes in the loop iteration its answer was read, and
cancelling an awaiter cancels only it (``taskpool._waiter``)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from taskpool import FunctionPool
from taskpool._waiter import Waiter, run_wakeups

from . import _funcs as f
from ._support import WAIT, Gate

on_both_loops = [pytest.mark.asyncio, pytest.mark.uvloop]


def _marks(fn: Any) -> Any:
    for mark in on_both_loops:
        fn = mark(fn)
    return fn


@_marks
async def test_an_awaiter_of_a_process_task_resumes_in_the_iteration_its_answer_was_read() -> None:
    loop = asyncio.get_running_loop()
    async with FunctionPool(1, worker="process") as pool:
        for i in range(3):
            marks: list[str] = []
            task = pool.add_task(f.add, i, 1)
            # Runs as the answer is taken in, and schedules a callback for the next iteration.
            task.add_done_callback(lambda t, m=marks: loop.call_soon(m.append, "next iteration"))
            assert await task == i + 1
            assert marks == []  # resumed before the loop ran anything else
            await asyncio.sleep(0)
            assert marks == ["next iteration"]


@_marks
async def test_cancelling_an_awaiter_leaves_the_task_running(tmp_path: Any) -> None:
    async with FunctionPool(1, worker="process") as pool, Gate() as gate:
        task = pool.add_task(f.wait_gate, gate.path, "g")
        awaiting = asyncio.ensure_future(_await(task))
        await gate.arrived("g")
        awaiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await awaiting
        assert not task.done()
        gate.release("g")
        async with asyncio.timeout(WAIT):
            assert await task == "g"  # a second awaiter still gets the result


@_marks
async def test_a_task_can_be_awaited_from_another_threads_loop() -> None:
    async with FunctionPool(1, worker="process") as pool:
        task = pool.add_task(f.add, 2, 3)
        out: list[Any] = []
        thread = threading.Thread(target=lambda: out.append(asyncio.run(_await(task))))
        thread.start()
        async with asyncio.timeout(WAIT):
            assert await task == 5
            await asyncio.to_thread(thread.join)
        assert out == [5]


async def _await(task: Any) -> Any:
    return await task


def test_a_waiter_follows_the_future_protocol() -> None:
    loop = asyncio.new_event_loop()
    try:
        w = Waiter(loop)
        assert (w.done(), w.cancelled(), w.get_loop()) == (False, False, loop)
        with pytest.raises(asyncio.InvalidStateError):
            w.result()
        seen: list[Any] = []
        w.add_done_callback(seen.append)
        w.add_done_callback(print)
        assert w.remove_done_callback(print) == 1
        direct: list[Any] = []
        w.resolve(direct, loop)  # on the pool's loop, in a batch: handed back to run later
        assert w.done() and w.result() is None and w.exception() is None
        assert not w.cancel()
        run_wakeups(loop, direct)
        assert seen == [w]
        w.add_done_callback(seen.append)  # already done: through the loop
        loop.run_until_complete(asyncio.sleep(0))
        assert seen == [w, w]

        c = Waiter(loop)
        c.add_done_callback(seen.append)
        assert c.cancel("why")
        assert c.cancelled() and c.done()
        with pytest.raises(asyncio.CancelledError, match="why"):
            c.result()
        c.resolve(None, loop)  # too late: stays cancelled
        loop.run_until_complete(asyncio.sleep(0))
        assert seen[-1] is c
    finally:
        loop.close()


@_marks
async def test_an_asyncio_task_awaiting_a_waiter_is_cancelled_through_it() -> None:
    w = Waiter(asyncio.get_running_loop())
    t = asyncio.ensure_future(_await(w))
    await asyncio.sleep(0)
    assert t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert w.cancelled()
