"""Issue 12's intake options: priority, retries / retry_on, map(return_exceptions=),
initializer / initargs (thread and inline kinds; process: test_process_initializer),
on_worker_crash, start_workers="on_demand", thread_name_prefix, and withdraw()."""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

import pytest

from taskpool import (
    FunctionPool,
    PoolBroken,
    RemoteTraceback,
    RestartPolicy,
    SerializationError,
    TaskCancelled,
    TaskFailed,
    TaskState,
    TaskTimeout,
    WorkerCrashed,
    WorkerState,
)

from . import _funcs as f
from ._support import Gate, caps, collect

pytestmark = pytest.mark.asyncio


# --- priority ------------------------------------------------------------------------------


async def test_priority_orders_tasks_not_started_fifo_within_one(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        blocker = pool.add_task(f.wait_gate, gate.path, "block")
        await gate.arrived("block")
        spec = [(0, "a"), (0, "b"), (5, "high1"), (-3, "low"), (5, "high2"), (1, "mid"), (0, "c")]
        tasks = [pool.add_task(f.identity, tag, priority=p) for p, tag in spec]
        gate.release("block")
        await blocker
        for t in tasks:
            await t
        started = sorted(tasks, key=lambda t: t.started_at or 0.0)
        assert [t.result() for t in started] == ["high1", "high2", "mid", "a", "b", "c", "low"]
        assert [t.priority for t in tasks] == [p for p, _ in spec]


async def test_higher_priority_overtakes_a_thread_workers_window() -> None:
    # A thread worker takes many tasks into its window at once: a later task of higher
    # priority takes the place of the unstarted ones there.
    async with FunctionPool(1, worker="thread") as pool, Gate() as gate:
        for _ in range(3):  # short calls open the worker's (adaptive) window
            await asyncio.gather(*(pool.add_task(f.add, i, 0) for i in range(10)))
        blocker = pool.add_task(f.wait_gate, gate.path, "block")
        await gate.arrived("block")
        low = [pool.add_task(f.identity, i) for i in range(5)]
        assert sum(1 for t in low if t.slot is not None) == 5  # all in the worker's window
        urgent = pool.add_task(f.identity, "urgent", priority=1)
        gate.release("block")
        await blocker
        await asyncio.gather(*low, urgent)
        assert urgent.started_at is not None
        assert all(urgent.started_at < (t.started_at or 0.0) for t in low)


async def test_priority_rejects_a_non_int() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        with pytest.raises(TypeError, match="priority must be an int"):
            pool.add_task(f.add, 1, 2, priority="high")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="priority must be an int"):
            pool.add_task(f.add, 1, 2, priority=1.5)  # type: ignore[arg-type]
        assert pool.status("total") == 0


async def test_queued_records_list_tasks_in_the_order_they_will_start() -> None:
    async with FunctionPool(1, worker="inline") as pool, Gate() as gate:
        blocker = pool.add_task(f.wait_gate, gate.path, "block")
        await gate.arrived("block")
        queued = [pool.add_task(f.add, i, 0, priority=i % 3) for i in range(6)]
        expected = [t.id for t in sorted(queued, key=lambda t: (-t.priority, t.id))]
        assert [r.id for r in pool.status("queued", "raw")] == expected
        gate.release("block")
        await blocker
        await asyncio.gather(*queued)


# --- retries -------------------------------------------------------------------------------


class _Flaky:
    """Fails ``times`` times with ``exc``, then returns ``"ok"`` (shared memory: inline, thread)."""

    def __init__(self, times: int, exc: type[BaseException] = ValueError) -> None:
        self.left = times
        self.calls = 0
        self.exc = exc
        self.lock = threading.Lock()

    def __call__(self) -> str:
        with self.lock:
            self.calls += 1
            if self.left > 0:
                self.left -= 1
                raise self.exc(f"failure {self.calls}")
        return "ok"


@pytest.mark.parametrize("kind", ["inline", "thread"])
async def test_retry_on_reruns_until_success_and_counts_once(kind: str) -> None:
    flaky = _Flaky(2)
    async with FunctionPool(1, worker=kind) as pool:
        async with pool.events.subscribe("task.*") as sub:
            task = pool.add_task(flaky, retries=3, retry_on=(ValueError,))
            assert await task == "ok"
            events = await collect(sub, 7)
        assert flaky.calls == 3
        assert task.attempts == 3
        assert task.record.attempts == 3
        assert pool.status("total") == 1
        assert pool.status("succeeded") == 1
        assert pool.status("failed") == 0
        assert pool.status("started") == 1
        retried = [e for e in events if e.topic == "task.retried"]
        assert [e.attempt for e in retried] == [2, 3]
        assert retried[0].error == "ValueError: failure 1"
        assert [e.topic for e in events][-1] == "task.succeeded"
        assert pool.status("completed", "raw")[-1].attempts == 3


async def test_retries_spent_settle_with_the_last_failure() -> None:
    flaky = _Flaky(5)
    async with FunctionPool(1, worker="thread") as pool:
        task = pool.add_task(flaky, retries=2, retry_on=ValueError)
        with pytest.raises(ValueError, match="failure 3"):
            await task
        assert flaky.calls == 3
        assert task.attempts == 3
        assert pool.status("failed") == 1
        assert pool.status("total") == 1


async def test_default_retry_on_does_not_rerun_the_functions_own_errors() -> None:
    flaky = _Flaky(1)
    async with FunctionPool(1, worker="thread") as pool:
        with pytest.raises(ValueError, match="failure 1"):
            await pool.add_task(flaky, retries=3)
        assert flaky.calls == 1


async def test_retry_after_a_worker_crash(offloop_kind: str, tmp_path: Any) -> None:
    # The first run kills its worker; the retry runs on the restarted one.
    marker = str(tmp_path / "crashed")
    async with FunctionPool(1, worker=offloop_kind, restart=RestartPolicy(delay=0.01)) as pool:
        async with pool.events.subscribe("task.retried") as sub:
            task = pool.add_task(f.crash_once, marker, "survived", retries=1)
            assert await task == "survived"
            (event,) = await collect(sub, 1)
        assert event.error is not None
        assert event.error.startswith("WorkerCrashed")
        assert task.attempts == 2
        assert pool.status("succeeded") == 1
        assert pool.status("failed") == 0


async def test_a_crash_without_retries_left_fails_the_task(offloop_kind: str, tmp_path: Any) -> None:
    async with FunctionPool(1, worker=offloop_kind, restart=RestartPolicy(delay=0.01)) as pool:
        task = pool.add_task(f.crash_once, str(tmp_path / "m"), "x")
        with pytest.raises(WorkerCrashed):
            await task


async def test_retry_after_a_timeout(kind: str, tmp_path: Any) -> None:
    # The first run sleeps past its timeout (stopped in its worker); the retry is quick.
    marker = str(tmp_path / "slow-once")
    async with FunctionPool(1, worker=kind) as pool:
        async with pool.events.subscribe("task.retried") as sub:
            task = pool.add_task(f.slow_once, marker, 30.0, timeout=0.5, retries=2)
            assert await task == "quick"
            (event,) = await collect(sub, 1)
        assert event.error is not None
        assert event.error.startswith("TaskTimeout")
        assert task.attempts == 2
        assert pool.status("succeeded") == 1


async def test_a_timeout_with_no_retry_left_fails() -> None:
    async with FunctionPool(1, worker="thread") as pool:
        with pytest.raises(TaskTimeout):
            await pool.add_task(f.sleep_then_mark, 30.0, "/nonexistent/never", timeout=0.2, retries=0)


async def test_cancel_is_never_retried_even_when_retry_on_matches() -> None:
    async with FunctionPool(1, worker="thread") as pool, Gate() as gate:
        task = pool.add_task(f.wait_gate, gate.path, "t", retries=3, retry_on=(BaseException,))
        await gate.arrived("t")
        assert task.cancel()
        with pytest.raises(TaskCancelled):
            await task
        assert task.attempts == 1
        assert pool.status("cancelled") == 1


async def test_retry_arguments_are_checked() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        with pytest.raises(ValueError, match="retries must be an int >= 0"):
            pool.add_task(f.add, 1, 2, retries=-1)
        with pytest.raises(TypeError, match="retries must be an int"):
            pool.add_task(f.add, 1, 2, retries=1.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="retry_on must hold exception classes"):
            pool.add_task(f.add, 1, 2, retries=1, retry_on=(ValueError, "x"))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="retry_on must be an exception class"):
            pool.add_task(f.add, 1, 2, retries=1, retry_on=42)  # type: ignore[arg-type]
        assert pool.status("total") == 0


# --- map(return_exceptions=) ---------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 3, "auto"])
@pytest.mark.parametrize("ordered", [True, False])
async def test_map_return_exceptions_yields_failures_in_place(kind: str, chunksize: Any, ordered: bool) -> None:
    async with FunctionPool(2, worker=kind) as pool:
        out = [
            v
            async for v in pool.map(
                f.fail_on_multiple_of_3, range(10), chunksize=chunksize, ordered=ordered, return_exceptions=True
            )
        ]
    if not ordered:
        out.sort(key=lambda v: v if isinstance(v, int) else int(str(v)))
    assert [isinstance(v, ValueError) for v in out] == [i % 3 == 0 for i in range(10)]
    assert [v for v in out if not isinstance(v, BaseException)] == [1, 2, 4, 5, 7, 8]
    failure = out[0] if ordered else next(v for v in out if isinstance(v, ValueError))
    if chunksize == 3 or caps(kind).isolated:  # failed in a chunk, or rebuilt in the parent
        assert isinstance(failure.__cause__, RemoteTraceback)  # the worker's traceback


async def test_map_return_exceptions_with_async_chunks() -> None:
    async with FunctionPool(2, worker="thread") as pool:
        out = [v async for v in pool.map(f.async_fail_on_multiple_of_3, range(7), chunksize=2, return_exceptions=True)]
    assert [type(v).__name__ for v in out] == ["ValueError", "int", "int", "ValueError", "int", "int", "ValueError"]


@pytest.mark.parametrize("chunksize", [1, 10])
async def test_map_return_exceptions_a_base_exception_fails_only_its_item(kind: str, chunksize: int) -> None:
    # SystemExit from one item: that item fails (TaskFailed, as a task of its own would),
    # and every other item of its chunk still runs and yields its result.
    async with FunctionPool(1, worker=kind) as pool:
        out = [v async for v in pool.map(f.exit_on_3, range(10), chunksize=chunksize, return_exceptions=True)]
        assert pool.status("failed") == (1 if chunksize == 1 else 0)  # a chunk is one task, and it ran
    assert [v for i, v in enumerate(out) if i != 3] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert isinstance(out[3], TaskFailed)
    assert "SystemExit" in str(out[3])


async def test_map_return_exceptions_an_items_own_cancelled_error_fails_only_it(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        out = [v async for v in pool.map(f.async_cancel_on_3, range(6), chunksize=6, return_exceptions=True)]
    assert [v for i, v in enumerate(out) if i != 3] == [0, 1, 2, 4, 5]
    assert isinstance(out[3], TaskFailed)
    assert "CancelledError" in str(out[3])


@pytest.mark.parametrize("chunksize", [1, 10])
async def test_map_return_exceptions_a_result_that_cannot_be_sent_fails_only_its_item(chunksize: int) -> None:
    # The chunk's list cannot be sent whole: its other results still arrive.
    async with FunctionPool(1, worker="process") as pool:
        out = [
            v
            async for v in pool.map(
                functools.partial(f.lock_on, 5), range(10), chunksize=chunksize, return_exceptions=True
            )
        ]
    assert [v for i, v in enumerate(out) if i != 5] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert isinstance(out[5], SerializationError)
    assert "cannot be sent back from the worker" in str(out[5])
    assert "lock" in str(out[5])


@pytest.mark.parametrize("ordered", [True, False])
async def test_map_return_exceptions_an_argument_that_cannot_be_sent_fails_only_its_item(ordered: bool) -> None:
    # The chunk cannot be sent: nothing of it ran, so its items go one by one.
    items: list[Any] = list(range(30))
    items[5] = threading.Lock()
    async with FunctionPool(1, worker="process") as pool:
        out = [v async for v in pool.map(f.identity, items, chunksize=10, ordered=ordered, return_exceptions=True)]
        assert pool.status("succeeded") == 2 + 9  # two whole chunks, nine items on their own
    failures = [v for v in out if isinstance(v, BaseException)]
    assert len(failures) == 1
    assert isinstance(failures[0], SerializationError)
    assert "lock" in str(failures[0])
    values = [v for v in out if not isinstance(v, BaseException)]
    assert (values if ordered else sorted(values)) == [i for i in range(30) if i != 5]
    if ordered:
        assert out[5] is failures[0]


async def test_map_without_return_exceptions_still_fails_fast() -> None:
    async with FunctionPool(2, worker="thread") as pool:
        # The first failure to happen ends it: any of 3, 6, 9 (two workers race).
        with pytest.raises(ValueError, match="^[369]$"):
            async for _ in pool.map(f.fail_on_multiple_of_3, range(1, 10)):
                pass


# --- initializer (thread and inline kinds) ---------------------------------------------------


_init_log: list[tuple[str, Any]] = []


def _record_init(tag: str) -> None:
    _init_log.append((threading.current_thread().name, tag))


async def _record_init_async(tag: str) -> None:
    await asyncio.sleep(0)
    _init_log.append((f"loop:{id(asyncio.get_running_loop())}", tag))


def _init_fails() -> None:
    raise ValueError("cannot initialise")


def _thread_name() -> str:
    return threading.current_thread().name


async def _loop_id() -> str:
    return f"loop:{id(asyncio.get_running_loop())}"


async def test_thread_initializer_runs_once_in_each_worker_thread() -> None:
    _init_log.clear()
    async with FunctionPool(3, worker="thread", initializer=_record_init, initargs=("ready",)) as pool:
        assert sorted(name for name, _ in _init_log) == sorted(f"taskpool-{pool.name}-{i}" for i in range(3))
        assert {tag for _, tag in _init_log} == {"ready"}
        names = await asyncio.gather(*(pool.add_task(_thread_name) for _ in range(10)))
        assert set(names) <= {name for name, _ in _init_log}
    assert len(_init_log) == 3


async def test_async_initializer_runs_on_the_loop_its_tasks_share() -> None:
    _init_log.clear()
    async with FunctionPool(1, worker="thread", initializer=_record_init_async, initargs=("x",)) as pool:
        assert [tag for _, tag in _init_log] == ["x"]
        assert await pool.add_task(_loop_id) == _init_log[0][0]


async def test_inline_initializer_runs_once_per_worker() -> None:
    _init_log.clear()
    async with FunctionPool(2, worker="inline", initializer=_record_init_async, initargs=("i",)) as pool:
        assert await pool.add_task(f.add, 1, 1) == 2
    assert [tag for _, tag in _init_log] == ["i", "i"]


async def test_recycled_workers_run_the_initializer_again() -> None:
    _init_log.clear()
    async with FunctionPool(
        1, worker="thread", initializer=_record_init, initargs=("r",), max_tasks_per_worker=1
    ) as pool:
        for i in range(3):
            assert await pool.add_task(f.add, i, 0) == i
    assert len(_init_log) >= 3  # one per worker: each ran one task


@pytest.mark.parametrize("kind", ["inline", "thread"])
async def test_a_failing_initializer_breaks_the_pool_after_three_tries(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = FunctionPool(1, worker=kind, initializer=_init_fails, restart=RestartPolicy(delay=0.0))
    with (
        caplog.at_level("CRITICAL", logger="taskpool"),
        pytest.raises(PoolBroken, match="initializer failed: ValueError: cannot initialise"),
    ):
        await pool.start()
    assert pool.state == "closed"
    logged = [r for r in caplog.records if r.name == "taskpool" and r.getMessage() == "Exception in initializer:"]
    assert len(logged) == 3
    assert logged[0].exc_info is not None


async def test_a_failing_initializer_with_break_breaks_at_once() -> None:
    pool = FunctionPool(2, worker="thread", initializer=_init_fails, on_worker_crash="break")
    with pytest.raises(PoolBroken, match="initializer failed"):
        await pool.start()


async def test_on_demand_initializer_failure_fails_the_queued_tasks() -> None:
    async with FunctionPool(
        1, worker="thread", initializer=_init_fails, start_workers="on_demand", restart=RestartPolicy(delay=0.0)
    ) as pool:
        task = pool.add_task(f.add, 1, 2)
        with pytest.raises(PoolBroken, match="initializer failed"):
            await task
        assert pool.state == "broken"
        with pytest.raises(PoolBroken):
            pool.add_task(f.add, 1, 2)


async def test_initializer_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="initializer must be a callable"):
        FunctionPool(1, initializer=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="initargs must be a tuple"):
        FunctionPool(1, initializer=print, initargs="ab")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_worker_crash must be one of 'isolate', 'break'"):
        FunctionPool(1, on_worker_crash="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start_workers must be one of 'eager', 'on_demand'"):
        FunctionPool(1, start_workers="lazy")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="thread_name_prefix must be a str"):
        FunctionPool(1, thread_name_prefix=3)  # type: ignore[arg-type]


async def test_thread_name_prefix_names_worker_threads() -> None:
    async with FunctionPool(2, worker="thread", thread_name_prefix="Special") as pool:
        names = set(await asyncio.gather(*(pool.add_task(_thread_name) for _ in range(6))))
        assert names <= {"Special_0", "Special_1"}
        assert {w.thread_name for w in pool.snapshot().workers} == {"Special_0", "Special_1"}


# --- on_worker_crash="break" ---------------------------------------------------------------


async def test_break_fails_every_task_and_the_pool(offloop_kind: str) -> None:
    async with Gate() as gate:
        pool = FunctionPool(2, worker=offloop_kind, on_worker_crash="break")
        async with pool:
            running = pool.add_task(f.wait_gate, gate.path, "other")
            await gate.arrived("other")
            crash = pool.add_task(f.crash_worker)
            queued = [pool.add_task(f.add, i, 0) for i in range(5)]  # no worker free for them
            for t in [crash, running, *queued]:
                with pytest.raises(PoolBroken, match="on_worker_crash='break'") as info:
                    await t
            assert isinstance(info.value.__cause__, WorkerCrashed)
            assert pool.state == "broken"
            with pytest.raises(PoolBroken):
                pool.add_task(f.add, 1, 1)
            assert pool.status("failed") == 7
            assert pool.status("total") == 7


async def test_isolate_fails_only_the_crashed_workers_task(offloop_kind: str) -> None:
    async with FunctionPool(2, worker=offloop_kind, restart=RestartPolicy(delay=0.01)) as pool:
        crash = pool.add_task(f.crash_worker)
        with pytest.raises(WorkerCrashed):
            await crash
        assert await pool.add_task(f.add, 2, 3) == 5
        assert pool.state == "running"


# --- start_workers="on_demand" -------------------------------------------------------------


async def test_on_demand_starts_a_worker_per_task_finding_none_idle(kind: str) -> None:
    async with FunctionPool(3, worker=kind, start_workers="on_demand") as pool, Gate() as gate:
        assert [w.state for w in pool.snapshot().workers] == [WorkerState.UNSTARTED] * 3
        assert await pool.add_task(f.add, 1, 1) == 2
        assert await pool.add_task(f.add, 1, 2) == 3  # the idle worker is reused
        states = [w.state for w in pool.snapshot().workers]
        assert states.count(WorkerState.UNSTARTED) == 2
        held = [pool.add_task(f.wait_gate, gate.path, f"g{i}") for i in range(3)]
        for i in range(3):
            await gate.arrived(f"g{i}")  # three at once: every worker was started
        assert WorkerState.UNSTARTED not in [w.state for w in pool.snapshot().workers]
        gate.release("g0", "g1", "g2")
        assert await asyncio.gather(*held) == ["g0", "g1", "g2"]


async def test_on_demand_pool_closes_with_no_worker_ever_started() -> None:
    async with FunctionPool(4, worker="process", start_workers="on_demand") as pool:
        assert pool.snapshot().workers[0].pid is None
    assert pool.state == "closed"


# --- withdraw ------------------------------------------------------------------------------


async def test_withdraw_cancels_only_calls_that_never_start(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        core = pool._core
        running = pool.add_task(f.wait_gate, gate.path, "run")
        await gate.arrived("run")
        waiting = [pool.add_task(f.add, i, 0) for i in range(3)]
        assert not core.withdraw(running)
        assert running.state is TaskState.RUNNING
        for t in waiting:
            if not core.withdraw(t):  # a process worker's window answers later
                assert await core.withdraw_wait(t)
            assert t.cancelled()
        gate.release("run")
        assert await running == "run"
        assert pool.status("cancelled") == 3
        assert not core.withdraw(running)  # settled
