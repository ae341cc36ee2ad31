"""Adding work: max_queue and QueueFull, submit(), map(), PoolClosed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Iterator

import pytest

from taskpool import FunctionPool, PoolClosed, QueueFull, TaskCancelled, TaskpoolError, TaskState

from . import _funcs as f
from ._support import Gate, collect

pytestmark = pytest.mark.asyncio


# --- max_queue / QueueFull -----------------------------------------------------------------


@pytest.mark.uvloop
async def test_max_queue_bounds_queued_tasks(kind: str) -> None:
    async with FunctionPool(1, worker=kind, max_queue=2) as pool, Gate() as gate:
        running = pool.add_task(f.wait_gate, gate.path, "run")
        await gate.arrived("run")
        queued = [pool.add_task(f.add, i, 0) for i in range(2)]  # running ones do not count
        with pytest.raises(QueueFull, match="max_queue=2") as info:
            pool.add_task(f.add, 9, 9)
        assert isinstance(info.value, TaskpoolError)
        assert pool.status("total") == 3  # the refused task left no trace
        assert pool.status("remaining") == 3  # two waiting to start (queued or in a window), one running
        queued[0].cancel()  # a cancelled task frees its place at once
        extra = pool.add_task(f.add, 5, 5)
        gate.release("run")
        assert [await running, await queued[1], await extra] == ["run", 1, 10]


async def test_submit_waits_for_room(kind: str) -> None:
    async with FunctionPool(1, worker=kind, max_queue=1) as pool, Gate() as gate:
        running = pool.add_task(f.wait_gate, gate.path, "run")
        await gate.arrived("run")
        queued = pool.add_task(f.add, 1, 1)
        first = asyncio.ensure_future(pool.submit(f.add, 2, 2))
        second = asyncio.ensure_future(pool.submit(f.add, 3, 3, meta="second"))
        for _ in range(3):
            await asyncio.sleep(0)
        assert not first.done() and not second.done()
        assert pool.status("total") == 2
        gate.release("run")
        t1 = await first
        t2 = await second
        assert t1.id < t2.id  # room is given in the order it was asked for
        assert t2.meta == "second"
        assert [await running, await queued, await t1, await t2] == ["run", 2, 4, 6]


async def test_submit_returns_at_once_when_there_is_room(kind: str) -> None:
    async with FunctionPool(1, worker=kind, max_queue=5) as pool:
        task = await pool.submit(f.add, 1, 2)
        assert await task == 3
    async with FunctionPool(1, worker=kind) as pool:  # unbounded
        tasks = [await pool.submit(f.add, i, i) for i in range(10)]
        assert [await t for t in tasks] == [2 * i for i in range(10)]


async def test_cancelling_a_waiting_submit_adds_nothing(kind: str) -> None:
    async with FunctionPool(1, worker=kind, max_queue=1) as pool, Gate() as gate:
        running = pool.add_task(f.wait_gate, gate.path, "run")
        await gate.arrived("run")
        queued = pool.add_task(f.add, 1, 1)
        waiting = asyncio.ensure_future(pool.submit(f.add, 2, 2))
        behind = asyncio.ensure_future(pool.submit(f.add, 3, 3))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert pool.status("total") == 2
        gate.release("run")
        t = await behind  # the cancelled waiter did not swallow the room
        assert await t == 6
        await running
        await queued
        await pool.join()
        assert pool.status("total") == 3


async def test_submit_waiting_when_the_pool_closes_raises_pool_closed(kind: str) -> None:
    async with Gate() as gate:
        pool = FunctionPool(1, worker=kind, max_queue=1)
        await pool.start()
        pool.add_task(f.wait_gate, gate.path, "run")
        await gate.arrived("run")
        pool.add_task(f.add, 1, 1)
        waiting = asyncio.ensure_future(pool.submit(f.add, 2, 2))
        await asyncio.sleep(0)
        await pool.aclose(cancel=True)
        with pytest.raises(PoolClosed):
            await waiting
        assert pool.status("total") == 2


# --- PoolClosed ----------------------------------------------------------------------------


async def test_adding_after_close_raises_pool_closed(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        pass
    with pytest.raises(PoolClosed, match="closed") as info:
        pool.add_task(f.add, 1, 2)
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, TaskpoolError)
    with pytest.raises(PoolClosed):
        await pool.submit(f.add, 1, 2)
    with pytest.raises(PoolClosed):
        await anext(pool.map(f.square, [1, 2]))
    assert pool.status("total") == 0


async def test_adding_while_closing_from_outside_raises_pool_closed(kind: str) -> None:
    async with Gate() as gate:
        pool = FunctionPool(1, worker=kind)
        await pool.start()
        task = pool.add_task(f.wait_gate, gate.path, "run")
        await gate.arrived("run")
        closing = asyncio.ensure_future(pool.aclose())
        await asyncio.sleep(0)
        assert pool.state == "closing"
        with pytest.raises(PoolClosed, match="closing"):
            pool.add_task(f.add, 1, 2)
        gate.release("run")
        await closing
        assert await task == "run"
        assert pool.status("total") == 1


# --- map -----------------------------------------------------------------------------------


@pytest.mark.uvloop
async def test_map_ordered_yields_in_input_order(kind: str) -> None:
    async with FunctionPool(3, worker=kind) as pool, Gate() as gate:
        async with pool.events.subscribe("task.succeeded") as done:
            it = pool.map(functools.partial(f.wait_gate, gate.path), ["a", "b", "c"])
            first = asyncio.ensure_future(anext(it))
            await gate.arrived("a", "b", "c")
            gate.release("c")
            gate.release("b")
            await collect(done, 2)  # b and c finished...
            assert not first.done()  # ...but a comes first
            gate.release("a")
            assert await first == "a"
            assert [x async for x in it] == ["b", "c"]


@pytest.mark.uvloop
async def test_map_unordered_yields_as_tasks_finish(kind: str) -> None:
    async with FunctionPool(3, worker=kind) as pool, Gate() as gate:
        it = pool.map(functools.partial(f.wait_gate, gate.path), ["a", "b", "c"], ordered=False)
        first = asyncio.ensure_future(anext(it))
        await gate.arrived("a", "b", "c")
        gate.release("c")
        assert await first == "c"
        gate.release("a")
        assert await anext(it) == "a"
        gate.release("b")
        assert await anext(it) == "b"
        with pytest.raises(StopAsyncIteration):
            await anext(it)


@pytest.mark.parametrize("ordered", [True, False])
async def test_map_sync_and_async_iterables(kind: str, ordered: bool) -> None:
    async def agen() -> AsyncIterator[int]:
        for i in range(10):
            await asyncio.sleep(0)
            yield i

    async with FunctionPool(2, worker=kind) as pool:
        from_list = [x async for x in pool.map(f.square, list(range(10)), ordered=ordered)]
        from_agen = [x async for x in pool.map(f.async_square, agen(), ordered=ordered)]
        from_range = [x async for x in pool.map(f.square, range(10), ordered=ordered, window=1)]
        empty = [x async for x in pool.map(f.square, [], ordered=ordered)]
    expected = [i * i for i in range(10)]
    if ordered:
        assert from_list == from_agen == from_range == expected
    else:
        assert sorted(from_list) == sorted(from_agen) == expected
        assert from_range == expected  # window=1: one at a time
    assert empty == []


@pytest.mark.parametrize("source", ["sync", "async"])
async def test_map_consumes_its_input_lazily(kind: str, source: str) -> None:
    pulled: list[str] = []

    def gen() -> Iterator[str]:
        for i in range(100):
            pulled.append(str(i))
            yield str(i)

    async def agen() -> AsyncIterator[str]:
        for item in gen():
            yield item

    async with FunctionPool(3, worker=kind) as pool, Gate() as gate:
        it = pool.map(functools.partial(f.wait_gate, gate.path), gen() if source == "sync" else agen(), window=2)
        first = asyncio.ensure_future(anext(it))
        await gate.arrived("0", "1")
        assert pulled == ["0", "1"]  # no further than the window, though a worker is idle
        assert pool.status("total") == 2
        gate.release("0")
        assert await first == "0"
        assert pulled == ["0", "1"]  # nothing pulled until the consumer asks again
        second = asyncio.ensure_future(anext(it))
        await gate.arrived("2")
        assert pulled == ["0", "1", "2"]
        gate.release("1")
        assert await second == "1"
        await it.aclose()  # closing early cancels what is in flight
        await gate.hung_up("2")
        assert pulled == ["0", "1", "2"]
        assert pool.status("cancelled") == 1


async def test_map_default_window_is_twice_the_pool_size(kind: str) -> None:
    pulled: list[str] = []

    def gen() -> Iterator[str]:
        for i in range(100):
            pulled.append(str(i))
            yield str(i)

    async with FunctionPool(2, worker=kind) as pool, Gate() as gate:
        async with contextlib.aclosing(pool.map(functools.partial(f.wait_gate, gate.path), gen())) as it:
            first = asyncio.ensure_future(anext(it))
            await gate.arrived("0", "1")
            assert pulled == ["0", "1", "2", "3"]
            gate.release("0")
            assert await first == "0"


@pytest.mark.parametrize("ordered", [True, False])
async def test_map_failure_raises_and_cancels_the_rest(kind: str, ordered: bool) -> None:
    pulled: list[str] = []

    def gen() -> Iterator[str]:
        for tag in ["a", "b", "c", "d", "e"]:
            pulled.append(tag)
            yield tag

    async with FunctionPool(3, worker=kind) as pool, Gate() as gate:
        async with pool.events.subscribe("task.*") as sub:
            it = pool.map(functools.partial(f.wait_gate, gate.path), gen(), ordered=ordered, window=3)
            first = asyncio.ensure_future(anext(it))
            await gate.arrived("a", "b", "c")
            gate.release("a", fail=True)
            with pytest.raises(ValueError, match="a"):
                await first
            await gate.hung_up("b", "c")  # the rest were cancelled, in their workers too
            with pytest.raises(StopAsyncIteration):
                await anext(it)
            await pool.join()
            events = [e async for e in _drain(sub)]
        assert pulled == ["a", "b", "c"]
        assert pool.status("failed") == 1
        assert pool.status("cancelled") == 2
        assert {e.topic for e in events if e.topic != "task.queued" and e.topic != "task.started"} == {
            "task.failed",
            "task.cancelled",
        }


async def _drain(sub: object) -> AsyncIterator[object]:
    while (event := sub.get_nowait()) is not None:  # type: ignore[attr-defined]
        yield event


async def test_map_failure_unordered_raises_before_earlier_items_finish(kind: str) -> None:
    async with FunctionPool(3, worker=kind) as pool, Gate() as gate:
        it = pool.map(functools.partial(f.wait_gate, gate.path), ["a", "b", "c"], ordered=False)
        first = asyncio.ensure_future(anext(it))
        await gate.arrived("a", "b", "c")
        gate.release("b", fail=True)
        with pytest.raises(ValueError, match="b"):
            await first
        await gate.hung_up("a", "c")
        await pool.join()
        assert (pool.status("failed"), pool.status("cancelled")) == (1, 2)


async def test_map_rejects_bad_arguments(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        with pytest.raises(ValueError, match="window"):
            pool.map(f.square, [1], window=0)
        with pytest.raises(TypeError, match="iterable"):
            pool.map(f.square, 5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="callable"):
            pool.map(5, [1])  # type: ignore[arg-type]


async def test_map_task_states_after_cancel(kind: str) -> None:
    # A map abandoned by its consumer leaves no task behind: all settle as cancelled.
    async with FunctionPool(2, worker=kind) as pool, Gate() as gate:
        it = pool.map(functools.partial(f.wait_gate, gate.path), ["a", "b"], window=2)
        consumer = asyncio.ensure_future(anext(it))
        await gate.arrived("a", "b")
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        await it.aclose()
        await pool.join()
        raw = pool.status("cancelled", "raw")
        assert [r.state for r in raw] == [TaskState.CANCELLED] * 2
        assert all(r.error and r.error.startswith(TaskCancelled.__name__) for r in raw)
