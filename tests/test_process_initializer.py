"""``initializer=`` / ``initargs=`` in process workers.

The worker level (``ProcessWorker.run`` against a small host) shows how a worker ends when
its initializer fails; the pool level what holds whatever the supervisor makes of such a
failure (the pool does not start). Multiprocessing objects in ``initargs`` are made with
the ``spawn`` context; a worker's log records come back through a queue, as in CPython's
own executor tests.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import threading
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from typing import Any, cast

import pytest

from taskpool import FunctionPool, PoolBroken, RestartPolicy, WorkerCrashed
from taskpool._workers import _process
from taskpool._workers._base import INIT_FAILED, WorkerExit, WorkerSpec
from taskpool._workers._process import ProcessWorker

from . import _funcs as f
from . import _mp_funcs as m
from ._support import WAIT, collect_until
from .conftest import KINDS

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif("process" not in KINDS, reason="needs process workers"),
]

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(autouse=True, scope="module")
def _resource_tracker() -> Iterator[None]:
    """Spawn-context locks and queues start multiprocessing's resource tracker, a process
    that lives as long as this one: start it before any test counts child processes."""
    resource_tracker.ensure_running()
    yield


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``predicate()`` holds, looking every few milliseconds."""
    async with asyncio.timeout(WAIT):
        while not predicate():
            await asyncio.sleep(0.005)
    assert predicate(), what


class Host:
    """What a ProcessWorker needs of its pool, for workers that never get a task."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.lines: list[tuple[str, str]] = []

    def worker_log(self, worker: Any, stream: str, line: str) -> None:
        self.lines.append((stream, line))

    def batch_begin(self) -> None:
        pass

    def batch_done(self) -> None:
        pass


async def run_worker(spec: WorkerSpec, while_running: Any = None) -> tuple[WorkerExit, bool]:
    """Run one process worker with ``spec`` until it ends by itself (or, with
    ``while_running``, until that coroutine function, given the worker, returns and
    stops it); ``(its exit, whether it became ready)``."""
    ready = threading.Event()
    worker = ProcessWorker(cast(Any, Host()), 0, spec)
    run = asyncio.create_task(worker.run(ready.set))
    try:
        if while_running is not None:
            await while_running(worker)
        exit = await asyncio.wait_for(asyncio.shield(run), WAIT)
    finally:
        if not run.done():
            worker.kill()
            await asyncio.wait_for(run, WAIT)
    return exit, ready.is_set()


def drain(q: Any) -> list[Any]:
    """Everything in multiprocessing queue ``q`` now."""
    out = []
    try:
        while True:
            out.append(q.get(timeout=0.5))
    except queue.Empty:
        return out


# --- it runs, once per worker process, before the first call ----------------------------------


async def test_initializer_runs_once_in_each_worker_before_its_first_call() -> None:
    async with FunctionPool(2, worker="process", initializer=m.record_init, initargs=("ready",)) as pool:
        results = [await t for t in [pool.add_task(m.init_state) for _ in range(8)]]
        pids = {w.pid for w in pool.snapshot().workers}
    assert {pid for pid, *_ in results} <= pids
    assert {(inits, tag) for _, inits, tag, _ in results} == {(1, "ready")}


async def test_async_initializer_is_awaited_on_the_workers_loop() -> None:
    async with FunctionPool(1, worker="process", initializer=m.async_record_init, initargs=("async",)) as pool:
        _, inits, tag, loop_ran = await pool.add_task(m.init_state)
    assert (inits, tag, loop_ran) == (1, "async", True)


async def test_a_lambda_initializer_travels_by_value() -> None:
    tag = "closure"
    async with FunctionPool(1, worker="process", initializer=lambda: m.record_init(tag)) as pool:
        _, inits, got, _ = await pool.add_task(m.init_state)
    assert (inits, got) == (1, "closure")


async def test_recycled_workers_run_it_again() -> None:
    async with FunctionPool(
        1, worker="process", max_tasks_per_worker=1, initializer=m.record_init, initargs=("again",)
    ) as pool:
        results = [await pool.add_task(m.init_state) for _ in range(3)]
    assert len({pid for pid, *_ in results}) == 3  # a fresh process each time
    assert {(inits, tag) for _, inits, tag, _ in results} == {(1, "again")}


async def test_a_restarted_worker_runs_it_again() -> None:
    q = SPAWN.Queue()
    pool = FunctionPool(1, worker="process", initializer=m.put_pid, initargs=(q, "up"), restart=RestartPolicy(delay=0))
    async with pool, pool.events.subscribe("worker.*") as sub:
        first, tag = q.get(timeout=WAIT)
        assert (first, tag) == (pool.snapshot().workers[0].pid, "up")
        with pytest.raises(WorkerCrashed):
            await pool.add_task(m.kill_self)
        await collect_until(sub, lambda e: e.topic == "worker.started")
        second, tag = q.get(timeout=WAIT)
        pid, inits, _, _ = await pool.add_task(m.init_state)
    assert second != first
    assert (pid, inits, tag) == (second, 1, "up")
    q.close()


# --- multiprocessing objects in initargs -------------------------------------------------------


async def test_a_spawn_queue_in_initargs_reaches_every_worker() -> None:
    q = SPAWN.Queue()
    async with FunctionPool(2, worker="process", initializer=m.put_pid, initargs=(q, "hello")) as pool:
        got = sorted([q.get(timeout=WAIT), q.get(timeout=WAIT)])
        pids = sorted(w.pid for w in pool.snapshot().workers)
    assert got == [(pid, "hello") for pid in pids]
    q.close()


async def test_events_semaphores_locks_and_values_in_initargs() -> None:
    event, semaphore, lock, counter = SPAWN.Event(), SPAWN.Semaphore(0), SPAWN.Lock(), SPAWN.Value("i", 0)
    async with FunctionPool(
        2, worker="process", initializer=m.signal_with, initargs=(event, semaphore, lock, counter)
    ) as pool:
        assert event.is_set()
        assert semaphore.acquire(timeout=WAIT)
        assert semaphore.acquire(timeout=WAIT)  # once per worker
        assert counter.value == 2
        assert await pool.add_task(m.kept_lock_is_free)
        with lock:  # the worker's lock is this very one
            assert not await pool.add_task(m.kept_lock_is_free)
        assert await pool.add_task(m.kept_lock_is_free)


# --- an initializer that fails ---------------------------------------------------------------------


async def test_a_failing_initializer_ends_the_worker_before_it_is_ready_and_logs_why() -> None:
    log = SPAWN.Queue()
    spec = WorkerSpec(
        pool_name="init",
        initializer=m.fail_init,
        initargs=(log, "concurrent.futures"),
        init_logger="concurrent.futures",
    )
    exit, ready = await run_worker(spec)
    assert not ready
    assert exit.failed
    assert exit.reason == f"{INIT_FAILED}: ValueError: error in initializer"
    assert exit.exitcode == 1  # it exited by itself, through Python's normal exit
    records = drain(log)  # flushed by the worker's queue feeder as it exited
    assert len(records) == 1
    record = records[0]
    assert (record.name, record.levelname) == ("concurrent.futures", "CRITICAL")
    message = record.getMessage()
    assert message.startswith("Exception in initializer:")
    assert "ValueError: error in initializer" in message
    assert 'File "' in message and "in fail_init" in message  # its traceback, from the initializer
    log.close()


@pytest.mark.parametrize(
    ("initializer", "initargs", "reason"),
    [
        (m.exit_init, (4,), f"{INIT_FAILED}: SystemExit: 4"),
        (m.async_exit_with, (6,), f"{INIT_FAILED}: SystemExit: 6"),
        (m.die_init, (5,), f"{INIT_FAILED}: worker exited with code 5"),
        (f.fail, ("in sync",), f"{INIT_FAILED}: ValueError: in sync"),
        (f.async_fail, ("in async",), f"{INIT_FAILED}: CustomError: in async"),
    ],
)
async def test_how_an_initializer_fails_is_the_workers_exit_reason(
    initializer: Any, initargs: tuple[Any, ...], reason: str
) -> None:
    exit, ready = await run_worker(WorkerSpec(pool_name="init", initializer=initializer, initargs=initargs))
    assert not ready
    assert exit.failed
    assert exit.reason == reason


async def test_an_initializer_that_cannot_be_pickled_fails_the_start_saying_so() -> None:
    spec = WorkerSpec(pool_name="init", initializer=m.record_init, initargs=(threading.Lock(),))
    exit, ready = await run_worker(spec)
    assert not ready
    assert exit.failed
    assert exit.reason.startswith(f"{INIT_FAILED}: SerializationError: cannot send initargs[0] (_thread.lock): ")
    assert exit.exitcode is None  # nothing was spawned


async def test_a_pool_whose_initializer_fails_does_not_start() -> None:
    log = SPAWN.Queue()
    pool = FunctionPool(
        1, worker="process", initializer=m.fail_init, initargs=(log, "taskpool"), restart=RestartPolicy(delay=0)
    )
    async with pool.events.subscribe("worker.exited") as sub:
        with pytest.raises(PoolBroken):
            async with pool:
                pass
        exited = await collect_until(sub, lambda e: True)
    assert exited[0].reason == f"{INIT_FAILED}: ValueError: error in initializer"
    assert any("Exception in initializer:" in r.getMessage() for r in drain(log))
    log.close()


# --- the initializer has no deadline, and the pool can still stop a worker in it ----------------


async def test_a_slow_initializer_is_not_held_to_the_handshake_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_process, "START_TIMEOUT", 1.0)
    release = SPAWN.Event()

    async def later(worker: ProcessWorker) -> None:
        await until(lambda: worker._hello is not None and worker._hello.done(), "the handshake")
        await asyncio.sleep(2.0)  # two handshake deadlines in the initializer: the scenario itself
        release.set()
        await until(lambda: worker._init is not None and worker._init.done(), "the initializer returned")
        worker.stop()

    exit, ready = await run_worker(WorkerSpec(pool_name="init", initializer=m.block_until, initargs=(release,)), later)
    assert ready
    assert exit == WorkerExit(failed=False, reason="stopped", exitcode=0)


async def test_a_worker_stopped_in_its_async_initializer_ends_cleanly_without_being_ready() -> None:
    started, release = SPAWN.Event(), SPAWN.Event()

    async def stop_it(worker: ProcessWorker) -> None:
        await until(started.is_set, "the initializer started")
        worker.stop()

    spec = WorkerSpec(pool_name="init", initializer=m.wait_then_record, initargs=(started, release))
    exit, ready = await run_worker(spec, stop_it)
    assert not ready
    assert exit == WorkerExit(failed=False, reason="stopped", exitcode=0)
