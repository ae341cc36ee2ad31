"""Thread workers as designed for batches: plain calls on a plain thread, a loop only for coroutines.

What the design guarantees beyond the kind-wide contract (which the ``kind``-parametrised
tests check): a worker that runs only plain functions has no event loop; a coroutine task
makes the worker's loop once and runs in it (``concurrency`` of them at once), and can be
cancelled there without ending the worker; bursts settle completely, and a worker going
to sleep and being woken (on its lock, or in its loop) never misses work.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import traceback

import pytest

import taskpool._loop
from taskpool import FunctionPool, TaskCancelled, TaskState, TaskTimeout, WorkerCrashed
from taskpool._workers import _thread
from taskpool.testing import wait_gate

from . import _funcs as f
from ._support import WAIT, Gate, collect

pytestmark = [pytest.mark.asyncio, pytest.mark.uvloop]


def loop_running_here() -> bool:
    """Whether an event loop runs on the calling thread."""
    return asyncio._get_running_loop() is not None


def run_a_loop_here() -> int:
    """``asyncio.run`` works only where no loop is running."""
    return asyncio.run(f.async_add(20, 22))


async def async_loop_running_here() -> bool:
    return loop_running_here()


def thread_ident() -> int:
    return threading.get_ident()


async def async_thread_ident() -> int:
    return threading.get_ident()


async def forever() -> None:
    await asyncio.Event().wait()


def plain_fail() -> None:
    raise KeyError("plain")


@pytest.fixture
def loops_made(monkeypatch: pytest.MonkeyPatch) -> list[threading.Thread]:
    """The threads a thread worker made an event loop in, one entry per loop."""
    made: list[threading.Thread] = []
    real = taskpool._loop.new_event_loop

    def counting() -> asyncio.AbstractEventLoop:
        made.append(threading.current_thread())
        return real()

    monkeypatch.setattr(_thread, "new_event_loop", counting)
    return made


# --- no event loop unless a coroutine needs one ------------------------------------------


async def test_plain_calls_run_with_no_event_loop_in_the_worker(loops_made: list[threading.Thread]) -> None:
    async with FunctionPool(2, worker="thread") as pool:
        running = await asyncio.gather(*(pool.add_task(loop_running_here) for _ in range(500)))
        assert not any(running)
        assert await pool.add_task(run_a_loop_here) == 42  # asyncio.run works: no loop runs there
    assert loops_made == []


async def test_a_worker_makes_its_loop_once_for_coroutines_and_is_plain_again_after(
    loops_made: list[threading.Thread],
) -> None:
    async with FunctionPool(1, worker="thread") as pool:
        plain = await pool.add_task(thread_ident)
        assert loops_made == []
        for i in range(50):  # one at a time: the loop goes idle and is entered again each time
            assert await pool.add_task(f.async_add, i, 1) == i + 1
        assert await pool.add_task(async_loop_running_here) is True
        assert await pool.add_task(async_thread_ident) == plain  # the same thread runs them
        assert len(loops_made) == 1  # made once, kept for the worker's life
        assert loops_made[0].ident == plain
        # The loop idles between coroutines: plain calls run with no loop running again.
        assert await pool.add_task(loop_running_here) is False
        assert await pool.add_task(run_a_loop_here) == 42
        # Mixed in one burst, in both orders.
        tasks = [pool.add_task(f.add, i, 1) if i % 2 else pool.add_task(f.async_add, i, 1) for i in range(200)]
        assert [await t for t in tasks] == [i + 1 for i in range(200)]
        assert len(loops_made) == 1
        assert pool.snapshot().workers[0].restarts == 0


# --- coroutines in the worker's loop ------------------------------------------------------


async def test_coroutine_tasks_of_one_worker_overlap_up_to_its_concurrency() -> None:
    async with FunctionPool(1, worker="thread", concurrency=3) as pool, Gate() as gate:
        tasks = [pool.add_task(wait_gate, gate.path, tag) for tag in "abcd"]
        await gate.arrived("a", "b", "c")  # three wait at once, on one worker
        assert "d" not in gate.arrivals  # the fourth waits for room
        assert [t.state for t in tasks[:3]] == [TaskState.RUNNING] * 3
        gate.release("b")
        assert await tasks[1] == "b"
        await gate.arrived("d")
        gate.open()
        assert [await t for t in tasks] == ["a", "b", "c", "d"]


async def test_a_plain_call_runs_while_coroutines_of_its_worker_wait() -> None:
    async with FunctionPool(1, worker="thread", concurrency=3) as pool, Gate() as gate:
        waiting = [pool.add_task(wait_gate, gate.path, tag) for tag in "ab"]
        await gate.arrived("a", "b")
        assert await pool.add_task(f.add, 1, 2) == 3  # on the third runner, in the loop
        with pytest.raises(KeyError):
            await pool.add_task(plain_fail)
        gate.open()
        assert [await t for t in waiting] == ["a", "b"]


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_stopping_a_running_coroutine_leaves_its_worker_serving(how: str) -> None:
    async with FunctionPool(1, worker="thread", concurrency=2) as pool, Gate() as gate:
        async with pool.events.subscribe("worker.exited") as exits:
            before = await pool.add_task(async_thread_ident)
            other = pool.add_task(wait_gate, gate.path, "other")
            doomed = pool.add_task(wait_gate, gate.path, "doomed", timeout=0.5 if how == "timeout" else None)
            await gate.arrived("other", "doomed")
            if how == "cancel":
                assert doomed.cancel() is True
            with pytest.raises(TaskCancelled if how == "cancel" else TaskTimeout):
                await doomed
            await gate.hung_up("doomed")  # cancelled in the worker: it stopped waiting
            assert "other" not in gate.hangups  # its neighbour runs on
            gate.release("other")
            assert await other == "other"
            assert await pool.add_task(async_thread_ident) == before  # the same thread
            assert await pool.add_task(thread_ident) == before
            assert exits.get_nowait() is None
        assert pool.snapshot().workers[0].restarts == 0
        assert pool.status("started") == 5


async def test_coroutines_cancelled_as_they_start_are_all_stopped() -> None:
    """Cancel each coroutine from its start callback: the ask races the worker taking it."""
    async with FunctionPool(1, worker="thread", concurrency=2) as pool:
        async with pool.events.subscribe("worker.exited") as exits:
            tasks = []
            for _ in range(300):
                task = pool.add_task(forever)
                task.add_start_callback(lambda t: t.cancel())
                tasks.append(task)
            async with asyncio.timeout(WAIT):
                for task in tasks:
                    with pytest.raises(TaskCancelled):
                        await task
                await pool.join()
            assert await pool.add_task(f.async_add, 1, 1) == 2
            assert exits.get_nowait() is None
        assert pool.status("cancelled") == 300


async def test_a_worker_retired_beside_running_coroutines_ends_once_its_call_returns() -> None:
    """A plain call that cannot be stopped retires its worker; the coroutines running
    beside it are the pool's no more: they are cancelled, so the old thread ends."""
    release, started = threading.Event(), threading.Event()
    try:
        async with FunctionPool(1, worker="thread", concurrency=2) as pool, Gate() as gate:
            ident = await pool.add_task(thread_ident)
            [old] = [t for t in threading.enumerate() if t.ident == ident]
            beside = pool.add_task(wait_gate, gate.path, "beside")
            await gate.arrived("beside")
            stuck = pool.add_task(f.block_on_event, release, started)
            await asyncio.to_thread(started.wait, WAIT)
            assert stuck.cancel() is True
            with pytest.raises(TaskCancelled):
                await stuck
            with pytest.raises(WorkerCrashed):
                await beside  # its worker was retired under it
            assert await pool.add_task(f.add, 1, 1) == 2  # on the fresh worker
            assert old.is_alive()  # still in the call
            release.set()
            await gate.hung_up("beside")  # cancelled in the old worker once the call returned
            await asyncio.to_thread(old.join, WAIT)
            assert not old.is_alive()
    finally:
        release.set()


async def test_a_retirement_decided_as_the_call_returns_never_takes_the_next_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """T runs when it is cancelled: its worker is retired. Between the look and the
    retirement, the pool's loop is held up (a slow log handler, say) while T returns. The
    thread must not take N meanwhile (N would run on an abandoned thread, and fail as
    WorkerCrashed though nobody cancelled it): N runs on the fresh worker."""
    release_t, started_t = threading.Event(), threading.Event()
    release_n, started_n = threading.Event(), threading.Event()
    try:
        async with FunctionPool(1, worker="thread") as pool:
            assert await pool.add_task(f.add, 1, 1) == 2
            core = pool._core  # type: ignore[attr-defined]
            [worker] = [w for w in gc.get_objects() if isinstance(w, _thread.ThreadWorker) and w.host is core]
            t = pool.add_task(f.block_on_event, release_t, started_t)
            n = pool.add_task(f.block_on_event, release_n, started_n)
            await asyncio.to_thread(started_t.wait, WAIT)
            assert n in worker._inbox  # handed to the thread, waiting behind T
            retire = core.sup.retire
            seen: dict[str, bool] = {}

            def slow_retire(slot: object, reason: str) -> None:
                release_t.set()  # T returns now, before the retirement
                deadline = time.monotonic() + WAIT
                while worker._sync_task is t:
                    assert time.monotonic() < deadline, "T never returned"
                    time.sleep(0.001)
                seen["n began"] = started_n.wait(0.3)  # long enough, were the thread free to
                retire(slot, reason)

            monkeypatch.setattr(core.sup, "retire", slow_retire)
            assert t.cancel() is True
            assert seen == {"n began": False}
            release_n.set()
            async with asyncio.timeout(WAIT):
                assert await n == "unblocked"  # on the fresh worker
    finally:
        release_t.set()
        release_n.set()


# --- bursts and wake-ups ------------------------------------------------------------------


async def test_a_burst_of_ten_thousand_settles_completely() -> None:
    async with FunctionPool(2, worker="thread") as pool:
        tasks = [pool.add_task(f.add, i, 1) for i in range(10_000)]
        async with asyncio.timeout(WAIT * 3):
            await pool.join()
        assert all(t.state is TaskState.SUCCEEDED for t in tasks)
        assert [t.result() for t in tasks] == [i + 1 for i in range(10_000)]
        assert pool.status("succeeded") == 10_000
        assert pool.status("remaining") == 0
        assert {t.worker_id for t in tasks} == {0, 1}  # both workers took part


async def test_a_mixed_burst_settles_completely_with_concurrency() -> None:
    async with FunctionPool(2, worker="thread", concurrency=3) as pool:
        tasks = [pool.add_task(f.async_add if i % 3 else f.add, i, 1) for i in range(6_000)]
        async with asyncio.timeout(WAIT * 3):
            await pool.join()
        assert [t.result() for t in tasks] == [i + 1 for i in range(6_000)]
        assert pool.status() == {
            "queued": 0, "active": 0, "completed": 6000, "succeeded": 6000, "failed": 0,
            "cancelled": 0, "remaining": 0, "started": 6000, "total": 6000,
        }  # fmt: skip


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_a_worker_woken_after_every_sleep_misses_nothing(concurrency: int) -> None:
    """One task at a time, so the worker sleeps before each (on its lock, or in its loop
    while a coroutine waits): a lost wake-up hangs, and fails here."""
    async with FunctionPool(1, worker="thread", concurrency=concurrency) as pool, Gate() as gate:
        holder = pool.add_task(wait_gate, gate.path, "held") if concurrency > 1 else None
        if holder is not None:
            await gate.arrived("held")  # the loop stays in use: idle runners sleep in it
        async with asyncio.timeout(WAIT * 3):
            for i in range(400):
                fn = (f.add, f.async_add)[i % 2] if i % 5 else f.async_add
                assert await pool.add_task(fn, i, 1) == i + 1
            for n in (2, 3, 5, 8):  # small bursts
                assert await asyncio.gather(*(pool.add_task(f.add, i, 1) for i in range(n))) == list(range(1, n + 1))
        gate.open()
        if holder is not None:
            assert await holder == "held"


# --- what tasks see -------------------------------------------------------------------------


async def test_a_plain_tasks_traceback_starts_at_the_task() -> None:
    async with FunctionPool(1, worker="thread") as pool:
        with pytest.raises(KeyError) as info:
            await pool.add_task(plain_fail)
    frames = [fs.name for fs in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1] == "plain_fail"
    assert not {"_serve", "_runner", "_main"} & set(frames)  # the worker's own frames are not the task's


async def test_publish_is_tagged_with_each_task_in_either_mode() -> None:
    async with FunctionPool(1, worker="thread", concurrency=2) as pool:
        async with pool.events.subscribe("user.*") as sub:
            tasks = [
                pool.add_task(f.publish_sync, "user.sync", 1),
                pool.add_task(f.publish_async, "user.async", 2),
                pool.add_task(f.publish_sync, "user.sync", 3),
            ]
            for t in tasks:
                await t
            got = await collect(sub, 3)
        by_data = {e.data: e.task_id for e in got}
        assert by_data == {1: tasks[0].id, 2: tasks[1].id, 3: tasks[2].id}


_started: list[str] = []


def _record(tag: str) -> str:
    _started.append(tag)
    return tag


async def test_a_retired_thread_hands_its_window_back_in_the_order_tasks_were_added() -> None:
    # Cancelling a plain call retires its thread; the calls waiting in its window go back
    # to the queue one by one, and must still start in the order they were added.
    _started.clear()
    async with FunctionPool(1, worker="thread") as pool, Gate() as gate:
        await pool.add_task(_record, "warm")  # a quick call: the worker's window opens
        held = pool.add_task(f.block_gate, gate.path, "held")
        rest = [pool.add_task(_record, tag) for tag in "abcd"]
        await gate.arrived("held")
        assert pool.status("queued") == 0  # all four wait in the worker's window
        held.cancel()
        assert await asyncio.gather(*rest) == list("abcd")
        gate.release("held")  # the abandoned thread's call returns; nobody waits for it
    assert _started == ["warm", "a", "b", "c", "d"]
