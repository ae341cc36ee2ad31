"""Task behaviour on every worker kind: results, errors, state, callbacks, cancel, timeouts."""

from __future__ import annotations

import asyncio
import functools
import os
import threading

import pytest

from taskpool import (
    FunctionPool,
    Task,
    TaskCancelled,
    TaskRecord,
    TaskState,
    TaskTimeout,
)

from . import _funcs as f
from ._support import Gate, collect, collect_until, settle

pytestmark = pytest.mark.asyncio


# --- results and errors --------------------------------------------------------------------


@pytest.mark.uvloop
async def test_plain_and_async_functions_give_their_results(kind: str) -> None:
    async with FunctionPool(2, worker=kind) as pool:
        t1 = pool.add_task(f.add, 1, 2)
        t2 = pool.add_task(f.async_add, 3, 4)
        t3 = pool.add_task(f.identity, {"nested": [1, (2, 3)]})
        assert isinstance(t1, Task)
        assert await t1 == 3
        assert await t2 == 7
        assert await t3 == {"nested": [1, (2, 3)]}
        assert await t1 == 3  # awaiting again gives the same result
        assert t1.result() == 3


async def test_keyword_arguments_go_through_partial(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        task = pool.add_task(functools.partial(f.with_kwargs, 1, key="value"), 2)
        assert await task == ((1, 2), {"key": "value"})


@pytest.mark.uvloop
async def test_a_failing_task_raises_the_same_exception_type(kind: str) -> None:
    async with FunctionPool(2, worker=kind) as pool:
        sync = pool.add_task(f.fail, "bad input")
        asyn = pool.add_task(f.async_fail, "async bad")
        with pytest.raises(ValueError, match="^bad input$") as sync_info:
            await sync
        with pytest.raises(f.CustomError, match="^async bad$"):
            await asyn
        assert type(sync.exception()) is ValueError
        assert sync.exception() is sync_info.value  # result(), exception() and await agree
        assert sync.state is TaskState.FAILED
        assert sync.record.error == "ValueError: bad input"
        assert asyn.record.error == "CustomError: async bad"
        with pytest.raises(ValueError, match="bad input"):
            sync.result()
        assert pool.status("failed") == 2


async def test_meta_is_kept_on_task_record_and_events(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        async with pool.events.subscribe("task.*") as sub:
            meta = {"job": "fib", "n": 32}
            task = pool.add_task(f.add, 1, 1, meta=meta)
            await task
            events = await collect(sub, 3)
        assert task.meta is meta
        assert task.record.meta == meta
        assert [e.meta for e in events] == [meta] * 3
        assert pool.add_task(f.add, 1, 1).meta is None


async def test_task_ids_are_unique_and_increasing(kind: str) -> None:
    async with FunctionPool(2, worker=kind) as pool:
        tasks = [pool.add_task(f.add, i, 0) for i in range(20)]
        ids = [t.id for t in tasks]
        assert ids == sorted(ids)
        assert len(set(ids)) == 20
        await pool.join()
        more = pool.add_task(f.add, 0, 0)
        assert more.id > ids[-1]


async def test_record_fields(kind: str) -> None:
    async with FunctionPool(2, worker=kind) as pool:
        ok = pool.add_task(f.add, 1, 2, meta="m")
        bad = pool.add_task(f.fail, "nope")
        await settle(ok)
        await settle(bad)
    rec = ok.record
    assert isinstance(rec, TaskRecord)
    assert (rec.id, rec.meta, rec.state, rec.error) == (ok.id, "m", TaskState.SUCCEEDED, None)
    assert rec.worker_id in (0, 1)
    assert rec.queued_at <= rec.started_at <= rec.finished_at
    assert bad.record.error == "ValueError: nope"
    with pytest.raises(AttributeError):
        rec.state = TaskState.FAILED  # type: ignore[misc]  # frozen


# --- state and the future-like interface ----------------------------------------------------


@pytest.mark.uvloop
async def test_state_transitions_and_accessors_before_and_after_settling(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        running = pool.add_task(f.wait_gate, gate.path, "run", 42)
        queued = pool.add_task(f.add, 1, 2)
        await gate.arrived("run")
        assert running.state is TaskState.RUNNING
        assert running.worker_id == 0
        assert queued.state is TaskState.QUEUED
        assert queued.worker_id is None
        for t in (running, queued):
            assert not t.done()
            assert not t.cancelled()
            with pytest.raises(asyncio.InvalidStateError):
                t.result()
            with pytest.raises(asyncio.InvalidStateError):
                t.exception()
        gate.release("run")
        assert await running == 42
        assert await queued == 3
        for t, value in ((running, 42), (queued, 3)):
            assert t.state is TaskState.SUCCEEDED
            assert t.done()
            assert t.result() == value
            assert t.exception() is None


async def test_state_sequence_seen_in_events(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        async with pool.events.subscribe("task.*") as sub:
            ok = pool.add_task(f.add, 1, 2)
            bad = pool.add_task(f.fail, "x")
            await settle(ok)
            await settle(bad)
            events = await collect(sub, 6)
    by_task = {t.id: [(e.topic, e.state) for e in events if e.task_id == t.id] for t in (ok, bad)}
    assert by_task[ok.id] == [
        ("task.queued", TaskState.QUEUED),
        ("task.started", TaskState.RUNNING),
        ("task.succeeded", TaskState.SUCCEEDED),
    ]
    assert by_task[bad.id] == [
        ("task.queued", TaskState.QUEUED),
        ("task.started", TaskState.RUNNING),
        ("task.failed", TaskState.FAILED),
    ]
    failed = next(e for e in events if e.topic == "task.failed")
    assert failed.error == "ValueError: x"
    assert failed.worker_id == 0


async def test_done_callbacks_before_and_after_settling(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        calls: list[tuple[str, Task[object], TaskState]] = []
        async_called = asyncio.Event()

        async def async_cb(task: Task[object]) -> None:
            await asyncio.sleep(0)
            calls.append(("async", task, task.state))
            async_called.set()

        task = pool.add_task(f.wait_gate, gate.path, "t")
        task.add_done_callback(lambda t: calls.append(("before", t, t.state)))
        task.add_done_callback(async_cb)
        await gate.arrived("t")
        assert calls == []
        gate.release("t")
        await task
        assert calls[0] == ("before", task, TaskState.SUCCEEDED)  # before await returned
        task.add_done_callback(lambda t: calls.append(("after", t, t.state)))
        assert ("after", task, TaskState.SUCCEEDED) in calls  # called even though already settled
        await asyncio.wait_for(async_called.wait(), 10)
        assert ("async", task, TaskState.SUCCEEDED) in calls
        async_called.clear()
        task.add_done_callback(async_cb)  # async, after settling
        await asyncio.wait_for(async_called.wait(), 10)
        assert [c[0] for c in calls].count("async") == 2
        with pytest.raises(TypeError, match="callable"):
            task.add_done_callback("not callable")  # type: ignore[arg-type]


async def test_done_callbacks_see_failures_and_cancellation(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        seen: list[tuple[int, BaseException | None]] = []
        blocker = pool.add_task(f.wait_gate, gate.path, "b")
        failing = pool.add_task(f.fail, "oops")
        cancelled = pool.add_task(f.add, 1, 1)
        for t in (failing, cancelled):
            t.add_done_callback(lambda t: seen.append((t.id, t.exception())))
        cancelled.cancel()
        gate.release("b")
        await blocker
        await settle(failing)
        assert [(i, type(e)) for i, e in seen] == [(cancelled.id, TaskCancelled), (failing.id, ValueError)]


# --- cancel -------------------------------------------------------------------------------


@pytest.mark.uvloop
async def test_cancel_a_queued_task(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        caught: list[tuple[BaseException, Task[object]]] = []
        pool.catch(lambda exc, t: caught.append((exc, t)))
        blocker = pool.add_task(f.wait_gate, gate.path, "blocker")
        victim = pool.add_task(f.wait_gate, gate.path, "victim")
        await gate.arrived("blocker")
        assert victim.cancel() is True
        assert victim.state is TaskState.CANCELLED
        assert victim.cancelled() and victim.done()
        assert victim.cancel() is False  # already settled
        with pytest.raises(TaskCancelled):
            await victim
        assert isinstance(victim.exception(), TaskCancelled)
        assert victim.record.error.startswith("TaskCancelled")
        assert [(type(e), t) for e, t in caught] == [(TaskCancelled, victim)]
        assert pool.status() == {
            "queued": 0,
            "active": 1,
            "completed": 1,
            "succeeded": 0,
            "failed": 0,
            "cancelled": 1,
            "remaining": 1,
            "started": 1,
            "total": 2,
        }
        gate.release("blocker")
        await blocker
        await pool.join()
        assert "victim" not in gate.arrivals  # it never ran
        assert pool.status("started") == 1


@pytest.mark.uvloop
async def test_cancel_a_running_task_stops_its_work(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        caught: list[Task[object]] = []
        pool.catch(lambda exc, t: caught.append(t))
        marker = os.path.join(gate._dir, "after-await")
        task = pool.add_task(f.wait_gate_then_mark, gate.path, "run", marker)
        await gate.arrived("run")
        assert task.cancel() is True
        assert task.state is TaskState.CANCELLED
        assert task.cancel() is False
        with pytest.raises(TaskCancelled):
            await task
        await gate.hung_up("run")  # the coroutine was cancelled at its await
        assert caught == [task]
        counts = pool.status()
        assert (counts["active"], counts["cancelled"], counts["started"]) == (0, 1, 1)
        # The worker is free again and runs the next task.
        assert await pool.add_task(f.add, 2, 2) == 4
        gate.open()
        await pool.join()
        assert not os.path.exists(marker)


async def test_cancel_a_settled_task_returns_false(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        ok = pool.add_task(f.add, 1, 1)
        bad = pool.add_task(f.fail, "x")
        await ok
        await settle(bad)
        assert ok.cancel() is False
        assert bad.cancel() is False
        assert ok.state is TaskState.SUCCEEDED
        assert bad.state is TaskState.FAILED
        assert pool.status("cancelled") == 0


@pytest.mark.uvloop
async def test_cancelling_the_awaiting_code_does_not_cancel_the_task(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        task = pool.add_task(f.wait_gate, gate.path, "t", "result")
        await gate.arrived("t")
        waiter = asyncio.ensure_future(task)  # an awaiter of its own
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):
                await task
        assert task.state is TaskState.RUNNING
        assert "t" not in gate.hangups
        gate.release("t")
        assert await task == "result"
        assert pool.status("cancelled") == 0


# --- timeouts -------------------------------------------------------------------------------


@pytest.mark.uvloop
async def test_async_task_timeout_stops_the_work(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        marker = os.path.join(gate._dir, "after-await")
        task = pool.add_task(f.wait_gate_then_mark, gate.path, "slow", marker, timeout=0.05)
        with pytest.raises(TaskTimeout) as info:
            await task
        assert isinstance(info.value, TimeoutError)
        assert task.state is TaskState.FAILED
        assert task.record.error.startswith("TaskTimeout")
        await gate.hung_up("slow")  # its await was interrupted
        gate.open()  # were it still running, it would now go on and leave the marker
        assert await pool.add_task(f.add, 1, 1) == 2  # the same (only) worker is free again
    assert not os.path.exists(marker)
    assert pool.status("failed") == 1


async def test_sleeping_task_times_out(kind: str) -> None:
    # The sleep is the work being timed out, not synchronisation.
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        marker = os.path.join(gate._dir, "slept")
        with pytest.raises(TaskTimeout):
            await pool.add_task(f.sleep_then_mark, 30, marker, timeout=0.05)
    assert not os.path.exists(marker)


async def test_pool_task_timeout_is_the_default_and_per_task_timeout_overrides_it(kind: str) -> None:
    async with FunctionPool(2, worker=kind, task_timeout=0.05) as pool, Gate() as gate:
        default = pool.add_task(f.wait_gate, gate.path, "default")
        longer = pool.add_task(f.wait_gate, gate.path, "longer", timeout=60)
        assert (default.timeout, longer.timeout) == (0.05, 60)
        with pytest.raises(TaskTimeout):
            await default
        await gate.arrived("longer")
        gate.release("longer")  # well after the pool's 0.05 s
        assert await longer == "longer"


async def test_timeout_counts_from_the_start_not_from_queueing(kind: str) -> None:
    async with FunctionPool(2, worker=kind) as pool, Gate() as gate:
        blocker = pool.add_task(f.wait_gate, gate.path, "blocker")
        clock = pool.add_task(f.wait_gate, gate.path, "clock", timeout=0.05)
        quick = pool.add_task(f.add, 1, 2, timeout=0.05)  # waits in the queue longer than that
        await gate.arrived("blocker", "clock")
        assert quick.state is TaskState.QUEUED
        with pytest.raises(TaskTimeout):
            await clock  # 0.05 s have passed since quick was queued
        assert await quick == 3
        gate.release("blocker")
        await blocker


async def test_invalid_timeouts_are_rejected(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        for bad in (0, -1, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="timeout"):
                pool.add_task(f.add, 1, 2, timeout=bad)
        with pytest.raises(TypeError, match="timeout"):
            pool.add_task(f.add, 1, 2, timeout="1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="callable"):
            pool.add_task("not a function")  # type: ignore[arg-type]
        assert pool.status("total") == 0


@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_blocking_sync_task_retires_its_thread_worker_and_capacity_is_kept(how: str) -> None:
    release = threading.Event()
    started = threading.Event()
    try:
        async with FunctionPool(2, worker="thread") as pool, Gate() as gate:
            async with pool.events.subscribe("worker.*") as sub:
                timeout = 0.05 if how == "timeout" else None
                stuck = pool.add_task(f.block_on_event, release, started, timeout=timeout)
                if how == "cancel":
                    await asyncio.to_thread(started.wait, 10)
                    assert stuck.cancel() is True
                    with pytest.raises(TaskCancelled):
                        await stuck
                else:
                    with pytest.raises(TaskTimeout):
                        await stuck
                events = await collect_until(sub, lambda e: e.topic == "worker.started")
            slot = stuck.worker_id
            assert [(e.topic, e.reason) for e in events] == [
                ("worker.exited", "retired"),
                ("worker.restarted", "retired"),
                ("worker.started", None),
            ]
            assert {e.worker_id for e in events} == {slot}
            snap = pool.snapshot()
            assert [w.restarts for w in snap.workers if w.id == slot] == [1]
            # Both workers take work at once again, while the old thread is still blocked.
            a = pool.add_task(f.wait_gate, gate.path, "a")
            b = pool.add_task(f.wait_gate, gate.path, "b")
            await gate.arrived("a", "b")
            assert pool.status("active") == 2
            assert not release.is_set()
            gate.open()
            assert (await a, await b) == ("a", "b")
            assert pool.status("failed" if how == "timeout" else "cancelled") == 1
    finally:
        release.set()  # let the retired thread finish: the leak check joins it


async def test_add_task_from_another_thread_is_refused() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        with pytest.raises(RuntimeError, match="thread"):
            await asyncio.to_thread(pool.add_task, f.add, 1, 2)
        assert pool.status("total") == 0
