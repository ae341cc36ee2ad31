"""``taskpool.executor``: ThreadPoolExecutor and ProcessPoolExecutor as drop-in replacements.

Each behaviour is checked on both kinds (the ``kind`` fixture) where it applies, the way
CPython's own ``test_concurrent_futures`` looks at ``concurrent.futures``. Calls are held
running with a :class:`~tests._executor_funcs.SyncGate`, never by sleeping; side effects
of calls that must not run are files.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import functools
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from concurrent.futures.thread import BrokenThreadPool
from pathlib import Path
from typing import Any

import pytest

from taskpool import WorkerCrashed
from taskpool.executor import ProcessPoolExecutor, ThreadPoolExecutor

from . import _executor_funcs as F
from ._executor_funcs import SyncGate

ROOT = Path(__file__).resolve().parent.parent
T = 30.0  # seconds any single wait may take before the test fails (never reached when passing)
KINDS = ["thread", "process"]
BROKEN: dict[str, type[cf.BrokenExecutor]] = {"thread": BrokenThreadPool, "process": BrokenProcessPool}
Executor = ThreadPoolExecutor | ProcessPoolExecutor


def until(predicate: Callable[[], bool], what: str = "condition") -> None:
    """Wait (bounded) for a state another thread sets and has no event for, such as a
    future turning ``running`` (it does not notify)."""
    deadline = time.monotonic() + T
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(kind: str) -> Iterator[Callable[..., Executor]]:
    """Make executors of the test's kind; each is shut down (waiting) at the end."""
    made: list[Executor] = []

    def factory(*args: Any, **kwargs: Any) -> Executor:
        cls = ThreadPoolExecutor if kind == "thread" else ProcessPoolExecutor
        ex = cls(*args, **kwargs)
        made.append(ex)
        return ex

    yield factory
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(autouse=True)
def _init_state() -> Iterator[None]:
    yield
    F.INIT_STATE = "uninitialized"  # thread workers share this module with the test


def workers(ex: Executor) -> int:
    return len(ex._threads) if isinstance(ex, ThreadPoolExecutor) else len(ex._processes)


# --- submit, results and errors ---------------------------------------------------------


def test_submit_gives_a_real_future_with_the_result(make: Callable[..., Executor]) -> None:
    ex = make(2)
    fut = ex.submit(F.add, 2, 3)
    assert isinstance(fut, cf.Future)
    assert fut.result(timeout=T) == 5
    assert ex.submit(F.mul, 2, y=8).result(timeout=T) == 16
    assert ex.submit(F.capture, 1, self=2, fn=3).result(timeout=T) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        ex.submit(fn=F.capture, arg=1)  # type: ignore[call-arg]


def test_a_failure_is_its_own_type_with_the_workers_traceback(make: Callable[..., Executor], kind: str) -> None:
    ex = make(1)
    with pytest.raises(ValueError, match="bad input") as info:
        ex.submit(F.boom, "bad input").result(timeout=T)
    if kind == "process":  # as concurrent.futures shows it: the child's traceback as the cause
        cause = info.value.__cause__
        assert type(cause) is _RemoteTraceback
        assert "raise ValueError(message)" in cause.tb
    else:  # the exception itself, raised in the worker thread
        assert "raise ValueError(message)" in "".join(traceback.format_exception(info.value))


@pytest.mark.parametrize("code", [3, "stopping", None])
def test_system_exit_in_a_call_is_raised_as_itself(make: Callable[..., Executor], code: Any) -> None:
    ex = make(1)
    with pytest.raises(SystemExit) as info:
        ex.submit(F.exit_with, code).result(timeout=T)
    assert info.value.code == code
    assert ex.submit(F.add, 1, 1).result(timeout=T) == 2  # the worker lives on
    assert not ex._broken


def test_futures_work_with_wait_and_as_completed(make: Callable[..., Executor]) -> None:
    ex = make(2)
    fs = [ex.submit(F.add, i, 1) for i in range(20)]
    done, not_done = cf.wait(fs, timeout=T)
    assert len(done) == 20
    assert not not_done
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=T)) == list(range(1, 21))


def test_running_is_true_exactly_while_the_call_runs(make: Callable[..., Executor]) -> None:
    ex = make(1)
    with SyncGate() as g:
        first = ex.submit(F.gate, g.path, "first")
        second = ex.submit(F.add, 1, 2)
        g.arrived("first")
        # At once: running() asks the pool, which reads the start off the worker.
        assert first.running()
        assert not second.running()  # queued behind it: not started
        assert not second.done()
        assert not first.cancel()  # started: it runs on
        assert first.running()
        g.release("first")
        assert first.result(timeout=T) == "first"
        assert second.result(timeout=T) == 3
    assert not first.running()
    assert not second.running()


def test_waiting_in_a_done_callback_raises_instead_of_hanging_the_pool(make: Callable[..., Executor]) -> None:
    # Done callbacks run on the pool's loop thread, which settles the futures: wait() or
    # as_completed() there for a pending one would block that loop (for good without a
    # timeout). They raise, as result() does; a poll, a done future or another
    # executor's future are still fine there.
    ex = make(2)
    seen: dict[str, Any] = {}
    called = threading.Event()
    with SyncGate() as g, cf.ThreadPoolExecutor(1) as plain:
        other = ex.submit(F.gate, g.path, "other")
        g.arrived("other")

        def outcome(wait: Callable[[], Any]) -> Any:
            try:
                return wait()
            except RuntimeError as exc:
                return exc

        def callback(fut: cf.Future[Any]) -> None:
            seen["wait"] = outcome(lambda: cf.wait([other], timeout=2))
            seen["as_completed"] = outcome(lambda: next(cf.as_completed([other], timeout=2)))
            seen["poll"] = outcome(lambda: cf.wait([other], timeout=0))
            seen["done"] = outcome(lambda: cf.wait([fut], timeout=2))
            seen["plain"] = outcome(lambda: cf.wait([plain.submit(F.add, 1, 1)], timeout=T))
            called.set()

        ex.submit(F.add, 1, 2).add_done_callback(callback)
        assert called.wait(T)
        g.release("other")
        assert other.result(timeout=T) == "other"
    for name in ("wait", "as_completed"):
        assert isinstance(seen[name], RuntimeError), (name, seen[name])
        assert "would block that loop" in str(seen[name])
    assert seen["poll"].not_done == {other}
    assert len(seen["done"].done) == 1
    assert len(seen["plain"].done) == 1


# --- cancel ---------------------------------------------------------------------------------


def test_cancel_is_true_only_for_a_call_that_will_never_run(make: Callable[..., Executor], tmp_path: Path) -> None:
    ex = make(1)
    never, also_never = tmp_path / "never", tmp_path / "also-never"
    with SyncGate() as g:
        first = ex.submit(F.gate, g.path, "first")
        g.arrived("first")
        queued = ex.submit(F.mark, str(never))
        ex.status()  # a round trip: the call is in the pool's queue now, not on its way
        assert queued.cancel() is True  # asked of the pool
        on_its_way = ex.submit(F.mark, str(also_never))
        assert on_its_way.cancel() is True  # dropped before it reached the pool
        assert queued.cancelled() and queued.done() and on_its_way.cancelled()
        with pytest.raises(cf.CancelledError):
            queued.result(timeout=0)
        until(first.running, "the first call to be running")
        assert first.cancel() is False  # started: it runs to its end
        g.release("first")
        assert first.result(timeout=T) == "first"
    assert ex.submit(F.add, 1, 1).result(timeout=T) == 2
    ex.shutdown(wait=True)
    assert not never.exists() and not also_never.exists()


def test_a_cancelled_future_wakes_its_waiters(make: Callable[..., Executor]) -> None:
    ex = make(1)
    with SyncGate() as g:
        ex.submit(F.gate, g.path, "first")
        g.arrived("first")
        queued = ex.submit(F.add, 1, 2)
        assert queued.cancel()
        # (concurrent.futures leaves a future cancelled this way un-notified: wait() would time out)
        done, _ = cf.wait([queued], timeout=T)
        assert done == {queued}


# --- shutdown -------------------------------------------------------------------------------


def test_submit_after_shutdown_raises(make: Callable[..., Executor]) -> None:
    unused = make(1)
    unused.shutdown()
    with pytest.raises(RuntimeError, match="^cannot schedule new futures after shutdown$"):
        unused.submit(F.add, 1, 2)
    ex = make(1)
    assert ex.submit(F.add, 1, 2).result(timeout=T) == 3
    ex.shutdown()
    ex.shutdown()  # again: nothing more to do
    assert ex._shutdown_thread
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(F.add, 1, 2)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.map(F.identity, [1])
    assert list(ex.map(F.identity, [])) == []  # nothing to submit: nothing raised, as cf


def test_shutdown_waits_for_pending_calls_and_ends_the_threads(make: Callable[..., Executor]) -> None:
    ex = make(3)
    fs = [ex.submit(F.sleep_then, 0.01, i) for i in range(12)]
    loop_thread = ex._executor_manager_thread
    assert loop_thread is not None
    ex.shutdown(wait=True)
    assert [f.result(timeout=0) for f in fs] == list(range(12))
    assert not loop_thread.is_alive()
    if isinstance(ex, ThreadPoolExecutor):
        assert not any(t.is_alive() for t in ex._threads)
    else:
        assert ex._processes == {}


def test_shutdown_cancel_futures_withdraws_only_calls_not_started(make: Callable[..., Executor]) -> None:
    ex = make(2)
    with SyncGate() as g:
        fs = [ex.submit(F.gate, g.path, f"t{i}") for i in range(10)]
        g.arrived("t0", "t1")
        closer = threading.Thread(target=ex.shutdown, kwargs={"cancel_futures": True})
        closer.start()  # it waits for the two running calls
        until(lambda: sum(f.cancelled() for f in fs) == 8, "8 calls cancelled")
        assert closer.is_alive()
        g.release("t0", "t1")
        closer.join(T)
        assert not closer.is_alive()
        assert sorted(g.poll()) == ["t0", "t1"]  # no withdrawn call ever ran (two workers: either order)
    assert [f.result(timeout=0) for f in fs[:2]] == ["t0", "t1"]


def test_shutdown_cancel_futures_lets_a_worker_coming_up_run_its_first_call(
    make: Callable[..., Executor], tmp_path: Path
) -> None:
    ex = make(2)
    marker = tmp_path / "ran"
    fut = ex.submit(F.mark, str(marker))
    ex.shutdown(wait=True, cancel_futures=True)  # at once: the worker was not even up yet
    assert fut.result(timeout=0) is None  # as a concurrent.futures thread takes its first call
    assert marker.exists()


def test_the_context_manager_shuts_down(kind: str) -> None:
    cls = ThreadPoolExecutor if kind == "thread" else ProcessPoolExecutor
    with cls(max_workers=2) as ex:
        assert list(ex.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
        loop_thread = ex._executor_manager_thread
    assert loop_thread is not None
    assert not loop_thread.is_alive()


def test_dropping_the_executor_shuts_it_down_after_its_work(kind: str) -> None:
    cls = ThreadPoolExecutor if kind == "thread" else ProcessPoolExecutor
    ex = cls(max_workers=3)
    results = ex.map(abs, range(-5, 5))
    loop_thread = ex._executor_manager_thread
    assert loop_thread is not None
    gone = weakref.ref(ex)
    del ex
    assert gone() is None  # nothing but the caller held it: no cycle, no GC needed
    loop_thread.join(T)
    assert not loop_thread.is_alive()
    assert list(results) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]  # done before it shut down


# --- map --------------------------------------------------------------------------------------


def test_map_gives_results_in_order_whatever_the_chunksize(make: Callable[..., Executor]) -> None:
    ex = make(2)
    for chunksize in (1, 3, 50):
        assert list(ex.map(F.mul, range(40), range(40), chunksize=chunksize)) == [i * i for i in range(40)]
        assert list(ex.map(F.identity, range(500), chunksize=chunksize)) == list(range(500))
    assert list(ex.map(F.add, [1, 2, 3], [10, 20])) == [11, 22]  # zip's length
    with pytest.raises(ValueError, match="chunksize must be >= 1"):
        ex.map(F.identity, [1], chunksize=0)


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_raises_a_failure_at_its_position(make: Callable[..., Executor], chunksize: int) -> None:
    ex = make(2)
    got = []
    with pytest.raises(ValueError, match="bad item 5"):
        for value in ex.map(F.fail_on, [5] * 10, range(10), chunksize=chunksize):
            got.append(value)
    assert got == [0, 10, 20, 30, 40]  # every result before it, even from its own chunk


def test_map_runs_without_being_read(make: Callable[..., Executor], tmp_path: Path) -> None:
    ex = make(2)
    markers = [tmp_path / f"m{i}" for i in range(10)]
    ex.map(F.mark, [str(m) for m in markers])
    ex.shutdown(wait=True)
    assert all(m.exists() for m in markers)


def test_map_timeout_counts_from_the_call(make: Callable[..., Executor]) -> None:
    ex = make(3)
    with SyncGate() as g:
        results = ex.map(F.gate, [g.path] * 3, ["a", "b", "held"], timeout=0.5)
        g.arrived("a", "b", "held")
        g.release("a", "b")
        got = []
        with pytest.raises(TimeoutError):
            for value in results:
                got.append(value)
        assert got == ["a", "b"]


def test_closing_map_early_withdraws_the_calls_not_started(make: Callable[..., Executor], tmp_path: Path) -> None:
    ex = make(1)
    markers = [tmp_path / "second", tmp_path / "third"]
    with SyncGate() as g:
        first = ex.submit(F.gate, g.path, "first")
        g.arrived("first")
        with contextlib.closing(ex.map(F.mark, [str(m) for m in markers], timeout=0)) as results:
            with pytest.raises(TimeoutError):
                next(results)
        g.release("first")
        assert first.result(timeout=T) == "first"
    ex.shutdown(wait=True)
    assert not any(m.exists() for m in markers)


def test_map_lets_go_of_each_result_as_it_is_yielded(make: Callable[..., Executor]) -> None:
    ex = make(2)
    for chunksize in (1, 5):
        for obj in ex.map(F.make_token, range(10), chunksize=chunksize):
            ref = weakref.ref(obj)
            del obj
            assert ref() is None


def test_a_large_map_travels_in_chunks(make: Callable[..., Executor]) -> None:
    ex = make(2)
    n = 100_000
    assert list(ex.map(F.identity, range(n))) == list(range(n))
    assert ex.status("total") < n // 20  # tasks: chunks of items, not one task per item


def test_a_coroutine_function_is_awaited_in_the_worker(make: Callable[..., Executor]) -> None:
    ex = make(2)
    assert ex.submit(F.async_double, 21).result(timeout=T) == 42
    assert list(ex.map(F.async_double, range(5))) == [0, 2, 4, 6, 8]


# --- no references kept ---------------------------------------------------------------------


def test_a_dropped_future_keeps_nothing_alive(make: Callable[..., Executor]) -> None:
    ex = make(1)
    obj = F.Token()
    collected = threading.Event()
    ref = weakref.ref(obj, lambda _: collected.set())
    kept = ex.submit(F.add, 1, 1)  # (likely sent with the next one: kept, it keeps nothing else)
    ex.submit(obj.method)  # this future is dropped at once
    del obj
    assert collected.wait(T)
    assert ref() is None
    assert kept.result(timeout=T) == 2


def test_a_settled_future_holds_only_its_result(make: Callable[..., Executor]) -> None:
    ex = make(1)
    fut = ex.submit(F.make_token)
    token = fut.result(timeout=T)
    ref = weakref.ref(token)
    del token, fut
    assert ref() is None


# --- broken pools ---------------------------------------------------------------------------


def test_a_failing_initializer_breaks_the_pool(
    make: Callable[..., Executor], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    ex = make(2, initializer=F.init_fail)
    with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
        fut = ex.submit(F.add, 1, 1)
        with pytest.raises(BROKEN[kind]):
            fut.result(timeout=T)
    until(lambda: bool(ex._broken), "the pool to break")
    assert "initializer failed" in str(ex._broken)
    with pytest.raises(BROKEN[kind], match="initializer failed"):
        ex.submit(F.add, 1, 1)
    if kind == "thread":  # in this process: logged where concurrent.futures logs it
        record = next(r for r in caplog.records if r.name == "concurrent.futures")
        assert record.levelno == logging.CRITICAL
        assert record.getMessage() == "Exception in initializer:"
        assert "ValueError: error in initializer" in caplog.text


def test_the_initializer_runs_in_each_worker_first(make: Callable[..., Executor]) -> None:
    ex = make(2, initializer=F.init, initargs=("ready",))
    assert [f.result(timeout=T) for f in [ex.submit(F.get_init) for _ in range(4)]] == ["ready"] * 4


def test_a_worker_killed_from_outside_breaks_the_process_pool() -> None:
    ex = ProcessPoolExecutor(2)
    try:
        with SyncGate() as g:
            held = ex.submit(F.gate, g.path, "held")
            g.arrived("held")
            (handle,) = ex._processes.values()
            assert handle.is_alive()
            handle.terminate()
            handle.join(T)
            assert not handle.is_alive()
            assert handle.exitcode == -signal.SIGTERM
            with pytest.raises(BrokenProcessPool):
                held.result(timeout=T)
        assert ex._broken
        with pytest.raises(BrokenProcessPool):
            ex.submit(F.add, 1, 2)
    finally:
        ex.shutdown(wait=True)


def test_what_cannot_cross_fails_as_in_concurrent_futures() -> None:
    with ProcessPoolExecutor(1) as ex:
        # What pickling raised, for an argument (here) or a result (in the worker).
        with pytest.raises(pickle.PicklingError, match="cannot be pickled"):
            ex.submit(F.identity, F.BadOnDump()).result(timeout=T)
        with pytest.raises(pickle.PicklingError, match="cannot be pickled"):
            ex.submit(F.return_bad_on_dump).result(timeout=T)
        # A result this side cannot rebuild: concurrent.futures loses its result thread.
        with pytest.raises(BrokenProcessPool) as info:
            ex.submit(F.return_bad_on_load).result(timeout=T)
        assert "cannot be rebuilt here" in str(info.value)
        assert ex.submit(F.add, 1, 2).result(timeout=T) == 3  # taskpool's pool is not broken
        # A call the worker cannot rebuild: concurrent.futures loses the worker.
        with pytest.raises(BrokenProcessPool):
            ex.submit(F.identity, F.BadOnLoad()).result(timeout=T)
        assert ex.submit(F.add, 1, 2).result(timeout=T) == 3


def test_isolate_keeps_the_pool_after_a_crash() -> None:
    with ProcessPoolExecutor(1, on_worker_crash="isolate") as ex:
        with pytest.raises(WorkerCrashed):
            ex.submit(F.crash).result(timeout=T)
        assert ex.submit(F.add, 1, 2).result(timeout=T) == 3
        assert not ex._broken


# --- workers -----------------------------------------------------------------------------------


def test_workers_start_on_demand_and_idle_ones_are_reused(make: Callable[..., Executor]) -> None:
    ex = make(4)
    assert workers(ex) == 0
    for _ in range(3):
        assert ex.submit(F.add, 1, 1).result(timeout=T) == 2
    assert workers(ex) == 1
    with SyncGate() as g:
        held = [ex.submit(F.gate, g.path, f"t{i}") for i in range(3)]
        assert workers(ex) == 3  # the idle one took the first; two more came up
        more = [ex.submit(F.add, i, 0) for i in range(20)]
        assert workers(ex) == 4  # one more for the calls waiting, never past max_workers
        assert [f.result(timeout=T) for f in more] == list(range(20))
        g.arrived("t0", "t1", "t2")
        g.release("t0", "t1", "t2")
        assert [f.result(timeout=T) for f in held] == ["t0", "t1", "t2"]
    assert workers(ex) == 4


def test_thread_names_follow_the_prefix() -> None:
    for prefix, pattern in (("Special", r"^Special_[0-2]$"), ("", r"^ThreadPoolExecutor-\d+_[0-2]$")):
        with ThreadPoolExecutor(3, thread_name_prefix=prefix) as ex, SyncGate() as g:
            fs = [ex.submit(F.gate, g.path, f"t{i}") for i in range(3)]
            g.arrived("t0", "t1", "t2")
            names = {t.name for t in ex._threads}
            g.release("t0", "t1", "t2")
            assert {f.result(timeout=T) for f in fs} == {"t0", "t1", "t2"}
        assert len(names) == 3
        assert all(re.match(pattern, n) for n in names), names


def test_max_tasks_per_child_replaces_the_worker() -> None:
    with ProcessPoolExecutor(1, max_tasks_per_child=2) as ex:
        first, second, third = (ex.submit(F.worker_pid).result(timeout=T) for _ in range(3))
        assert first == second != third
        assert len(ex._processes) == 1
        assert ex._mp_context.get_start_method() == "spawn"


@pytest.mark.parametrize("chunksize", [1, 64])
@pytest.mark.parametrize("side", ["argument", "result"])
def test_map_an_item_that_cannot_cross_fails_in_its_place(chunksize: int, side: str) -> None:
    # As concurrent.futures with chunksize=1: every result before the bad item, then what
    # pickling raised, whether the items travelled in chunks (measured or asked) or not.
    n, bad = 3000, 2000
    with ProcessPoolExecutor(2) as ex:
        if side == "argument":
            items: list[Any] = list(range(n))
            items[bad] = threading.Lock()
            results = ex.map(F.identity, items, chunksize=chunksize)
        else:
            results = ex.map(functools.partial(F.bad_on_dump_at, bad), range(n), chunksize=chunksize)
        got = []
        with pytest.raises((TypeError, pickle.PicklingError)) as info:
            for v in results:
                got.append(v)
        assert got == list(range(bad))
        assert ex.submit(F.add, 1, 2).result(timeout=T) == 3  # nothing broke
    if side == "result":
        assert isinstance(info.value.__cause__, _RemoteTraceback)  # raised in the worker


def test_map_never_runs_more_calls_in_a_worker_than_max_tasks_per_child() -> None:
    # Tiny calls would be sent in chunks (one task each); with max_tasks_per_child the
    # hint chunksize=1 is kept, so every item counts, as in concurrent.futures.
    with ProcessPoolExecutor(2, max_tasks_per_child=10) as ex:
        per_process = collections.Counter(ex.map(F.worker_pid, range(60)))
    assert sum(per_process.values()) == 60
    assert max(per_process.values()) <= 10, per_process


def test_arguments_are_checked_as_concurrent_futures_does() -> None:
    for cls in (ThreadPoolExecutor, ProcessPoolExecutor):
        for n in (0, -1):
            with pytest.raises(ValueError, match="max_workers must be greater than 0"):
                cls(max_workers=n)
        with pytest.raises(TypeError, match="initializer must be a callable"):
            cls(1, initializer=42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
            cls(1, bogus=1)
        with pytest.raises(TypeError, match="max_queue"):
            cls(1, max_queue=10)
    with pytest.raises(TypeError, match="max_tasks_per_child must be an integer"):
        ProcessPoolExecutor(1, max_tasks_per_child="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tasks_per_child must be >= 1"):
        ProcessPoolExecutor(1, max_tasks_per_child=0)
    assert ThreadPoolExecutor()._max_workers == min(32, (os.cpu_count() or 1) + 4)
    assert ProcessPoolExecutor()._max_workers == (os.cpu_count() or 1)  # (never started: no thread)


def test_the_pool_can_be_read(make: Callable[..., Executor]) -> None:
    ex = make(2)
    with pytest.raises(RuntimeError, match="no pool yet"):
        ex.snapshot()
    assert [f.result(timeout=T) for f in [ex.submit(F.add, i, 0) for i in range(5)]] == list(range(5))
    assert ex.status("succeeded") == 5
    snap = ex.snapshot()
    assert snap.counts["succeeded"] == 5
    assert snap.pool_size == 2
    assert snap.kind == ("thread" if isinstance(ex, ThreadPoolExecutor) else "process")
    ex.shutdown()
    assert ex.status("succeeded") == 5  # still readable: the pool ended, its counts stay
    assert ex.snapshot().state == "closed"


# --- interpreter exit -------------------------------------------------------------------------


@pytest.mark.parametrize("cls_name", ["ThreadPoolExecutor", "ProcessPoolExecutor"])
def test_interpreter_exit_finishes_the_work_then_refuses_more(cls_name: str) -> None:
    code = textwrap.dedent(
        f"""
        import atexit

        @atexit.register
        def late():  # runs after the executors' own exit hook
            try:
                t.submit(id, None)
            except RuntimeError as exc:
                print("refused:", exc)

        from taskpool.executor import {cls_name}
        from tests._executor_funcs import sleep_and_print

        if __name__ == "__main__":
            t = {cls_name}(2)
            t.submit(sleep_and_print, 0.2, "apple")  # never shut down: exit finishes it
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""  # the worker's output is written through; nothing else
    assert proc.stdout.decode().splitlines() == [
        "apple",
        "refused: cannot schedule new futures after interpreter shutdown",
    ]
