"""Worker output is never lost: events, structlog, per-worker files, last words before a crash."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from taskpool import FunctionPool, WorkerCrashed

from .._support import WAIT, Gate, collect_until, settle
from . import _faults as x

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def drain(sub: Any) -> list[Any]:
    out = []
    while (event := sub.get_nowait()) is not None:
        out.append(event)
    return out


@pytest.mark.uvloop
async def test_print_and_stderr_reach_events_and_structlog() -> None:
    with structlog.testing.capture_logs() as logs:
        async with FunctionPool(1, worker="process", name="talk") as pool:
            async with pool.events.subscribe("worker.log") as sub:
                async with asyncio.timeout(WAIT):
                    assert await pool.add_task(x.chatter, "A") == "A"
                lines = await collect_until(sub, lambda e: e.line == "raw stderr A")
                lines += drain(sub)
    got = {(e.stream, e.line, e.worker_id) for e in lines}
    assert {
        ("stdout", "stdout line A", 0),
        ("stderr", "stderr line A", 0),
        ("stderr", "raw stderr A", 0),
    } <= got
    outputs = [r for r in logs if r.get("event") == "worker output"]
    by_line = {r["line"]: r for r in outputs}
    assert by_line["stdout line A"]["stream"] == "stdout"
    assert by_line["stdout line A"]["log_level"] == "info"
    assert by_line["stderr line A"]["stream"] == "stderr"
    assert by_line["stderr line A"]["log_level"] == "warning"
    assert {r["worker_id"] for r in outputs} == {0}
    assert {r["pool"] for r in outputs} == {"talk"}


async def test_log_dir_gives_each_worker_its_own_file(tmp_path: Path) -> None:
    async with Gate() as gate, FunctionPool(2, worker="process", log_dir=tmp_path, name="files") as pool:
        tasks = [pool.add_task(x.chatter_at_gate, gate.path, tag) for tag in ("P", "Q")]
        await gate.arrived("P", "Q")  # one per worker: each holds its own
        gate.open()
        async with asyncio.timeout(WAIT):
            assert [await t for t in tasks] == ["P", "Q"]
    files = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert sorted(files) == ["files-worker-0.log", "files-worker-1.log"]
    for t, tag, other in ((tasks[0], "P", "Q"), (tasks[1], "Q", "P")):
        text = files[f"files-worker-{t.worker_id}.log"]
        assert f"stdout line {tag}\n" in text
        assert f"[stderr] stderr line {tag}\n" in text
        assert other not in text


@pytest.mark.uvloop
async def test_last_words_before_a_crash_still_arrive(tmp_path: Path) -> None:
    async with FunctionPool(1, worker="process", log_dir=tmp_path, name="crash") as pool:
        async with pool.events.subscribe("worker.log", "worker.exited") as sub:
            async with asyncio.timeout(WAIT):
                assert isinstance(await settle(pool.add_task(x.last_words, "Z")), WorkerCrashed)
            events = await collect_until(sub, lambda e: e.topic == "worker.exited")
        async with asyncio.timeout(WAIT):
            assert await pool.add_task(x.chatter, "after") == "after"
    logged = [(e.stream, e.line) for e in events if e.topic == "worker.log"]
    assert ("stdout", "last words Z") in logged
    assert ("stderr", "last error Z") in logged
    # Every line the worker wrote was read before its exit was reported.
    assert events[-1].topic == "worker.exited"
    text = (tmp_path / "crash-worker-0.log").read_text()
    assert "last words Z\n" in text
    assert "[stderr] last error Z\n" in text
    assert "stdout line after\n" in text  # the replacement appends to the slot's file
