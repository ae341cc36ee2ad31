"""status(), has_available_worker() and snapshot()."""

from __future__ import annotations

import msgspec
import pytest

from taskpool import FunctionPool, PoolSnapshot, StatusType, TaskRecord, TaskState

from . import _funcs as f
from ._support import Gate, caps, settle

pytestmark = pytest.mark.asyncio

FIELDS = ["queued", "active", "completed", "succeeded", "failed", "cancelled", "remaining", "started", "total"]


@pytest.mark.uvloop
async def test_every_field_in_every_kind(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool, Gate() as gate:
        ok = pool.add_task(f.add, 1, 1)
        bad = pool.add_task(f.fail, "no")
        await ok
        await settle(bad)
        running = pool.add_task(f.wait_gate, gate.path, "run")
        await gate.arrived("run")
        q1 = pool.add_task(f.add, 1, 2)
        q2 = pool.add_task(f.add, 1, 3)
        gone = pool.add_task(f.add, 1, 4)
        gone.cancel()

        counts = pool.status()
        assert counts == pool.status("*") == pool.status("*", StatusType.COUNT) == pool.status(kind="count")
        assert list(counts) == FIELDS
        # "active" counts what the worker holds: the running task, plus what waits in its
        # window (how much a kind prefetches differs); "queued" the rest.
        held = counts["active"]
        assert 1 <= held <= 3
        assert counts == {
            "queued": 3 - held, "active": held, "completed": 3, "succeeded": 1, "failed": 1,
            "cancelled": 1, "remaining": 3, "started": 3, "total": 6,
        }  # fmt: skip
        for field, n in counts.items():
            assert pool.status(field) == n
            assert type(pool.status(field)) is int
            assert pool.status(field, StatusType.PERCENT) == pytest.approx(100.0 * n / 6)
            assert type(pool.status(field, "percent")) is float
        assert pool.status("*", StatusType.PERCENT)["total"] == 100.0

        raw = pool.status("*", StatusType.RAW)
        assert set(raw) == set(FIELDS)
        assert all(isinstance(r, TaskRecord) for records in raw.values() for r in records)
        ids = {field: sorted(r.id for r in records) for field, records in raw.items()}
        windowed = [q1.id, q2.id][: held - 1]  # handed to the worker in submission order
        assert ids == {
            "queued": [q1.id, q2.id][held - 1 :],
            "active": sorted([running.id, *windowed]),
            "completed": [ok.id, bad.id, gone.id],
            "succeeded": [ok.id],
            "failed": [bad.id],
            "cancelled": [gone.id],
            "remaining": [running.id, q1.id, q2.id],
            "started": [ok.id, bad.id, running.id],
            "total": sorted([ok.id, bad.id, gone.id, running.id, q1.id, q2.id]),
        }
        assert all(r.state is TaskState.QUEUED for r in raw["queued"])
        assert raw["active"][0].state is TaskState.RUNNING
        assert pool.status("failed", StatusType.RAW)[0].error == "ValueError: no"
        assert pool.status("failed", "raw") == pool.status("failed", StatusType.RAW)
        gate.release("run")
        await pool.join()
        assert pool.status("completed") == pool.status("total") == 6
        assert pool.status("completed", StatusType.PERCENT) == 100.0
        assert pool.status("remaining", StatusType.RAW) == []


async def test_unknown_field_or_kind_raises_value_error(kind: str) -> None:
    pool = FunctionPool(1, worker=kind)
    with pytest.raises(ValueError, match="unknown status field 'running'.*queued"):
        pool.status("running")
    with pytest.raises(ValueError, match="unknown status field"):
        pool.status("running", StatusType.RAW)
    with pytest.raises(ValueError, match="unknown status kind 'bytes'.*count"):
        pool.status("total", "bytes")
    await pool.aclose()


async def test_percent_is_zero_when_nothing_was_added(kind: str) -> None:
    pool = FunctionPool(1, worker=kind)
    assert pool.status("*", StatusType.PERCENT) == dict.fromkeys(FIELDS, 0.0)
    async with pool:
        assert pool.status("completed", StatusType.PERCENT) == 0.0
        assert pool.status("*") == dict.fromkeys(FIELDS, 0)
        assert pool.status("*", StatusType.RAW) == {field: [] for field in FIELDS}


async def test_keep_records_bounds_raw_but_counts_stay_exact(kind: str) -> None:
    settled: list[int] = []  # the order the pool settled them in (what records follow)
    async with FunctionPool(2, worker=kind, keep_records=3) as pool:
        tasks = [pool.add_task(f.add, i, 0) for i in range(10)]
        for t in tasks:
            t.add_done_callback(lambda t: settled.append(t.id))
        await pool.join()
        assert pool.status("completed") == pool.status("succeeded") == 10
        raw = pool.status("completed", StatusType.RAW)
        assert len(raw) == 3
        assert {r.id for r in raw} <= {t.id for t in tasks}
        assert [r.id for r in raw] == settled[-3:]
    async with FunctionPool(1, worker=kind, keep_records=0) as pool:
        await pool.add_task(f.add, 1, 1)
        assert pool.status("completed", StatusType.RAW) == []
        assert pool.status("completed") == 1


async def test_has_available_worker(kind: str) -> None:
    async with FunctionPool(2, worker=kind) as pool, Gate() as gate:
        assert pool.has_available_worker() is True
        assert pool.has_available_thread() is True  # the seed's name for it
        a = pool.add_task(f.wait_gate, gate.path, "a")
        await gate.arrived("a")
        assert pool.has_available_worker() is True  # one of two is idle
        b = pool.add_task(f.wait_gate, gate.path, "b")
        await gate.arrived("b")
        assert pool.has_available_worker() is False
        assert pool.has_available_thread() is False
        c = pool.add_task(f.add, 1, 1)
        assert pool.has_available_worker() is False
        gate.release("a")
        await a
        await c
        gate.release("b")
        await b
        await pool.join()
        assert pool.has_available_worker() is True
    assert pool.has_available_worker() is False  # closed


async def test_snapshot_shows_counts_and_workers_and_encodes_to_json(kind: str) -> None:
    async with FunctionPool(2, worker=kind, name="dash") as pool, Gate() as gate:
        done = pool.add_task(f.add, 1, 1)
        await done
        busy = pool.add_task(f.wait_gate, gate.path, "busy")
        await gate.arrived("busy")
        queued = [pool.add_task(f.wait_gate, gate.path, f"q{i}") for i in range(3)]
        snap = pool.snapshot()
        assert isinstance(snap, PoolSnapshot)
        assert (snap.name, snap.kind, snap.pool_size, snap.state) == ("dash", kind, 2, "running")
        assert snap.counts == pool.status()
        assert snap.queue_depth == pool.status("queued")
        assert pool.status("queued") + pool.status("active") == 4  # the rest wait in windows
        assert [w.id for w in snap.workers] == [0, 1]
        by_task = {w.current_task: w for w in snap.workers}
        assert busy.id in by_task
        worker = by_task[busy.id]
        assert worker.state == "busy"
        assert worker.kind == kind
        assert worker.restarts == 0
        assert sum(w.tasks_done for w in snap.workers) == 1
        can = caps(kind)
        if can.has_pid:
            assert all(isinstance(w.pid, int) for w in snap.workers)
        else:
            assert all(w.pid is None for w in snap.workers)
        if can.remote:
            assert all(isinstance(w.node, str) and w.node for w in snap.workers)
        else:
            assert all(w.node is None for w in snap.workers)

        data = msgspec.json.encode(snap)
        back = msgspec.json.decode(data, type=PoolSnapshot)
        assert back == snap
        assert msgspec.json.decode(data)["workers"][worker.id]["current_task"] == busy.id
        gate.open()
        for t in queued:
            await t
    assert pool.snapshot().state == "closed"
    assert {w.state for w in pool.snapshot().workers} == {"exited"}
