"""Persistent workers: a module imported in a worker of its own, called through a proxy.

The modules the proxies import live in ``tests._modules``; ``side_effect`` is never
imported by the test process itself (the tests check ``sys.modules``), and
``stateful`` only by :func:`test_call_is_typed_and_passes_keywords`, which uses its
function objects and never runs them here.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import psutil
import pytest

from taskpool import (
    FunctionPool,
    PersistentWorker,
    PoolBroken,
    PoolClosed,
    RestartPolicy,
    TaskCancelled,
    TaskpoolError,
    TaskTimeout,
    WorkerCrashed,
    WorkerEvent,
    import_persistent_worker,
)

from ._support import WAIT, Gate, caps, collect_until
from .conftest import KINDS

pytestmark = pytest.mark.asyncio

STATEFUL = "tests._modules.stateful"
SIDE_EFFECT = "tests._modules.side_effect"
LOG_ENV = "TASKPOOL_TEST_IMPORT_LOG"

ALL = [k for k in ("process", "thread", "inline") if k in KINDS]
OFFLOOP = [k for k in ("process", "thread") if k in KINDS]
PROCESS = [k for k in ("process",) if k in KINDS]


@pytest.fixture(params=ALL)
def pkind(request: pytest.FixtureRequest) -> str:
    """Every worker kind a persistent worker runs on."""
    return request.param


@pytest.fixture(params=OFFLOOP)
def okind(request: pytest.FixtureRequest) -> str:
    """Worker kinds off the caller's loop (process, thread)."""
    return request.param


def import_log(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> str:
    path = os.path.join(str(tmp_path), "imports.log")
    monkeypatch.setenv(LOG_ENV, path)
    return path


def read_log(path: str) -> list[tuple[int, int]]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [(int(pid), int(tid)) for pid, tid in (line.split() for line in f if line.strip())]


def no_private_copies() -> bool:
    return not [name for name in sys.modules if "<taskpool-" in name]


# --- where the module runs ----------------------------------------------------------------


@pytest.mark.skipif(not PROCESS, reason="process workers unavailable")
async def test_process_imports_the_module_only_in_the_worker(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    log = import_log(tmp_path, monkeypatch)
    assert SIDE_EFFECT not in sys.modules
    async with import_persistent_worker(SIDE_EFFECT, worker="process") as mod:
        worker_pid = await mod.pid()
        assert worker_pid != os.getpid()
        assert await mod.imported_in == worker_pid  # its top-level code ran there
        assert await mod.bump() == 1
        assert await mod.calls == 1
    assert SIDE_EFFECT not in sys.modules  # ... and never here
    assert [pid for pid, _ in read_log(log)] == [worker_pid]


@pytest.mark.parametrize("kind", [k for k in ("thread", "inline") if k in KINDS])
async def test_thread_and_inline_run_a_private_copy(
    kind: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = import_log(tmp_path, monkeypatch)
    assert SIDE_EFFECT not in sys.modules
    async with (
        import_persistent_worker(SIDE_EFFECT, worker=kind) as a,
        import_persistent_worker(SIDE_EFFECT, worker=kind) as b,
    ):
        assert await a.bump() == 1
        assert await a.bump() == 2
        assert await b.bump() == 1  # a copy each
        assert await a.calls == 2
        assert await b.calls == 1
        assert SIDE_EFFECT not in sys.modules  # the parent's sys.modules copy is untouched
        ran = read_log(log)
    assert no_private_copies()
    assert len(ran) == 2  # the module's top-level code ran once per proxy
    assert {pid for pid, _ in ran} == {os.getpid()}
    if kind == "thread":  # on the worker threads, not on ours
        assert threading.get_ident() not in {tid for _, tid in ran}
    else:
        assert {tid for _, tid in ran} == {threading.get_ident()}


@pytest.mark.parametrize("kind", [k for k in ("thread", "inline") if k in KINDS])
async def test_private_copy_leaves_an_imported_module_alone(kind: str) -> None:
    from tests._modules import stateful

    before = stateful.counter
    async with import_persistent_worker(stateful, worker=kind) as mod:
        assert await mod.add(1, 2) == 3
        assert await mod.state() == 1
        p = await mod.point(1, 2)  # a dataclass of the copy (needs its module registered)
        assert (p.x, p.y) == (1, 2)
        assert type(p) is not stateful.Point
    assert stateful.counter == before
    assert sys.modules[STATEFUL] is stateful
    assert no_private_copies()


# --- the proxy ------------------------------------------------------------------------------


async def test_exports_are_learned_at_start(pkind: str) -> None:
    async with import_persistent_worker(STATEFUL, worker=pkind) as mod:
        exports = mod.exports
        assert exports["add"] == "function"
        assert exports["async_add"] == "function"
        assert exports["Point"] == "function"  # a class: calling it constructs
        assert exports["counter"] == "value"
        assert exports["journal"] == "value"
        for left_out in ("annotations", "asyncio", "os", "_funcs", "_path"):
            assert left_out not in exports  # __future__ features, modules, private names
        assert "add" in dir(mod)
        with pytest.raises(AttributeError, match="no attribute 'nope'"):
            mod.nope  # noqa: B018 - at once: no call is made
        with pytest.raises(AttributeError, match="no function 'nope'"):
            mod.call("nope")
        with pytest.raises(AttributeError, match="no function 'counter'"):
            mod.call("counter")
        with pytest.raises(AttributeError):
            mod.__wrapped__  # noqa: B018


async def test_unstarted_proxy_has_no_attributes() -> None:
    proxy: PersistentWorker[object] = PersistentWorker(STATEFUL, worker="inline")
    with pytest.raises(AttributeError, match="not started"):
        proxy.add  # noqa: B018
    with pytest.raises(PoolClosed, match="not started"):
        await proxy._invoke("add", (1, 2), {})
    await proxy.terminate()  # never started: nothing to stop


async def test_functions_become_async_calls_and_values_reflect_state(pkind: str) -> None:
    async with import_persistent_worker(STATEFUL, worker=pkind) as mod:
        assert await mod.counter == 0
        assert await mod.add(1, 2) == 3
        assert await mod.async_add(3, 4) == 7
        assert await mod.state() == 2
        assert await mod.counter == 2
        assert await mod.label == "stateful"
        assert await mod.set_label("changed") == "changed"
        assert await mod.label == "changed"
        with pytest.raises(ValueError, match="bad input"):
            await mod.fail("bad input")
        assert await mod.add(0, 0) == 0  # an error does not harm the worker
        assert await mod.counter == 3


async def test_each_proxy_has_state_of_its_own(pkind: str) -> None:
    async with (
        import_persistent_worker(STATEFUL, worker=pkind) as a,
        import_persistent_worker(STATEFUL, worker=pkind) as b,
    ):
        for i in range(3):
            await a.add(i, i)
        await b.add(1, 1)
        assert (await a.state(), await b.state()) == (3, 1)


async def test_calls_run_one_at_a_time_in_call_order(pkind: str) -> None:
    async with import_persistent_worker(STATEFUL, worker=pkind) as mod:
        calls = [mod.record(i) if i % 3 else mod.record_sync(i) for i in range(200)]
        assert await asyncio.gather(*calls) == list(range(200))
        assert await mod.log() == [f"{step} {i}" for i in range(200) for step in ("enter", "exit")]


async def test_a_call_is_submitted_when_made_not_when_awaited(pkind: str) -> None:
    async with import_persistent_worker(STATEFUL, worker=pkind) as mod:
        first = mod.record(1)
        second = mod.record(2)
        assert await second == 2
        assert await first == 1
        assert await mod.log() == ["enter 1", "exit 1", "enter 2", "exit 2"]


async def test_call_is_typed_and_passes_keywords(pkind: str) -> None:
    from tests._modules import stateful

    async with import_persistent_worker(STATEFUL, worker=pkind) as mod:
        total: int = await mod.call(stateful.add, 1, 2)
        assert total == 3
        assert await mod.call(stateful.async_add, 2, 3) == 5  # awaited in the worker
        assert await mod.call(stateful.options, 1, b=2, c="x") == [1, 2, "x"]
        assert await mod.call("options", 4, c="y") == [4, 0, "y"]
        assert await mod.options(5, b=6) == [5, 6, ""]  # keywords through attribute calls too
        assert await mod.counter == 2
        with pytest.raises(AttributeError, match="no function 'len'"):
            mod.call(len, [1])  # not the module's


# --- termination --------------------------------------------------------------------------


async def test_terminate_and_async_with(pkind: str) -> None:
    mod = await import_persistent_worker(STATEFUL, worker=pkind)
    assert await mod.add(1, 1) == 2
    await mod.terminate()
    await mod.terminate()  # again: nothing happens
    with pytest.raises(PoolClosed, match="terminated") as info:
        await mod.add(1, 1)
    assert isinstance(info.value, TaskpoolError)
    with pytest.raises(PoolClosed):
        await mod.counter

    async with import_persistent_worker(STATEFUL, worker=pkind) as mod2:
        assert await mod2.add(2, 2) == 4
    with pytest.raises(PoolClosed):
        await mod2.add(2, 2)
    with pytest.raises(RuntimeError, match="already started"):
        await mod2.start()


async def test_terminate_cancels_pending_calls(pkind: str) -> None:
    async with Gate() as gate:
        mod = await import_persistent_worker(STATEFUL, worker=pkind)
        running = asyncio.ensure_future(mod.wait_gate(gate.path, "running"))
        queued = [asyncio.ensure_future(mod.add(i, i)) for i in range(3)]
        await gate.arrived("running")
        await mod.terminate()
        for call in [running, *queued]:
            with pytest.raises(TaskCancelled):
                await call
        await gate.hung_up("running")


async def test_start_errors(pkind: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        await import_persistent_worker("tests._modules.no_such_module", worker=pkind)
    with pytest.raises(RuntimeError, match="refusing to be imported"):
        await import_persistent_worker("tests._modules.broken_import", worker=pkind)
    with pytest.raises(ValueError, match="__main__"):
        import_persistent_worker("__main__", worker=pkind)
    with pytest.raises(ValueError, match="worker"):
        import_persistent_worker(STATEFUL, worker="fiber")
    with pytest.raises(TypeError):
        import_persistent_worker(42, worker=pkind)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        import_persistent_worker(STATEFUL, worker=pkind, restart="always")  # type: ignore[arg-type]
    assert no_private_copies()


# --- crashes and restarts (a crash needs a process: os._exit) ------------------------------


@pytest.mark.skipif(not PROCESS, reason="process workers unavailable")
async def test_crash_fails_running_and_pending_calls_then_calls_fail_at_once() -> None:
    async with import_persistent_worker(STATEFUL, worker="process") as mod:
        assert await mod.add(1, 1) == 2
        crash = mod.crash(3)
        pending = [mod.add(i, i) for i in range(5)]
        with pytest.raises(WorkerCrashed) as info:
            await crash
        assert info.value.exitcode == 3
        for call in pending:
            with pytest.raises(WorkerCrashed, match="before this call ran"):
                await call
        # No restart policy: later calls fail promptly instead of waiting for a worker.
        async with asyncio.timeout(WAIT):
            with pytest.raises(PoolBroken, match="no restart policy"):
                await mod.add(1, 1)
            with pytest.raises(PoolBroken):
                await mod.counter
        assert "broken" in repr(mod)


@pytest.mark.skipif(not PROCESS, reason="process workers unavailable")
async def test_crash_with_a_restart_policy_goes_on_with_a_fresh_worker() -> None:
    async with import_persistent_worker(STATEFUL, worker="process", restart=RestartPolicy(delay=0.0)) as mod:
        async with mod.events.subscribe("worker.*") as sub:
            assert await mod.add(1, 1) == 2
            assert await mod.state() == 1
            pid, _ = await mod.where()
            crash = mod.crash(4)
            behind = mod.add(2, 2)
            with pytest.raises(WorkerCrashed):
                await crash
            with pytest.raises(WorkerCrashed):
                await behind  # queued before the crash: it must not run on the fresh worker
            assert await mod.state() == 0  # a fresh worker: state starts over
            new_pid, _ = await mod.where()
            assert new_pid != pid
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            events = await collect_until(sub, lambda e: e.topic == "worker.restarted")
        exited = [e for e in events if e.topic == "worker.exited"]
        assert exited and exited[-1].exitcode == 4
        restarted = events[-1]
        assert isinstance(restarted, WorkerEvent)
        assert restarted.role == "persistent"


@pytest.mark.skipif(not PROCESS, reason="process workers unavailable")
async def test_restart_limit_spent_breaks_the_proxy() -> None:
    policy = RestartPolicy(delay=0.0, limit=1)
    async with import_persistent_worker(STATEFUL, worker="process", restart=policy) as mod:
        with pytest.raises(WorkerCrashed):
            await mod.crash()
        async with asyncio.timeout(WAIT):
            with pytest.raises(PoolBroken):
                await mod.add(1, 1)


# --- timeouts -------------------------------------------------------------------------------


@pytest.mark.skipif(not PROCESS, reason="process workers unavailable")
async def test_timeout_of_blocking_call_kills_a_process_worker() -> None:
    async with Gate() as gate, import_persistent_worker(STATEFUL, worker="process", timeout=0.5) as mod:
        assert await mod.add(1, 1) == 2
        pid, _ = await mod.where()
        with pytest.raises(TaskTimeout):
            await mod.block_gate(gate.path, "stuck")
        await gate.hung_up("stuck")  # the worker was killed in the middle of the call
        new_pid, _ = await mod.where()
        assert new_pid != pid
        assert await mod.state() == 0  # a new worker: state starts over


@pytest.mark.skipif(not PROCESS, reason="process workers unavailable")
async def test_timeout_of_async_call_cancels_it_and_keeps_the_process_worker() -> None:
    async with Gate() as gate, import_persistent_worker(STATEFUL, worker="process", timeout=0.5) as mod:
        assert await mod.add(1, 1) == 2
        pid, _ = await mod.where()
        with pytest.raises(TaskTimeout):
            await mod.wait_gate(gate.path, "slow")
        await gate.hung_up("slow")  # cancelled in the worker
        assert (await mod.where())[0] == pid
        assert await mod.state() == 1


@pytest.mark.skipif("thread" not in KINDS, reason="thread workers unavailable")
async def test_timeout_of_blocking_call_on_a_thread_worker() -> None:
    async with Gate() as gate, import_persistent_worker(STATEFUL, worker="thread", timeout=0.5) as mod:
        assert await mod.add(1, 1) == 2
        _, tid = await mod.where()
        with pytest.raises(TaskTimeout):
            await mod.block_gate_twice(gate.path, "stuck")
        # A thread cannot be killed: the call keeps running on its (abandoned) thread,
        # while a new worker with a fresh copy of the module serves the next calls.
        assert "stuck" not in gate.hangups
        _, new_tid = await mod.where()
        assert new_tid != tid
        assert await mod.state() == 0
        gate.release("stuck")
        await gate.arrived("stuck-after")  # it went on after its timeout
        gate.release("stuck-after")


@pytest.mark.parametrize("kind", [k for k in ("thread", "inline") if k in KINDS])
async def test_timeout_of_async_call_keeps_a_thread_or_inline_worker(kind: str) -> None:
    async with Gate() as gate, import_persistent_worker(STATEFUL, worker=kind, timeout=0.5) as mod:
        assert await mod.add(1, 1) == 2
        where = await mod.where()
        with pytest.raises(TaskTimeout):
            await mod.wait_gate(gate.path, "slow")
        await gate.hung_up("slow")
        assert await mod.where() == where
        assert await mod.state() == 1


# --- tied to a pool -------------------------------------------------------------------------


async def test_pool_bound_worker_in_snapshot_and_events(okind: str) -> None:
    async with FunctionPool(2, worker="inline", name="host") as pool:
        async with pool.events.subscribe("worker.*") as sub:
            mod = await pool.import_persistent_worker(STATEFUL, worker=okind)
            started = await collect_until(sub, lambda e: e.topic == "worker.started")
            assert await mod.add(1, 2) == 3
            workers = pool.snapshot().workers
            assert [w.role for w in workers] == ["pool", "pool", "persistent"]
            mine = workers[-1]
            assert mine.id == 2  # after the pool's own
            assert mine.kind == okind
            assert mine.name is not None and mine.name.startswith("host:tests._modules.stateful#")
            assert mine.tasks_done >= 2
            if caps(okind).has_pid:
                assert mine.pid is not None and mine.pid != os.getpid()
                pid = mine.pid
            assert started[-1].worker_id == mine.id
            assert started[-1].role == "persistent"
    # The pool closed: the proxy was terminated with it.
    with pytest.raises(PoolClosed):
        await mod.add(1, 2)
    if caps(okind).has_pid:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(PoolClosed):
        pool.import_persistent_worker(STATEFUL, worker=okind)


@pytest.mark.skipif(not PROCESS, reason="process workers unavailable")
async def test_pool_bound_restart_is_published_on_the_pool_bus() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        mod = await pool.import_persistent_worker(STATEFUL, restart=RestartPolicy(delay=0.0))
        async with pool.events.subscribe("worker.restarted") as sub:
            with pytest.raises(WorkerCrashed):
                await mod.crash()
            (event,) = await collect_until(sub, lambda e: True)
            assert event.role == "persistent"
            assert event.worker_id == 1
            assert await mod.state() == 0
        assert pool.snapshot().workers[-1].restarts == 1


async def test_pool_bound_worker_terminated_by_a_pool_that_never_started(okind: str) -> None:
    pool = FunctionPool(1, worker="inline")
    mod = await pool.import_persistent_worker(STATEFUL, worker=okind)
    assert await mod.add(1, 1) == 2
    await pool.aclose()
    with pytest.raises(PoolClosed):
        await mod.add(1, 1)


async def test_terminated_pool_bound_worker_leaves_the_snapshot() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        mod = await pool.import_persistent_worker(STATEFUL, worker="inline")
        assert len(pool.snapshot().workers) == 2
        await mod.terminate()
        assert len(pool.snapshot().workers) == 1


async def test_persistent_worker_inside_pool_tasks(pkind: str) -> None:
    """The seed's pattern: the pool's inline tasks each drive a worker of their own."""

    async def task(n: int) -> int:
        async with import_persistent_worker(STATEFUL, worker=pkind) as mod:
            for _ in range(n):
                await mod.add(1, 1)
            return await mod.state()  # type: ignore[no-any-return]

    async with FunctionPool(3, worker="inline") as pool:
        tasks = [pool.add_task(task, n) for n in (1, 2, 3)]
    assert [t.result() for t in tasks] == [1, 2, 3]
