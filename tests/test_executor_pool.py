"""``pool.executor()``: a ``concurrent.futures`` executor over a running async pool.

It is used from the pool's own loop (``loop.run_in_executor``, the loop's default
executor) and from other threads; its calls are the pool's tasks, and shutting it down
closes only its own intake, never the pool, and never blocks the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from taskpool import FunctionPool, PoolClosed, TaskCancelled
from taskpool.executor import PoolExecutor
from taskpool.testing import Gate, block_gate, wait_gate

from . import _executor_funcs as F

pytestmark = [pytest.mark.asyncio, pytest.mark.uvloop]

T = 30.0
KINDS = ["thread", "process"]


@pytest_asyncio.fixture(params=KINDS)
async def pool(request: pytest.FixtureRequest) -> AsyncIterator[FunctionPool]:
    async with FunctionPool(2, worker=request.param) as p:
        yield p


def in_thread(fn: Any, *args: Any) -> asyncio.Future[Any]:
    """Run ``fn(*args)`` on a plain thread of its own; an asyncio future of its outcome."""
    loop = asyncio.get_running_loop()
    out: asyncio.Future[Any] = loop.create_future()

    def run() -> None:
        try:
            value = fn(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(out.set_exception, exc)
        else:
            loop.call_soon_threadsafe(out.set_result, value)

    threading.Thread(target=run).start()
    return out


async def test_pool_executor_returns_an_executor_bound_to_the_pool(pool: FunctionPool) -> None:
    ex = pool.executor()  # type: ignore[attr-defined]
    assert isinstance(ex, cf.Executor)
    assert isinstance(ex, PoolExecutor)
    assert ex.pool is pool
    assert await asyncio.get_running_loop().run_in_executor(ex, F.add, 1, 2) == 3


async def test_run_in_executor_on_the_pools_loop_never_blocks_it(pool: FunctionPool) -> None:
    ex = PoolExecutor(pool)
    loop = asyncio.get_running_loop()
    async with Gate() as gate:
        held = loop.run_in_executor(ex, block_gate, gate.path, "held")
        await gate.arrived("held")  # the loop runs the gate while the call blocks its worker
        assert pool.status("active") == 1  # the call is one of the pool's tasks
        gate.release("held")
        assert await held == "held"
    assert pool.status("succeeded") == 1


async def test_it_serves_as_the_loops_default_executor(pool: FunctionPool) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(PoolExecutor(pool))
    assert await loop.run_in_executor(None, F.mul, 6, 7) == 42
    assert await asyncio.gather(*(loop.run_in_executor(None, F.add, i, 1) for i in range(10))) == list(range(1, 11))


async def test_it_is_usable_from_other_threads(pool: FunctionPool) -> None:
    ex = PoolExecutor(pool)
    assert await in_thread(lambda: ex.submit(F.add, 3, 4).result(timeout=T)) == 7
    assert await in_thread(lambda: list(ex.map(F.mul, range(50), range(50)))) == [i * i for i in range(50)]
    with pytest.raises(ValueError, match="bad input"):
        await in_thread(lambda: ex.submit(F.boom, "bad input").result(timeout=T))


async def test_cancelling_the_awaiting_code_withdraws_a_call_not_started(pool: FunctionPool, tmp_path: Path) -> None:
    ex = PoolExecutor(pool)
    loop = asyncio.get_running_loop()
    marker = tmp_path / "never"
    async with Gate() as gate:
        held = [loop.run_in_executor(ex, block_gate, gate.path, f"h{i}") for i in range(2)]
        await gate.arrived("h0", "h1")  # both workers busy
        queued = loop.run_in_executor(ex, F.mark, str(marker))
        queued.cancel()
        await asyncio.sleep(0)  # asyncio hands the cancel on to the executor's future in a callback
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert pool.status("cancelled") == 1  # withdrawn from the pool, on its own loop
        gate.release("h0", "h1")
        assert await asyncio.gather(*held) == ["h0", "h1"]
    await pool.join()
    assert not marker.exists()


async def test_running_says_when_the_call_started_on_the_loop_and_from_threads(pool: FunctionPool) -> None:
    ex = PoolExecutor(pool)
    async with Gate() as gate:
        fut = ex.submit(block_gate, gate.path, "r")  # on the loop's thread: added directly
        other = await in_thread(lambda: ex.submit(block_gate, gate.path, "other"))
        await gate.arrived("r", "other")
        assert fut.running()  # asked on the loop's thread: no round trip
        assert await in_thread(fut.running)  # asked from another thread: a round trip
        assert await in_thread(other.running)
        assert not fut.cancel()
        gate.release("r", "other")
        assert await asyncio.wrap_future(fut) == "r"
        assert await asyncio.wrap_future(other) == "other"
    assert not fut.running()
    assert not await in_thread(other.running)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_call_stopped_while_it_ran_fails_instead_of_reading_as_never_run(kind: str) -> None:
    pool = FunctionPool(1, worker=kind)
    await pool.start()
    ex = PoolExecutor(pool)
    async with Gate() as gate:
        ran = ex.submit(wait_gate, gate.path, "ran")
        never = ex.submit(F.add, 1, 2)
        await gate.arrived("ran")
        await pool.aclose(cancel=True)  # stops the running call, withdraws the other
    assert ran.done()
    assert not ran.cancelled()  # it ran: cancelled() would say it never did
    assert isinstance(ran.exception(), TaskCancelled)
    assert never.cancelled()


async def test_shutdown_on_the_loop_does_not_wait_and_leaves_the_pool_running(pool: FunctionPool) -> None:
    ex = PoolExecutor(pool)
    loop = asyncio.get_running_loop()
    async with Gate() as gate:
        held = loop.run_in_executor(ex, block_gate, gate.path, "held")
        await gate.arrived("held")
        ex.shutdown(wait=True)  # on the loop thread: waiting here would block the loop forever
        with pytest.raises(RuntimeError, match="^cannot schedule new futures after shutdown$"):
            ex.submit(F.add, 1, 1)
        gate.release("held")
        assert await held == "held"  # its call finishes all the same
    assert pool.state == "running"
    assert await pool.add_task(F.add, 1, 1) == 2
    assert await loop.run_in_executor(PoolExecutor(pool), F.add, 2, 2) == 4  # a new one works


async def test_shutdown_from_a_thread_waits_for_its_own_calls_only(pool: FunctionPool) -> None:
    ex = PoolExecutor(pool)
    async with Gate() as gate:
        mine = ex.submit(block_gate, gate.path, "mine")
        other = pool.add_task(block_gate, gate.path, "other")  # the pool's, not the executor's
        await gate.arrived("mine", "other")

        def close() -> bool:
            ex.shutdown(wait=True)
            return mine.done()

        closed = in_thread(close)
        gate.release("mine")
        assert await asyncio.wait_for(closed, T) is True  # returned once its own call settled
        assert not other.done()
        gate.release("other")
        assert await other == "other"
    assert mine.result(timeout=0) == "mine"


async def test_shutdown_cancel_futures_withdraws_its_calls_not_started(pool: FunctionPool) -> None:
    ex = PoolExecutor(pool)
    async with Gate() as gate:
        held = [ex.submit(block_gate, gate.path, f"h{i}") for i in range(2)]
        await gate.arrived("h0", "h1")
        queued = [ex.submit(F.add, i, 0) for i in range(5)]
        closed = in_thread(lambda: ex.shutdown(wait=True, cancel_futures=True))
        await gate.arrived("h0", "h1")
        while not all(f.cancelled() for f in queued):  # (the loop runs the withdrawals)
            await asyncio.sleep(0.001)
        gate.release("h0", "h1")
        await asyncio.wait_for(closed, T)
    assert [f.result(timeout=0) for f in held] == ["h0", "h1"]
    assert pool.status("cancelled") == 5


async def test_waiting_on_the_pools_loop_raises_instead_of_blocking_it(pool: FunctionPool) -> None:
    ex = PoolExecutor(pool)
    async with Gate() as gate:
        held = ex.submit(block_gate, gate.path, "held")
        await gate.arrived("held")
        with pytest.raises(RuntimeError, match="block that loop"):
            held.result(timeout=5)
        with pytest.raises(RuntimeError, match="block that loop"):
            next(ex.map(block_gate, [gate.path], ["mapped"]))
        gate.release("held")
        assert await asyncio.wrap_future(held) == "held"
        assert held.result() == "held"  # done: nothing to wait for


async def test_calls_wait_for_room_on_the_loop_not_in_the_caller() -> None:
    async with FunctionPool(1, worker="thread", max_queue=1) as pool, Gate() as gate:
        ex = PoolExecutor(pool)
        held = ex.submit(block_gate, gate.path, "held")
        await gate.arrived("held")
        waiting = [ex.submit(F.add, i, 0) for i in range(3)]  # the queue holds one: never raises
        gate.release("held")
        done = await asyncio.gather(*(asyncio.wrap_future(f) for f in waiting))
        assert done == [0, 1, 2]
        assert held.result(timeout=0) == "held"


async def test_a_closed_pool_refuses_calls() -> None:
    pool = FunctionPool(1, worker="thread")
    with pytest.raises(RuntimeError, match="needs a running pool"):
        PoolExecutor(pool)
    async with pool:
        ex = PoolExecutor(pool)
        assert await asyncio.wrap_future(ex.submit(F.add, 1, 1)) == 2
    with pytest.raises(PoolClosed):
        ex.submit(F.add, 1, 1)
    with pytest.raises(PoolClosed):
        pool.executor()
