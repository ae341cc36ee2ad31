"""Truthful status and task life, on every worker kind.

What a dashboard reads must be what happens: ``active`` counts what workers hold, run
times are taken in the worker, a task cancelled before its worker started it never runs,
the pool keeps no reference to a settled task's result, and no traceback a task hands
back can take its worker down.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import traceback
import weakref
from typing import Any

import pytest

from taskpool import FunctionPool, SerializationError, StatusType, TaskCancelled, TaskFailed, TaskpoolError

from . import _funcs as f
from ._support import Gate, caps
from .conftest import OFFLOOP_KINDS

pytestmark = pytest.mark.asyncio


# --- task functions (module-level: process workers import them by reference) -------------


class Payload:
    """A result that can be weakly referenced (and pickled)."""

    def __init__(self, n: int) -> None:
        self.n = n


def make_payload(n: int) -> Payload:
    return Payload(n)


def busy_for(seconds: float) -> float:
    """Spin (no sleeping: a timer's slack would blur the measure) for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def timed_busy_for(seconds: float) -> float:
    """Spin for ``seconds``; return how long the call itself took, as it measured it."""
    t0 = time.time()
    busy_for(seconds)
    return time.time() - t0


async def async_sleep_for(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


def boom() -> None:
    raise ZeroDivisionError("boom")


async def async_boom() -> None:
    await asyncio.sleep(0)
    raise ZeroDivisionError("async boom")


def raise_generator_exit() -> None:
    raise GeneratorExit


class Unsendable:
    """Pickles in the parent's direction only: the worker's pickling of it fails."""

    def __reduce__(self) -> Any:
        raise f.CustomError("cannot pickle me")


def make_unsendable() -> Unsendable:
    return Unsendable()


# --- active counts what workers hold -------------------------------------------------


async def test_active_never_reads_zero_while_every_worker_is_busy(kind: str) -> None:
    fn = busy_for if kind in OFFLOOP_KINDS else async_sleep_for
    samples: list[int] = []
    async with FunctionPool(2, worker=kind) as pool:
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                samples.append(pool.status("active"))
                await asyncio.sleep(0.002)  # a sampling rate, as a dashboard polls

        sampler = asyncio.ensure_future(sample())
        await pool.add_task(fn, 0.005)  # warm up (process: the function's first import)
        samples.clear()
        results = [r async for r in pool.map(fn, [0.005] * 120)]
        done.set()
        await sampler
    assert results == [0.005] * 120
    assert len(samples) >= 20
    busy = sum(1 for n in samples if n >= 1)
    assert busy >= 0.95 * len(samples), f"active read 0 in {len(samples) - busy} of {len(samples)} samples"


async def test_a_task_waiting_in_a_window_counts_as_active_not_queued(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        for _ in range(20):  # short calls open an adaptive window
            await pool.add_task(f.add, 1, 1)
        running = pool.add_task(f.wait_gate, gate.path, "run")
        await gate.arrived("run")
        waiting = [pool.add_task(f.add, i, 0) for i in range(3)]
        counts = pool.status()
        held = counts["active"]
        assert held >= 1
        assert counts["queued"] == 4 - held
        records = pool.status("active", StatusType.RAW)
        assert [r.id for r in records][:1] == [running.id]
        assert all(r.dispatched_at is not None for r in records)
        assert all(r.dispatched_at is None for r in pool.status("queued", StatusType.RAW))
        gate.release("run")
        assert [await t for t in waiting] == [0, 1, 2]


# --- times taken in the worker ---------------------------------------------------------


async def test_run_time_is_measured_in_the_worker(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        await pool.add_task(f.add, 1, 1)  # warm up
        task = pool.add_task(timed_busy_for, 0.020)
        own = await task
        rec = task.record
    assert rec.started_at is not None and rec.finished_at is not None and rec.dispatched_at is not None
    run = rec.finished_at - rec.started_at
    assert own >= 0.020
    assert abs(run - own) <= 0.002, f"recorded {run * 1000:.2f} ms for a call that ran {own * 1000:.2f} ms"
    assert rec.queued_at <= rec.dispatched_at <= rec.started_at + 0.001  # same clock, to a millisecond


async def test_start_and_finish_times_of_short_tasks_reported_together_stay_apart(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        tasks = [pool.add_task(timed_busy_for, 0.002) for _ in range(10)]
        owns = [await t for t in tasks]
    runs = [t.record.finished_at - t.record.started_at for t in tasks]  # type: ignore[operator]
    assert all(abs(run - own) <= 0.002 for run, own in zip(runs, owns, strict=True)), (runs, owns)
    for a, b in zip(tasks, tasks[1:], strict=False):  # one worker: one after the other
        assert a.record.finished_at <= b.record.started_at + 1e-4  # type: ignore[operator]


# --- start callbacks ----------------------------------------------------------------------


async def test_start_callback_runs_once_before_done_callbacks(kind: str) -> None:
    calls: list[tuple[str, int]] = []
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        started = asyncio.Event()

        def on_start(t: Any) -> None:
            calls.append(("start", t.id))
            started.set()

        task = pool.add_task(f.wait_gate, gate.path, "t")
        task.add_done_callback(lambda t: calls.append(("done", t.id)))
        task.add_start_callback(on_start)
        await asyncio.wait_for(started.wait(), 10)
        await gate.arrived("t")
        assert calls == [("start", task.id)]
        assert task.started_at is not None
        late: list[int] = []
        task.add_start_callback(lambda t: late.append(t.id))  # already started: called at once
        assert late == [task.id]
        gate.release("t")
        await task
        fast = pool.add_task(f.add, 1, 2)
        order: list[str] = []
        fast.add_start_callback(lambda t: order.append("start"))
        fast.add_done_callback(lambda t: order.append("done"))
        await fast
    assert calls == [("start", task.id), ("done", task.id)]
    assert order == ["start", "done"]


async def test_start_callback_never_runs_for_a_task_cancelled_before_it_started(kind: str) -> None:
    calls: list[int] = []
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        blocker = pool.add_task(f.wait_gate, gate.path, "b")
        await gate.arrived("b")
        never = pool.add_task(f.add, 1, 2)
        never.add_start_callback(lambda t: calls.append(t.id))
        assert never.cancel() is True
        never.add_start_callback(lambda t: calls.append(-t.id))  # settled unstarted: never called
        gate.release("b")
        await blocker
        await pool.add_task(f.add, 0, 0)
    assert calls == []
    with pytest.raises(TaskCancelled):
        never.result()


# --- cancel before start means never runs ----------------------------------------------------


async def test_a_cancelled_task_in_a_workers_window_never_runs(kind: str, tmp_path: Any) -> None:
    marker = str(tmp_path / "ran")
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        for _ in range(20):  # short calls open an adaptive window
            await pool.add_task(f.add, 1, 1)
        blocker = pool.add_task(f.wait_gate, gate.path, "b")
        await gate.arrived("b")
        victims = [pool.add_task(f.mark, f"{marker}-{i}") for i in range(3)]
        held_before = pool.status("active")
        assert all(t.cancel() for t in victims)
        assert pool.status("active") <= held_before
        gate.release("b")
        await blocker
        await pool.add_task(f.add, 0, 0)  # the worker has gone past where they were
        assert pool.status("cancelled") == 3
    assert not [p for p in os.listdir(tmp_path) if p.startswith("ran")]
    assert all(t.record.started_at is None for t in victims)


async def test_a_cancelled_task_behind_a_blocking_call_never_runs(offloop_kind: str, tmp_path: Any) -> None:
    # The calls reach the worker together; it blocks in plain code on the first while the
    # others are cancelled: it must see the cancels before it starts the next call.
    marker = str(tmp_path / "ran")
    async with FunctionPool(1, worker=offloop_kind) as pool, Gate() as gate:
        for _ in range(20):  # short calls open an adaptive window
            await pool.add_task(f.add, 1, 1)
        blocker = pool.add_task(f.block_gate, gate.path, "b")
        victims = [pool.add_task(f.mark, f"{marker}-{i}") for i in range(5)]
        kept = pool.add_task(f.add, 2, 2)
        assert pool.status("active") == 7  # all handed to the worker at once
        await gate.arrived("b")
        assert all(t.cancel() for t in victims)
        for _ in range(3):
            await asyncio.sleep(0)  # loop turns: the pool writes the cancels out
        gate.release("b")
        await blocker
        assert await kept == 4
    assert not [p for p in os.listdir(tmp_path) if p.startswith("ran")]


async def test_cancelling_many_submitted_calls_runs_none_of_the_cancelled(kind: str, tmp_path: Any) -> None:
    async with FunctionPool(2, worker=kind) as pool, Gate() as gate:
        blockers = [pool.add_task(f.wait_gate, gate.path, f"b{i}") for i in range(2)]
        await gate.arrived("b0", "b1")
        tasks = [pool.add_task(f.mark, str(tmp_path / f"m{i}")) for i in range(50)]
        assert all(t.cancel() for t in tasks)
        gate.open()
        for b in blockers:
            await b
        await pool.join()
    assert os.listdir(tmp_path) == []


# --- no references kept after settle ------------------------------------------------------


@pytest.mark.parametrize("hooks", ["none", "per_task", "all_settled"])
async def test_a_settled_result_is_freed_once_the_caller_drops_it(kind: str, hooks: str) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        if hooks == "per_task":
            pool.then(lambda r, t: None).race(lambda r, t: None).catch(lambda e, t: None)
        elif hooks == "all_settled":
            pool.all_settled(lambda ts: None)
        task = pool.add_task(make_payload, 7)
        result = await task
        ref = weakref.ref(result)
        assert result.n == 7
        del result, task
        for i in range(5):  # the pool keeps running other work
            assert await pool.add_task(f.add, i, 1) == i + 1
        if hooks == "all_settled":
            # An all_settled hook is owed the round's tasks: they are kept until it ends.
            await pool.join()
        gc.collect()
        assert ref() is None, gc.get_referrers(ref())


# --- tracebacks cannot take a worker down ---------------------------------------------------


@pytest.mark.parametrize("fn", [boom, async_boom])
async def test_clearing_a_tasks_traceback_frames_leaves_the_pool_serving(kind: str, fn: Any) -> None:
    pool = FunctionPool(1, worker=kind)
    await pool.start()
    try:
        for _ in range(3):
            try:
                await pool.add_task(fn)
            except ZeroDivisionError as exc:  # what unittest's assertRaises does
                traceback.clear_frames(exc.__traceback__)
                tb = exc.__traceback__
                names = []
                while tb is not None:
                    names.append(tb.tb_frame.f_code.co_name)
                    tb = tb.tb_next
                assert "_runner" not in names  # the task's traceback starts at the task
            assert await pool.add_task(pow, 2, 8) == 256
        assert pool.status("failed") == 3
    finally:
        started = time.monotonic()
        await pool.aclose(grace=1)
    assert time.monotonic() - started < 2.0


async def test_a_task_raising_generator_exit_fails_alone(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        with pytest.raises(TaskpoolError):
            await pool.add_task(raise_generator_exit)
        assert await pool.add_task(f.add, 2, 3) == 5
        assert pool.status("failed") == 1


# --- a serialization failure in the worker keeps its cause ----------------------------------


async def test_a_worker_side_serialization_error_carries_the_original_exception() -> None:
    async with FunctionPool(1, worker="process") as pool:
        with pytest.raises(SerializationError) as info:
            await pool.add_task(make_unsendable)
    cause = info.value.__cause__
    assert isinstance(cause, f.CustomError)
    assert "cannot pickle me" in str(cause)


# --- utilisation ---------------------------------------------------------------------------


async def test_utilisation_follows_the_busy_share(kind: str) -> None:
    fn = busy_for if kind in OFFLOOP_KINDS else async_sleep_for
    t0 = time.time()
    async with FunctionPool(1, worker=kind) as pool:
        idle = pool.snapshot()
        assert idle.utilisation == 0.0
        assert (idle.workers[0].node is None) == (not caps(kind).remote)  # a host name for remote kinds
        tasks = [pool.add_task(fn, 0.02) for _ in range(10)]
        for t in tasks:
            await t
        snap = pool.snapshot()
    # The busy share over the worker's life so far (under 10 s): between the run time
    # over the time since before the pool started, and over the time since the first start.
    busy = sum(t.record.finished_at - t.record.started_at for t in tasks)  # type: ignore[operator]
    first = tasks[0].record.started_at
    assert first is not None
    util = snap.workers[0].utilisation
    assert busy / (snap.time - t0) - 0.01 <= util <= busy / (snap.time - first) + 0.01
    assert util > 0.2
    assert snap.utilisation == util


# --- closing is bounded even when a worker never reports its end -------------------------------


async def test_aclose_is_bounded_when_a_thread_worker_never_ends() -> None:
    async with Gate() as gate:
        pool = FunctionPool(1, worker="thread")
        await pool.start()
        pool.add_task(f.block_gate, gate.path, "stuck")  # blocking code: cannot be interrupted
        await gate.arrived("stuck")
        started = time.monotonic()
        await pool.aclose(cancel=True, grace=0.5)
        assert time.monotonic() - started < 2.5
        assert pool.state == "closed"
        gate.release("stuck")  # the abandoned thread ends when its call returns


# --- a task's own SystemExit / CancelledError is its failure, on every kind ------------------


async def async_system_exit() -> None:
    await asyncio.sleep(0)
    raise SystemExit(3)


async def async_own_cancel() -> None:
    await asyncio.sleep(0)
    raise asyncio.CancelledError("mine")


@pytest.mark.parametrize("fn", [async_system_exit, async_own_cancel])
async def test_an_async_task_raising_system_exit_or_its_own_cancel_fails_alone(kind: str, fn: Any) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        exits = pool.events.subscribe("worker.exited")
        with pytest.raises(TaskFailed) as info:
            await pool.add_task(fn)
        assert info.value.type_name in ("SystemExit", "asyncio.exceptions.CancelledError")
        assert await pool.add_task(f.add, 1, 1) == 2
        assert exits.get_nowait() is None  # the worker lived on
        exits.close()
