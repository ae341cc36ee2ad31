"""Core (issue "core"): the pool's own overhead, with inline and thread workers, and its memory.

- inline: 100,000 no-op coroutine tasks through ``FunctionPool(4, worker="inline")`` against
  a bare ``asyncio.gather`` of the same coroutines (target: ratio >= 0.5);
- thread: 20,000 no-op plain tasks through ``FunctionPool(2, worker="thread")`` against
  ``run_in_executor(ThreadPoolExecutor(2))`` and ``anyio.to_thread.run_sync`` with a
  ``CapacityLimiter(2)`` (target: ratio >= 2 against both);
- memory: 1,000,000 queued tasks behind a blocked worker: bytes per queued task under
  tracemalloc (target < 600 B), and ``pool.status()`` with 1M queued against 10 (O(1)).

Usage::

    python -m benchmarks.bench_core [--quick] [--workloads inline,thread,memory]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import sys
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:  # run as a script: python benchmarks/bench_core.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h
from benchmarks import _workloads as wl

# ---------------------------------------------------------------------------- child side


def _taskpool() -> Any:
    return importlib.import_module("taskpool")


async def _throughput(n: int, repeat: int, batch: Callable[[], Awaitable[object]]) -> tuple[h.Stats, dict[str, Any]]:
    stats = await h.time_async(batch, repeat=repeat, warmup=1)
    return stats, {
        "tasks_per_s": n / stats.median,
        "best_tasks_per_s": n / stats.min,
        "seconds": stats.as_dict(),
    }


async def inline_taskpool(p: dict[str, Any]) -> dict[str, Any]:
    n = p["n"]
    pool = _taskpool().FunctionPool(pool_size=4, worker="inline")
    await pool.start()
    try:
        add, fn = pool.add_task, wl.noop_async

        async def batch() -> None:
            for _ in range(n):
                add(fn)
            await pool.join()

        stats, result = await _throughput(n, p["repeat"], batch)
        succeeded = pool.status("succeeded")
    finally:
        await pool.aclose()
    if succeeded != n * (stats.n + 1):
        raise AssertionError(f"{succeeded} tasks succeeded, expected {n * (stats.n + 1)}")
    return result


async def inline_gather(p: dict[str, Any]) -> dict[str, Any]:
    n, fn = p["n"], wl.noop_async

    async def batch() -> None:
        await asyncio.gather(*[fn() for _ in range(n)])

    return (await _throughput(n, p["repeat"], batch))[1]


async def inline_gather_semaphore(p: dict[str, Any]) -> dict[str, Any]:
    n, fn = p["n"], wl.noop_async
    semaphore = asyncio.Semaphore(4)

    async def limited() -> None:
        async with semaphore:
            await fn()

    async def batch() -> None:
        await asyncio.gather(*[limited() for _ in range(n)])

    return (await _throughput(n, p["repeat"], batch))[1]


async def thread_taskpool(p: dict[str, Any]) -> dict[str, Any]:
    n = p["n"]
    pool = _taskpool().FunctionPool(pool_size=2, worker="thread")
    await pool.start()
    try:
        add, fn = pool.add_task, wl.noop

        async def batch() -> None:
            for _ in range(n):
                add(fn)
            await pool.join()

        stats, result = await _throughput(n, p["repeat"], batch)
        succeeded = pool.status("succeeded")
    finally:
        await pool.aclose()
    if succeeded != n * (stats.n + 1):
        raise AssertionError(f"{succeeded} tasks succeeded, expected {n * (stats.n + 1)}")
    return result


async def thread_executor(p: dict[str, Any]) -> dict[str, Any]:
    n, fn = p["n"], wl.noop
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(2) as executor:

        async def batch() -> None:
            await asyncio.gather(*[loop.run_in_executor(executor, fn) for _ in range(n)])

        return (await _throughput(n, p["repeat"], batch))[1]


async def thread_anyio(p: dict[str, Any]) -> dict[str, Any]:
    import anyio
    from anyio import to_thread

    n, fn = p["n"], wl.noop
    limiter = anyio.CapacityLimiter(2)

    async def batch() -> None:
        await asyncio.gather(*[to_thread.run_sync(fn, limiter=limiter) for _ in range(n)])

    return (await _throughput(n, p["repeat"], batch))[1]


def _per_call(fn: Callable[[], object]) -> float:
    """Seconds per call of ``fn``: best of 5 timed loops sized to ~50 ms each."""
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    number = max(1, min(10_000, int(0.05 / max(once, 1e-7))))

    def loop() -> None:
        for _ in range(number):
            fn()

    return h.time_sync(loop, repeat=5, warmup=1).min / number


def _traced(add: Callable[[], object], n: int) -> dict[str, Any]:
    """Bytes that stay allocated after calling ``add`` ``n`` times, per call."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(n):
            add()
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"bytes_per_task": (after - before) / n, "traced_bytes": after - before, "peak": peak}


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the blocking task never started")
        await asyncio.sleep(0.001)


async def memory_taskpool(p: dict[str, Any]) -> dict[str, Any]:
    """Queue ``n`` tasks behind one blocked inline worker (the pool is started, nothing runs)."""
    n, few = p["n"], 10
    release = asyncio.Event()
    pool = _taskpool().FunctionPool(pool_size=1, worker="inline")
    await pool.start()
    try:
        pool.add_task(wl.wait_event, release)
        await _until(lambda: pool.status("active") == 1)
        add, fn = pool.add_task, wl.noop_async
        for _ in range(few):
            add(fn)
        status_few = _per_call(pool.status)
        traced = _traced(lambda: add(fn), n - few)
        if (queued := pool.status("queued")) != n:
            raise AssertionError(f"{queued} tasks queued, expected {n}")
        status_many = _per_call(pool.status)
    finally:
        await asyncio.wait_for(pool.aclose(cancel=True), p["close_timeout"])
    return {
        **traced,
        "status_few_s": status_few,
        "status_many_s": status_many,
        "status_growth": status_many / status_few,
    }


async def memory_executor(p: dict[str, Any]) -> dict[str, Any]:
    """``ThreadPoolExecutor(1)`` whose only thread is blocked: submitted work items queue up."""
    n = p["reference_n"]
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait()

    executor = ThreadPoolExecutor(1)
    try:
        executor.submit(block)
        started.wait()
        traced = _traced(lambda: executor.submit(wl.noop), n)
    finally:
        release.set()
        executor.shutdown(wait=True, cancel_futures=True)
    return traced


async def memory_asyncio_tasks(p: dict[str, Any]) -> dict[str, Any]:
    """``asyncio.create_task`` before the loop gets to run them (a list keeps them: ~8 B each)."""
    n, fn = p["reference_n"], wl.noop_async
    tasks: list[asyncio.Task[None]] = []
    create, keep = asyncio.get_running_loop().create_task, tasks.append
    traced = _traced(lambda: keep(create(fn())), n)
    await asyncio.gather(*tasks)
    return traced


CHILDREN: dict[tuple[str, str], Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    ("inline", "taskpool"): inline_taskpool,
    ("inline", "gather"): inline_gather,
    ("inline", "gather-semaphore"): inline_gather_semaphore,
    ("thread", "taskpool"): thread_taskpool,
    ("thread", "executor"): thread_executor,
    ("thread", "anyio"): thread_anyio,
    ("memory", "taskpool"): memory_taskpool,
    ("memory", "executor"): memory_executor,
    ("memory", "asyncio-task"): memory_asyncio_tasks,
}


async def child(params: dict[str, Any]) -> dict[str, Any]:
    """Entry point of one (workload, peer) child (see ``benchmarks._runner``)."""
    return await CHILDREN[params["workload"], params["peer"]](params)


# ---------------------------------------------------------------------------- parent side


@dataclass(frozen=True, slots=True)
class Workload:
    key: str
    title: str
    description: str
    #: peer name -> row label; the first one is taskpool, the subject
    peers: dict[str, str]
    columns: list[h.Column]
    ratio_key: str
    ratio_better: h.Better
    full: dict[str, Any]
    quick: dict[str, Any]
    #: peer name -> minimum ratio of taskpool against it
    targets: dict[str, float]
    timeout: float = 120.0


_RATE = [
    h.Column("tasks_per_s", "tasks/s (median)", "rate"),
    h.Column("best_tasks_per_s", "tasks/s (best)", "rate"),
]

WORKLOADS = [
    Workload(
        "inline",
        "Inline workers: no-op coroutine tasks",
        "N no-op coroutine tasks: `add_task` all to `FunctionPool(pool_size=4, worker='inline')`, "
        "then `await pool.join()`, against `asyncio.gather` over the same coroutines.",
        {
            "taskpool": "taskpool FunctionPool(4, inline)",
            "gather": "asyncio.gather",
            "gather-semaphore": "asyncio.gather + Semaphore(4) (same bound, for reference)",
        },
        _RATE,
        "tasks_per_s",
        "higher",
        full={"n": 100_000, "repeat": 5},
        quick={"n": 10_000, "repeat": 2},
        targets={"gather": 0.5},
    ),
    Workload(
        "thread",
        "Thread workers: no-op plain tasks",
        "N no-op plain-function tasks with 2 threads: `FunctionPool(pool_size=2, worker='thread')` "
        "against a gather of `loop.run_in_executor(ThreadPoolExecutor(2))` and of "
        "`anyio.to_thread.run_sync(limiter=CapacityLimiter(2))`.",
        {
            "taskpool": "taskpool FunctionPool(2, thread)",
            "executor": "run_in_executor(ThreadPoolExecutor(2))",
            "anyio": "anyio.to_thread.run_sync(CapacityLimiter(2))",
        },
        _RATE,
        "tasks_per_s",
        "higher",
        full={"n": 20_000, "repeat": 3},
        quick={"n": 2_000, "repeat": 2},
        targets={"executor": 2.0, "anyio": 2.0},
    ),
    Workload(
        "memory",
        "Memory: queued tasks behind a blocked worker",
        "N tasks queued while the only worker is blocked; bytes that stay allocated per queued "
        "task (tracemalloc, after gc), and the cost of `pool.status()` with N queued against "
        "10 queued.",
        {
            "taskpool": "taskpool FunctionPool(1, inline), worker blocked",
            "executor": "ThreadPoolExecutor(1), thread blocked",
            "asyncio-task": "asyncio.create_task, not yet run (for reference)",
        },
        [
            h.Column("bytes_per_task", "bytes/queued task", "bytes"),
            h.Column("traced_bytes", "traced in total", "bytes"),
            h.Column("status_few_s", "status() at 10 queued", "seconds"),
            h.Column("status_many_s", "status() at N queued", "seconds"),
            h.Column("status_growth", "status() growth", "times"),
        ],
        "bytes_per_task",
        "lower",
        # The reference rows cost ~1.7 KB (executor) and ~0.8 KB (asyncio) per task: they are
        # measured on fewer tasks, which does not change the bytes per task.
        full={"n": 1_000_000, "reference_n": 200_000, "close_timeout": 120.0},
        quick={"n": 50_000, "reference_n": 50_000, "close_timeout": 30.0},
        targets={},
        timeout=240.0,
    ),
]

PEER_NAMES = sorted({name for w in WORKLOADS for name in w.peers})
WORKLOAD_NAMES = [w.key for w in WORKLOADS]
BYTES_PER_TASK_TARGET = 600
STATUS_GROWTH_LIMIT = 2.0  # status() with N queued vs 10: O(1) means ~1x


def _verdicts(workload: Workload, section: h.Section, n: int) -> list[str]:
    if workload.key != "memory":
        return []
    row = next((r for r in section.rows if r.peer == section.subject and r.status == "ok"), None)
    if row is None:
        return []
    per_task, growth = row.metrics["bytes_per_task"], row.metrics["status_growth"]
    ok = "ok" if per_task < BYTES_PER_TASK_TARGET else "MISSED"
    o1 = "ok" if growth <= STATUS_GROWTH_LIMIT else "MISSED"
    return [
        f"taskpool target < {BYTES_PER_TASK_TARGET} B per queued task: {per_task:,.0f} B ({ok}).",
        f"taskpool status() is O(1): {growth:.2f}x slower with {n:,} queued than with 10 "
        f"(limit {STATUS_GROWTH_LIMIT:g}x: {o1}).",
    ]


def collect(opts: h.Options, probe: h.TaskpoolProbe) -> list[h.Section]:
    sections: list[h.Section] = []
    for workload in WORKLOADS:
        if not opts.wants("workload", workload.key):
            continue
        h.progress(f"[core] {workload.key}")
        params = workload.quick if opts.quick else workload.full
        section = h.Section(
            key=f"core.{workload.key}",
            title=workload.title,
            description=f"{workload.description} {h.describe_params(params)}",
            columns=workload.columns,
            ratio_key=workload.ratio_key,
            ratio_better=workload.ratio_better,
            subject=workload.peers["taskpool"],
            targets={workload.peers[name]: v for name, v in workload.targets.items()},
        )
        if not probe.ok:
            section.notes.append(probe.skip_note())
        for name, label in workload.peers.items():
            if not opts.wants("peer", name):
                continue
            if name == "taskpool" and not probe.ok:
                section.rows.append(h.Row(label, "skipped", note=probe.skip_note()))
                continue
            result = h.run_in_child(
                "benchmarks.bench_core:child",
                {**params, "workload": workload.key, "peer": name},
                loop=opts.loop,
                timeout=opts.timeout or (workload.timeout / (2 if opts.quick else 1)),
            )
            h.progress(f"  {workload.key:<8} {name:<16} {result.status:<6} {result.seconds:6.1f} s  {result.note()}")
            note = result.note()
            if name != "taskpool" and params.get("reference_n", params["n"]) != params["n"]:
                note = "; ".join(filter(None, [f"measured on {params['reference_n']:,} tasks", note]))
            section.rows.append(h.Row(label, result.status, result.data, note=note))
        section.notes.extend(_verdicts(workload, section, params["n"]))
        sections.append(section)
    return sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    h.add_common_arguments(parser)
    opts = h.options_from(parser.parse_args(argv))
    h.check_names(opts, peers=PEER_NAMES, workloads=WORKLOAD_NAMES)
    probe = h.probe_taskpool()
    if not probe.ok:
        h.progress(probe.skip_note())
    header = h.run_header(loop=opts.loop, quick=opts.quick, taskpool=probe)
    sections = collect(opts, probe)
    h.emit(opts, header, sections, [h.leftover_line()], title="Core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
