"""Errors on the worker kinds: task exceptions and their tracebacks, crashed workers, PoolBroken."""

from __future__ import annotations

import traceback

import pytest

from taskpool import FunctionPool, PoolBroken, RemoteTraceback, RestartPolicy, TaskState, WorkerCrashed

from . import _funcs as f
from ._support import caps, collect_until

pytestmark = pytest.mark.asyncio


async def test_a_task_exception_carries_the_workers_traceback(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        with pytest.raises(ValueError, match="deep") as info:
            await pool.add_task(f.fail, "deep")
    exc = info.value
    text = "".join(traceback.format_exception(exc))
    assert "in fail" in text  # the frame that raised is visible to the caller
    if caps(kind).isolated:  # rebuilt in the parent: the worker's traceback is its cause
        assert isinstance(exc.__cause__, RemoteTraceback)
        assert "in fail" in exc.__cause__.traceback


async def test_a_crashed_worker_fails_its_task_and_is_replaced(offloop_kind: str) -> None:
    async with FunctionPool(1, worker=offloop_kind, restart=RestartPolicy(delay=0)) as pool:
        async with pool.events.subscribe("worker.*") as sub:
            doomed = pool.add_task(f.crash_worker, 3)
            after = pool.add_task(f.add, 1, 2)
            with pytest.raises(WorkerCrashed) as info:
                await doomed
            assert info.value.worker_id == 0
            if caps(offloop_kind).has_pid:
                assert info.value.exitcode == 3
            assert doomed.state is TaskState.FAILED
            assert doomed.record.error.startswith("WorkerCrashed")
            assert await after == 3  # the queued task runs on the replacement
            events = await collect_until(sub, lambda e: e.topic == "worker.started")
        assert [e.topic for e in events] == ["worker.exited", "worker.restarted", "worker.started"]
        assert events[0].reason == events[1].reason
        assert pool.snapshot().workers[0].restarts == 1
        assert pool.status("failed") == 1


async def test_pool_broken_once_the_restart_limit_is_spent(offloop_kind: str) -> None:
    pool = FunctionPool(1, worker=offloop_kind, restart=RestartPolicy(limit=1, delay=0))
    async with pool:
        doomed = pool.add_task(f.crash_worker, 3)
        queued = pool.add_task(f.add, 1, 2)
        with pytest.raises(WorkerCrashed):
            await doomed
        with pytest.raises(PoolBroken, match="restart limit") as info:
            await queued
        assert isinstance(info.value, RuntimeError)
        assert pool.state == "broken"
        with pytest.raises(PoolBroken):
            pool.add_task(f.add, 1, 2)
        assert pool.has_available_worker() is False
        assert pool.snapshot().workers[0].state == "dead"
    assert pool.state == "closed"  # closing a broken pool neither hangs nor raises
    assert pool.status() == {
        "queued": 0, "active": 0, "completed": 2, "succeeded": 0, "failed": 2,
        "cancelled": 0, "remaining": 0, "started": 1, "total": 2,
    }  # fmt: skip
