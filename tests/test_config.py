"""Constructor arguments: invalid ones raise naming the argument; TASKPOOL_WORKERS."""

from __future__ import annotations

import os

import pytest

from taskpool import FunctionPool, RestartPolicy

from . import _funcs as f
from ._support import Gate


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"pool_size": 0}, ValueError, "pool_size.*>= 1"),
        ({"pool_size": -3}, ValueError, "pool_size"),
        ({"pool_size": 2.0}, TypeError, "pool_size"),
        ({"pool_size": True}, TypeError, "pool_size"),
        ({"worker": "nope"}, ValueError, "worker must be one of 'process', 'thread', 'inline'.*; got 'nope'"),
        ({"worker": None}, ValueError, "worker must be one of"),
        ({"task_timeout": -1}, ValueError, "task_timeout.*> 0"),
        ({"task_timeout": 0}, ValueError, "task_timeout"),
        ({"task_timeout": float("nan")}, ValueError, "task_timeout"),
        ({"task_timeout": "5"}, TypeError, "task_timeout"),
        ({"max_queue": 0}, ValueError, "max_queue.*>= 1"),
        ({"max_queue": -1}, ValueError, "max_queue"),
        ({"max_queue": 1.5}, TypeError, "max_queue"),
        ({"keep_records": -1}, ValueError, "keep_records.*>= 0"),
        ({"keep_records": "10"}, ValueError, "keep_records"),
        ({"max_tasks_per_worker": 0}, ValueError, "max_tasks_per_worker"),
        ({"max_memory_per_worker": 0}, ValueError, "max_memory_per_worker"),
        ({"max_memory_per_worker": 10**9, "worker": "thread"}, ValueError, "max_memory_per_worker.*process"),
        ({"restart": "x"}, TypeError, "restart must be a RestartPolicy"),
        ({"name": ""}, ValueError, "name"),
        ({"log_dir": 3}, TypeError, "log_dir"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs: dict, error: type, pattern: str) -> None:
    kwargs.setdefault("worker", "inline")
    if "pool_size" not in kwargs:
        kwargs["pool_size"] = 1
    with pytest.raises(error, match=pattern):
        FunctionPool(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"mode": "x"}, "mode"),
        ({"delay": -1}, "delay"),
        ({"backoff": 0.5}, "backoff"),
        ({"max_delay": float("inf")}, "max_delay"),
        ({"limit": 0}, "limit"),
        ({"reset_after": -1}, "reset_after"),
    ],
)
def test_invalid_restart_policy_names_the_argument(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        RestartPolicy(**kwargs)


@pytest.mark.parametrize("kind", ["inline", "thread"])
def test_valid_arguments_are_kept(kind: str) -> None:
    pool = FunctionPool(
        3, worker=kind, max_queue=5, task_timeout=1, keep_records=0, name="mine", restart=RestartPolicy(mode="never")
    )
    assert (pool.pool_size, pool.worker_kind, pool.name, pool.state) == (3, kind, "mine", "new")
    assert pool.restart.mode == "never"
    assert FunctionPool(1, worker=kind).restart == RestartPolicy()  # default: on-failure
    assert FunctionPool(1, worker=kind).name != FunctionPool(1, worker=kind).name


@pytest.mark.parametrize("bad", ["abc", "0", "-2", "1.5"])
def test_bad_taskpool_workers_env_var(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("TASKPOOL_WORKERS", bad)
    with pytest.raises(ValueError, match="TASKPOOL_WORKERS.*>= 1"):
        FunctionPool(worker="inline")
    assert FunctionPool(2, worker="inline").pool_size == 2  # an explicit size does not read it


def test_good_taskpool_workers_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPOOL_WORKERS", " 3 ")
    assert FunctionPool(worker="inline").pool_size == 3
    assert FunctionPool(5, worker="inline").pool_size == 5


def test_default_pool_size_is_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKPOOL_WORKERS", raising=False)
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert FunctionPool(worker="inline").pool_size == expected
    monkeypatch.setenv("TASKPOOL_WORKERS", "")
    assert FunctionPool(worker="inline").pool_size == expected


@pytest.mark.asyncio
async def test_env_sized_pool_runs_that_many_at_once(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setenv("TASKPOOL_WORKERS", "3")
    async with FunctionPool(worker=kind) as pool, Gate() as gate:
        tasks = [pool.add_task(f.wait_gate, gate.path, str(i)) for i in range(3)]
        await gate.arrived("0", "1", "2")
        assert pool.status("active") == 3
        assert len(pool.snapshot().workers) == 3
        gate.open()
        for t in tasks:
            await t
