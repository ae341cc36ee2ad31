"""Pool lifecycle: start, async with, join, aclose and its variants, the seed pattern."""

from __future__ import annotations

import asyncio

import pytest

from taskpool import FunctionPool, PoolClosed, TaskCancelled, TaskState

from . import _funcs as f
from ._support import Gate

pytestmark = pytest.mark.asyncio


@pytest.mark.uvloop
async def test_async_with_exit_waits_for_every_task(kind: str) -> None:
    async with Gate() as gate:
        seen_state: list[str] = []

        async def release_while_closing(pool: FunctionPool) -> None:
            await gate.arrived("a", "b")
            seen_state.append(pool.state)
            gate.open()

        async with FunctionPool(2, worker=kind) as pool:
            assert pool.state == "running"
            tasks = [pool.add_task(f.wait_gate, gate.path, tag) for tag in ("a", "b", "c", "d")]
            releaser = asyncio.ensure_future(release_while_closing(pool))
        assert seen_state == ["closing"]  # exit was waiting for the gated tasks
        assert [t.state for t in tasks] == [TaskState.SUCCEEDED] * 4
        assert [t.result() for t in tasks] == ["a", "b", "c", "d"]
        assert pool.state == "closed"
        await releaser


@pytest.mark.uvloop
async def test_body_raising_cancels_queued_and_running_tasks(kind: str) -> None:
    caught: list[int] = []
    async with Gate() as gate:
        with pytest.raises(KeyError):
            async with FunctionPool(1, worker=kind) as pool:
                pool.catch(lambda exc, t: caught.append(t.id))
                running = pool.add_task(f.wait_gate, gate.path, "running")
                queued = [pool.add_task(f.wait_gate, gate.path, f"q{i}") for i in range(3)]
                await gate.arrived("running")
                raise KeyError("body failed")
        await gate.hung_up("running")
    assert pool.state == "closed"
    for t in [running, *queued]:
        assert t.state is TaskState.CANCELLED
        with pytest.raises(TaskCancelled):
            await t
    assert gate.arrivals == ["running"]  # the queued ones never ran
    assert sorted(caught) == sorted(t.id for t in [running, *queued])
    counts = pool.status()
    assert (counts["cancelled"], counts["started"], counts["total"], counts["remaining"]) == (4, 1, 4, 0)


async def test_aclose_cancel_true(kind: str) -> None:
    async with Gate() as gate:
        pool = FunctionPool(2, worker=kind)
        await pool.start()
        running = [pool.add_task(f.wait_gate, gate.path, tag) for tag in ("a", "b")]
        queued = pool.add_task(f.wait_gate, gate.path, "c")
        await gate.arrived("a", "b")
        await pool.aclose(cancel=True)
        await gate.hung_up("a", "b")
        assert [t.state for t in [*running, queued]] == [TaskState.CANCELLED] * 3
        assert pool.status("cancelled") == 3
        assert pool.state == "closed"


async def test_aclose_grace_cancels_what_is_left_when_it_runs_out(kind: str) -> None:
    async with Gate() as gate:
        pool = FunctionPool(1, worker=kind)
        await pool.start()
        quick = pool.add_task(f.add, 1, 1)
        stuck = pool.add_task(f.wait_gate, gate.path, "stuck")
        await gate.arrived("stuck")
        await pool.aclose(grace=0.05)  # the grace period is what is under test
        assert await quick == 2
        assert stuck.state is TaskState.CANCELLED
        assert "grace" in str(stuck.exception())
        await gate.hung_up("stuck")


async def test_aclose_grace_returns_once_drained(kind: str) -> None:
    async with Gate() as gate:
        pool = FunctionPool(1, worker=kind)
        await pool.start()
        task = pool.add_task(f.wait_gate, gate.path, "t")
        await gate.arrived("t")
        closing = asyncio.ensure_future(pool.aclose(grace=60))
        await asyncio.sleep(0)
        gate.release("t")
        await asyncio.wait_for(closing, 10)  # long before the grace period ends
        assert task.state is TaskState.SUCCEEDED
    with pytest.raises(ValueError, match="grace"):
        await FunctionPool(1, worker=kind).aclose(grace=-1)


async def test_aclose_twice_and_concurrently(kind: str) -> None:
    pool = FunctionPool(1, worker=kind)
    await pool.start()
    task = pool.add_task(f.add, 1, 2)
    await asyncio.gather(pool.aclose(), pool.aclose())
    assert pool.state == "closed"
    assert await task == 3
    await pool.aclose()
    await pool.aclose(cancel=True)
    assert pool.state == "closed"


async def test_aclose_on_a_pool_never_started(kind: str) -> None:
    pool = FunctionPool(2, worker=kind)
    assert pool.state == "new"
    queued = pool.add_task(f.add, 1, 2)  # accepted before start, runs once started...
    await pool.aclose()  # ...but this pool is closed before that
    assert pool.state == "closed"
    assert queued.state is TaskState.CANCELLED
    with pytest.raises(TaskCancelled):
        await queued
    with pytest.raises(PoolClosed):
        pool.add_task(f.add, 1, 2)
    await pool.aclose()
    with pytest.raises(RuntimeError, match="already started"):
        await pool.start()


async def test_tasks_added_before_start_run_once_started(kind: str) -> None:
    pool = FunctionPool(2, worker=kind)
    tasks = [pool.add_task(f.add, i, i) for i in range(5)]
    assert pool.has_available_worker() is False  # work is queued
    with pytest.raises(RuntimeError, match="not started"):
        await pool.join()
    async with pool:
        assert [await t for t in tasks] == [0, 2, 4, 6, 8]


async def test_start_and_aclose_from_different_asyncio_tasks(kind: str) -> None:
    pool = FunctionPool(2, worker=kind)
    started = await asyncio.ensure_future(pool.start())
    assert started is pool
    task = pool.add_task(f.async_add, 1, 2)
    with pytest.raises(RuntimeError, match="already started"):
        await pool.start()

    async def closer() -> None:
        await pool.aclose()

    await asyncio.ensure_future(closer())
    assert pool.state == "closed"
    assert await task == 3


async def test_cancelling_the_code_that_closes_still_closes(kind: str) -> None:
    async with Gate() as gate:
        pool = FunctionPool(1, worker=kind)
        await pool.start()
        task = pool.add_task(f.wait_gate, gate.path, "t")
        await gate.arrived("t")
        closing = asyncio.ensure_future(pool.aclose())
        await asyncio.sleep(0)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert pool.state == "closed"
        assert task.state is TaskState.CANCELLED
        await gate.hung_up("t")


async def test_join_waits_until_drained(kind: str) -> None:
    async with FunctionPool(2, worker=kind) as pool, Gate() as gate:
        await pool.join()  # nothing to wait for
        tasks = [pool.add_task(f.wait_gate, gate.path, tag) for tag in ("a", "b", "c")]
        joiners = [asyncio.ensure_future(pool.join()) for _ in range(2)]
        await gate.arrived("a", "b")
        assert not any(j.done() for j in joiners)
        gate.release("a", "b")
        await gate.arrived("c")
        assert not any(j.done() for j in joiners)
        gate.release("c")
        await asyncio.gather(*joiners)
        assert all(t.done() for t in tasks)
        assert pool.status("remaining") == 0
        assert pool.state == "running"  # join does not close
        assert await pool.add_task(f.add, 1, 1) == 2


async def test_join_includes_follow_up_work_added_by_hooks(kind: str) -> None:
    async with FunctionPool(2, worker=kind) as pool:
        pool.then(lambda r, t: pool.add_task(f.add, r, 1) if r < 5 else None)
        pool.add_task(f.add, 0, 1)
        await pool.join()
        assert pool.status("succeeded") == 5


# --- the seed pattern: work added by the pool's own hooks and inline tasks while closing ---


async def test_follow_up_tasks_from_hooks_are_accepted_while_exit_drains(kind: str) -> None:
    results: list[int] = []
    async with FunctionPool(2, worker=kind) as pool:

        async def async_then(result: int, task: object) -> None:
            for _ in range(5):  # let the pool see itself drained meanwhile
                await asyncio.sleep(0)
            if result == 3:
                pool.add_task(f.async_add, result, 10)

        pool.then(lambda r, t: results.append(r))
        pool.then(lambda r, t: pool.add_task(f.add, r, 1) if r % 10 < 3 else None)
        pool.then(async_then)
        pool.add_task(f.add, 0, 0)
        # The body ends at once: exit drains while the hooks keep adding work.
    assert pool.state == "closed"
    assert sorted(results) == [0, 1, 2, 3, 13]  # nothing added while closing was lost
    assert pool.status("succeeded") == pool.status("total") == 5


async def test_all_settled_hook_may_start_another_round_while_closing(kind: str) -> None:
    rounds: list[list[int]] = []
    async with FunctionPool(2, worker=kind) as pool:

        def again(tasks: list) -> None:
            rounds.append(sorted(t.result() for t in tasks))
            if len(rounds) < 3:
                pool.add_task(f.add, len(rounds), 100)

        pool.all_settled(again)
        pool.add_task(f.add, 0, 0)
    assert rounds == [[0], [101], [102]]


async def test_inline_tasks_add_work_to_their_own_pool_while_it_closes() -> None:
    # The seed examples: an orchestrating inline task fans out more tasks.
    async with FunctionPool(2, worker="inline") as pool:
        parent = pool.add_task(f.spawn, pool, 4)
    assert await parent == [1, 2, 3, 4]
    assert pool.status("succeeded") == 5


async def test_outsiders_cannot_add_work_while_the_pool_closes(kind: str) -> None:
    async with Gate() as gate:
        errors: list[BaseException] = []

        async def outsider(pool: FunctionPool) -> None:
            await gate.arrived("t")
            try:
                pool.add_task(f.add, 1, 2)
            except PoolClosed as exc:
                errors.append(exc)
            gate.open()

        async with FunctionPool(1, worker=kind) as pool:
            pool.add_task(f.wait_gate, gate.path, "t")
            other = asyncio.ensure_future(outsider(pool))
        await other
        assert len(errors) == 1
        assert pool.status("total") == 1


async def test_lifecycle_events(kind: str) -> None:
    pool = FunctionPool(2, worker=kind)
    sub = pool.events.subscribe("worker.*", "pool.*")
    async with sub:
        async with pool:
            await pool.add_task(f.add, 1, 2)
        events = [e async for e in sub]  # ends: the bus closed with the pool
    topics = [e.topic for e in events]
    assert topics.count("worker.started") == 2
    assert topics.count("worker.exited") == 2
    assert topics[-1] == "pool.closed"
    assert "pool.drained" in topics
    assert {e.worker_id for e in events if e.topic.startswith("worker.")} == {0, 1}
    assert all(e.worker_kind == kind for e in events if e.topic.startswith("worker."))
    exited = [e for e in events if e.topic == "worker.exited"]
    assert {e.reason for e in exited} == {"stopped"}
    assert events[-1].pool == pool.name


async def test_aclose_waits_for_a_running_async_hook_and_its_follow_up_work(kind: str) -> None:
    hook_started = asyncio.Event()
    hook_may_finish = asyncio.Event()
    follow_up = []

    async def slow_then(result: int, task: object) -> None:
        if result == 2:
            hook_started.set()
            await hook_may_finish.wait()
            follow_up.append(pool.add_task(f.add, result, 1))

    pool = FunctionPool(1, worker=kind)
    await pool.start()
    pool.then(slow_then)
    await pool.add_task(f.add, 1, 1)
    await hook_started.wait()
    closing = asyncio.ensure_future(pool.aclose())
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        assert not closing.done()
        assert pool.state == "closing"
    finally:
        hook_may_finish.set()
    await asyncio.wait_for(closing, 10)
    assert [t.state for t in follow_up] == [TaskState.SUCCEEDED]
    assert follow_up[0].result() == 3


async def test_join_waits_for_a_running_async_hook(kind: str) -> None:
    hook_waiting = asyncio.Event()
    hook_may_finish = asyncio.Event()

    async def slow_then(result: int, task: object) -> None:
        hook_waiting.set()
        await hook_may_finish.wait()
        if result < 3:
            pool.add_task(f.add, result, 1)

    async with FunctionPool(1, worker=kind) as pool:
        pool.then(slow_then)
        await pool.add_task(f.add, 0, 1)
        await hook_waiting.wait()
        assert pool.status("remaining") == 0  # no task left, but the hook may add some
        joining = asyncio.ensure_future(pool.join())
        try:
            for _ in range(5):
                await asyncio.sleep(0)
            assert not joining.done()
        finally:
            hook_may_finish.set()
        await asyncio.wait_for(joining, 10)
        assert pool.status("succeeded") == 3


async def test_an_async_hook_may_await_join(kind: str) -> None:
    joined: list[int] = []

    async def then(result: int, task: object) -> None:
        if result == 1:
            pool.add_task(f.add, result, 1)
            await pool.join()  # waits for the follow-up, not for this hook itself
            joined.append(pool.status("succeeded"))

    async with FunctionPool(1, worker=kind) as pool:
        pool.then(then)
        pool.add_task(f.add, 0, 1)
        await asyncio.wait_for(pool.join(), 10)
    assert joined == [2]
