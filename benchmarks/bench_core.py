"""Core (issue "core"): the pool's own overhead, with inline and thread workers, and its memory.

- inline: 100,000 no-op coroutine tasks through ``FunctionPool(4, worker="inline")`` against
  a bare ``asyncio.gather`` of the same coroutines (target: ratio >= 0.5);
- thread: 20,000 no-op plain tasks through ``FunctionPool(2, worker="thread")`` against
  ``run_in_executor(ThreadPoolExecutor(2))`` and ``anyio.to_thread.run_sync`` with a
  ``CapacityLimiter(2)`` (target: ratio >= 2 against both);
- memory: 1,000,000 queued tasks behind a blocked worker: bytes per queued task under
  tracemalloc (target < 600 B), and ``pool.status()`` with 1M queued against 10 (O(1));
- growth: the cost of one ``add_task`` with 1k, 10k, 100k and 1M tasks queued behind a
  blocked worker, GC on (target: 1M / 1k <= 1.3), against the same pool with taskpool's GC
  episodes switched off (the cyclic GC walks the queue) and with ``gc.disable()`` (the floor);
- map: ``pool.map(noop, range(1_000_000))`` with default arguments on 2 process workers
  against ``ProcessPoolExecutor(2).map(..., chunksize=1000)`` (target: ratio >= 1.0), and
  ``chunksize=1`` on 100,000 items for reference.

Usage::

    python -m benchmarks.bench_core [--quick] [--workloads inline,thread,memory,growth,map]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
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


def growth_window(level: int) -> int:
    """Calls timed around ``level`` queued: from ``level - window/2`` to ``level + window/2``."""
    return max(1_000, level // 4)


async def _blocked_pool() -> Any:
    """A started ``FunctionPool(1, inline)`` whose only worker waits on an event for good."""
    pool = _taskpool().FunctionPool(pool_size=1, worker="inline")
    await pool.start()
    pool.add_task(wl.wait_event, asyncio.Event())
    await _until(lambda: pool.status("active") == 1)
    return pool


async def _window_at(level: int, close_timeout: float) -> tuple[float, float]:
    """(CPU, wall) seconds per ``add_task`` call over one window centred on ``level`` queued tasks.

    CPU time is this thread's (``time.thread_time``): the collections the calls set off
    count, other processes taking the CPU meanwhile do not.
    """
    window = growth_window(level)
    pool = await _blocked_pool()
    try:
        add, fn = pool.add_task, wl.noop_async
        for _ in range(level - window // 2):
            add(fn)
        cpu, wall = time.thread_time(), time.perf_counter()
        for _ in range(window):
            add(fn)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    finally:
        await asyncio.wait_for(pool.aclose(cancel=True), close_timeout)
    return cpu / window, wall / window


async def _growth(p: dict[str, Any], *, memory: bool) -> dict[str, Any]:
    """Per level: ``reps`` windows, each in a fresh pool; their median, mean (amortised) and range."""
    result: dict[str, Any] = {"levels": {}}
    await _window_at(min(p["levels"]), p["close_timeout"])  # warm-up: code paths, and the imports' garbage
    gc.collect()
    for level, reps in zip(p["levels"], p["reps"], strict=True):
        windows = [await _window_at(level, p["close_timeout"]) for _ in range(reps)]
        cpu = [w[0] for w in windows]
        # The mean is the per-call cost (amortised: every collection the calls set off
        # counts). The median window is kept for reference: at 1M (250,000 calls a window)
        # it holds every collection too, but at 1k (1,000 calls) it leaves out those of
        # generation 1 (one per ~7,000 calls) and the rare full one of the interpreter's heap.
        result[f"at_{level}_s"] = sum(cpu) / len(cpu)
        result["levels"][str(level)] = {
            "median": statistics.median(cpu),
            "mean": sum(cpu) / len(cpu),
            "min": min(cpu),
            "max": max(cpu),
            "windows": reps,
            "wall_mean": sum(w[1] for w in windows) / len(windows),
        }
    low, high = str(min(p["levels"])), str(max(p["levels"]))
    result["growth_of_medians"] = result["levels"][high]["median"] / result["levels"][low]["median"]
    result["growth_of_means"] = result["levels"][high]["mean"] / result["levels"][low]["mean"]
    if memory:
        pool = await _blocked_pool()
        try:
            add, fn = pool.add_task, wl.noop_async
            result.update(_traced(lambda: add(fn), p["memory_n"]))
        finally:
            await asyncio.wait_for(pool.aclose(cancel=True), p["close_timeout"])
    return result


async def growth_taskpool(p: dict[str, Any]) -> dict[str, Any]:
    return await _growth(p, memory=True)


async def growth_gc_walks(p: dict[str, Any]) -> dict[str, Any]:
    """taskpool with its GC episodes off: every full collection walks the whole queue."""
    try:
        episodes = importlib.import_module("taskpool._gc")
    except ImportError as exc:
        raise h.NotApplicable(f"this taskpool has no GC episodes ({exc})") from None
    episodes.START = sys.maxsize
    return await _growth(p, memory=False)


async def growth_gc_disabled(p: dict[str, Any]) -> dict[str, Any]:
    """taskpool under ``gc.disable()``: no collection at all, the floor."""
    gc.disable()
    try:
        return await _growth(p, memory=False)
    finally:
        gc.enable()


def _rate(n: int, samples: list[float]) -> dict[str, Any]:
    """Items/s of ``n`` items per timed run, median and best, and the runs' seconds."""
    stats = h.Stats.of(samples)
    return {
        "items_per_s": n / stats.median,
        "best_items_per_s": n / stats.min,
        "seconds": stats.as_dict(),
        "n": n,
        "samples_s": samples,
    }


async def _timed(once: Callable[[], Awaitable[None]], repeat: int) -> list[float]:
    samples: list[float] = []

    async def timed() -> None:
        start = time.perf_counter()
        await once()
        samples.append(time.perf_counter() - start)

    await h.time_async(timed, repeat=repeat, warmup=0)
    return samples


async def map_taskpool(p: dict[str, Any]) -> dict[str, Any]:
    """``pool.map(noop, range(n))``, default arguments, 2 process workers."""
    n, fn = p["n"], wl.noop
    async with _taskpool().FunctionPool(pool_size=2, worker="process") as pool:

        async def once(count: int) -> None:
            seen = 0
            async for _ in pool.map(fn, range(count)):
                seen += 1
            if seen != count:
                raise AssertionError(f"map yielded {seen} results for {count} items")

        await once(p["warmup"])  # both workers up, every import done
        samples = await _timed(lambda: once(n), p["repeat"])
    return _rate(n, samples)


def _executor_map(p: dict[str, Any], chunksize: int) -> dict[str, Any]:
    import multiprocessing

    n, fn = p["n"], wl.noop
    with ProcessPoolExecutor(2) as executor:

        def once(count: int) -> None:
            seen = sum(1 for _ in executor.map(fn, range(count), chunksize=chunksize))
            if seen != count:
                raise AssertionError(f"map yielded {seen} results for {count} items")

        once(min(p["warmup"], n))
        samples: list[float] = []

        def timed() -> None:
            start = time.perf_counter()
            once(n)
            samples.append(time.perf_counter() - start)

        h.time_sync(timed, repeat=p["repeat"], warmup=0)
    return {**_rate(n, samples), "start_method": multiprocessing.get_start_method()}


async def map_executor_1000(p: dict[str, Any]) -> dict[str, Any]:
    return _executor_map(p, 1000)


async def map_executor_1(p: dict[str, Any]) -> dict[str, Any]:
    return _executor_map(p, 1)


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
    ("growth", "taskpool"): growth_taskpool,
    ("growth", "taskpool-gc-walks"): growth_gc_walks,
    ("growth", "gc-disabled"): growth_gc_disabled,
    ("map", "taskpool"): map_taskpool,
    ("map", "ppe-map-1000"): map_executor_1000,
    ("map", "ppe-map-1"): map_executor_1,
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
    #: peer name -> parameters of its own, over ``full`` / ``quick``
    peer_full: dict[str, dict[str, Any]] = field(default_factory=dict)
    peer_quick: dict[str, dict[str, Any]] = field(default_factory=dict)

    def params(self, peer: str, quick: bool) -> dict[str, Any]:
        return {**(self.quick if quick else self.full), **(self.peer_quick if quick else self.peer_full).get(peer, {})}


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
    Workload(
        "growth",
        "add_task cost growth: one call with 1k to 1M tasks queued",
        "The cost of one `add_task` with about N tasks queued behind the only worker of "
        "`FunctionPool(1, inline)`, which is blocked; GC on. Each level is timed over windows of "
        "max(1,000, N/4) calls centred on N, each window in a fresh pool, after one untimed window, "
        "in CPU time of the calling thread (the collections the calls set off count, other processes "
        "do not); the cell is the windows' mean (amortised: every collection the calls set off "
        "counts), the note their range. Growth is the cost at the largest level divided by the cost "
        "at 1k; the growth of the median windows is shown too (at 1k it leaves out the collections "
        "of generation 1, so it is the harsher of the two). References: the same pool with "
        "taskpool's GC episodes off (`taskpool._gc`: every full collection walks the queue), and "
        "under `gc.disable()` (no collection at all). Bytes per queued task as in the memory table.",
        {
            "taskpool": "taskpool FunctionPool(1, inline), GC on",
            "taskpool-gc-walks": "same, GC episodes off (the GC walks the queue)",
            "gc-disabled": "same, gc.disable() (the floor, for reference)",
        },
        [],  # one column per level, made by growth_columns()
        "growth_of_means",
        "lower",
        full={
            "levels": [1_000, 10_000, 100_000, 1_000_000],
            "reps": [200, 60, 8, 3],
            "memory_n": 1_000_000,
            "close_timeout": 120.0,
        },
        quick={"levels": [1_000, 10_000, 100_000], "reps": [40, 10, 1], "memory_n": 50_000, "close_timeout": 30.0},
        targets={},
        timeout=300.0,
    ),
    Workload(
        "map",
        "map of tiny items on 2 process workers",
        "`async for r in pool.map(noop, range(N))` with default arguments (`chunksize='auto'`) on "
        "`FunctionPool(2, worker='process')`, against `ProcessPoolExecutor(2).map(noop, range(N), "
        "chunksize=1000)` (the default start method), and with `chunksize=1` on fewer items for "
        "reference. Every result is consumed; a warm-up map runs first. Each peer runs `rounds` "
        "children of `repeat` timed maps, the peers taking turns; the rates pool every timed map.",
        {
            "taskpool": "taskpool pool.map (2 process workers, chunksize='auto')",
            "ppe-map-1000": "ProcessPoolExecutor(2).map(chunksize=1000)",
            "ppe-map-1": "ProcessPoolExecutor(2).map(chunksize=1) (for reference)",
        },
        [
            h.Column("items_per_s", "items/s (median)", "rate"),
            h.Column("best_items_per_s", "items/s (best)", "rate"),
        ],
        "items_per_s",
        "higher",
        full={"n": 1_000_000, "repeat": 3, "rounds": 3, "warmup": 20_000},
        quick={"n": 100_000, "repeat": 2, "rounds": 1, "warmup": 5_000},
        targets={"ppe-map-1000": 1.0},
        peer_full={"ppe-map-1": {"n": 100_000, "repeat": 2, "rounds": 1}},
        peer_quick={"ppe-map-1": {"n": 5_000, "repeat": 1, "warmup": 1_000}},
        timeout=180.0,
    ),
]

PEER_NAMES = sorted({name for w in WORKLOADS for name in w.peers})
WORKLOAD_NAMES = [w.key for w in WORKLOADS]
BYTES_PER_TASK_TARGET = 600
STATUS_GROWTH_LIMIT = 2.0  # status() with N queued vs 10: O(1) means ~1x
ADD_GROWTH_LIMIT = 1.3  # add_task with 1M queued vs 1k
#: Peers that run taskpool: skipped, like taskpool's own rows, when it does not import.
NEEDS_TASKPOOL = {"taskpool", "taskpool-gc-walks", "gc-disabled"}


def _count(n: int) -> str:
    """1_000 -> "1k", 1_000_000 -> "1M"."""
    for size, unit in ((1_000_000, "M"), (1_000, "k")):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n:,}"


def growth_columns(levels: list[int]) -> list[h.Column]:
    return [
        *(h.Column(f"at_{n}_s", f"per call at {_count(n)} queued (mean)", "micros") for n in levels),
        h.Column("growth_of_means", f"growth ({_count(max(levels))} / {_count(min(levels))})", "times"),
        h.Column("growth_of_medians", "growth of median windows", "times"),
        h.Column("bytes_per_task", "bytes/queued task", "bytes"),
    ]


def _window_ranges(data: dict[str, Any]) -> str:
    """``"per-window range (windows): 1k 0.6 µs to 0.9 µs (30), ..."`` from a growth row's data."""
    parts = [
        f"{_count(int(n))} {h.fmt_micros(v['min'])} to {h.fmt_micros(v['max'])} ({v['windows']})"
        for n, v in data.get("levels", {}).items()
    ]
    return f"per-window range (windows): {', '.join(parts)}" if parts else ""


def _verdicts(workload: Workload, section: h.Section, params: dict[str, Any]) -> list[str]:
    row = next((r for r in section.rows if r.peer == section.subject and r.status == "ok"), None)
    if row is None or workload.key not in ("memory", "growth"):
        return []
    if workload.key == "growth":
        low, high = min(params["levels"]), max(params["levels"])
        growth, per_task = row.metrics["growth_of_means"], row.metrics["bytes_per_task"]
        harsh = row.metrics["growth_of_medians"]
        quick = "" if high >= 1_000_000 else f" (quick mode: {_count(high)}, not 1M)"
        return [
            f"taskpool target: add_task at {_count(high)} queued ≤ {ADD_GROWTH_LIMIT:g}x its cost at "
            f"{_count(low)}{quick}: {growth:.2f}x ({'ok' if growth <= ADD_GROWTH_LIMIT else 'MISSED'}); "
            f"of the median windows: {harsh:.2f}x ({'ok' if harsh <= ADD_GROWTH_LIMIT else 'MISSED'}).",
            f"taskpool target < {BYTES_PER_TASK_TARGET} B per queued task: {per_task:,.0f} B "
            f"({'ok' if per_task < BYTES_PER_TASK_TARGET else 'MISSED'}; {params['memory_n']:,} queued).",
        ]
    n = params["n"]
    per_task, growth = row.metrics["bytes_per_task"], row.metrics["status_growth"]
    ok = "ok" if per_task < BYTES_PER_TASK_TARGET else "MISSED"
    o1 = "ok" if growth <= STATUS_GROWTH_LIMIT else "MISSED"
    return [
        f"taskpool target < {BYTES_PER_TASK_TARGET} B per queued task: {per_task:,.0f} B ({ok}).",
        f"taskpool status() is O(1): {growth:.2f}x slower with {n:,} queued than with 10 "
        f"(limit {STATUS_GROWTH_LIMIT:g}x: {o1}).",
    ]


def _run_rounds(workload: Workload, peers: list[str], opts: h.Options) -> dict[str, list[h.ChildResult]]:
    """Each peer's children, ``rounds`` of them (a parameter; default 1), the peers taking turns.

    Taking turns, a machine whose speed drifts (other work on a shared VM) slows every peer
    alike rather than whichever ran during the slow spell. A peer stops at its first failure.
    """
    results: dict[str, list[h.ChildResult]] = {name: [] for name in peers}
    rounds = {name: int(workload.params(name, opts.quick).get("rounds", 1)) for name in peers}
    for round_no in range(max(rounds.values(), default=0)):
        for name in peers:
            done = results[name]
            if round_no >= rounds[name] or any(r.status != "ok" for r in done):
                continue
            result = h.run_in_child(
                "benchmarks.bench_core:child",
                {**workload.params(name, opts.quick), "workload": workload.key, "peer": name},
                loop=opts.loop,
                timeout=opts.timeout or (workload.timeout / (2 if opts.quick else 1)),
            )
            which = f" ({round_no + 1}/{rounds[name]})" if rounds[name] > 1 else ""
            h.progress(
                f"  {workload.key:<8} {name + which:<23} {result.status:<6} {result.seconds:6.1f} s  {result.note()}"
            )
            done.append(result)
    return results


def _merge_rates(runs: list[h.ChildResult]) -> dict[str, Any]:
    """One row from several children of a throughput workload: their timed runs pooled."""
    return {
        **_rate(runs[0].data["n"], [s for r in runs for s in r.data["samples_s"]]),
        "runs": [r.data for r in runs],
    }


def collect(opts: h.Options, probe: h.TaskpoolProbe) -> list[h.Section]:
    sections: list[h.Section] = []
    for workload in WORKLOADS:
        if not opts.wants("workload", workload.key):
            continue
        h.progress(f"[core] {workload.key}")
        params = workload.quick if opts.quick else workload.full
        described = {k: v for k, v in params.items() if not isinstance(v, list)}
        described.update({k: ", ".join(f"{x:,}" for x in v) for k, v in params.items() if isinstance(v, list)})
        columns = growth_columns(params["levels"]) if workload.key == "growth" else workload.columns
        section = h.Section(
            key=f"core.{workload.key}",
            title=workload.title,
            description=f"{workload.description} {h.describe_params(described)}",
            columns=columns,
            ratio_key=workload.ratio_key,
            ratio_better=workload.ratio_better,
            subject=workload.peers["taskpool"],
            targets={workload.peers[name]: v for name, v in workload.targets.items()},
        )
        if not probe.ok:
            section.notes.append(probe.skip_note())
        wanted = [name for name in workload.peers if opts.wants("peer", name)]
        runnable = [name for name in wanted if probe.ok or name not in NEEDS_TASKPOOL]
        results = _run_rounds(workload, runnable, opts)
        for name in wanted:
            label = workload.peers[name]
            if name not in runnable:
                section.rows.append(h.Row(label, "skipped", note=probe.skip_note()))
                continue
            mine = workload.params(name, opts.quick)
            runs = results[name]
            failed = next((r for r in runs if r.status != "ok"), None)
            status = failed.status if failed is not None else "ok"
            data = {} if failed is not None else runs[0].data if len(runs) == 1 else _merge_rates(runs)
            notes = list(dict.fromkeys(r.note() for r in runs))
            if name != "taskpool" and "n" in params and mine.get("reference_n", mine["n"]) != params["n"]:
                unit = "items" if workload.key == "map" else "tasks"
                notes.insert(0, f"measured on {mine.get('reference_n', mine['n']):,} {unit}")
            if workload.key == "growth" and status == "ok":
                notes.append(_window_ranges(data))
            section.rows.append(h.Row(label, status, data, note="; ".join(filter(None, notes))))
        section.notes.extend(_verdicts(workload, section, params))
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
