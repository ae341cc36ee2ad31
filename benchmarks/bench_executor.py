"""The drop-in executors (issue 12) against ``concurrent.futures``, in one run.

Each part runs ``--repeat`` times (3 by default), taskpool and the peer alternately, on
``--workers`` workers (2 by default), each executor warmed up first (its workers started):

- ``roundtrip``: ``executor.submit(noop).result()``, one call at a time, ``--calls`` calls
  each; the median time per call. Peers: ``concurrent.futures.ProcessPoolExecutor`` (the
  default start method, fork on Linux, and spawn) and ``ThreadPoolExecutor`` for the thread
  kind. The executors compared are open together and take turns, ``--block`` calls at a time,
  so a slow spell of the machine (a neighbour, a frequency change) falls on all of them alike
  instead of on whichever ran then. Target: taskpool's process executor <= cf's own (ratio
  taskpool / cf <= 1).
- ``burst``: ``--burst`` (20,000) ``submit(noop, i)`` calls at once, then every result;
  calls per second (the best of three bursts on a warm executor), each executor against
  its ``concurrent.futures`` namesake. No target: it shows where the extra thread of the
  pool's loop costs (thread executors) and where batching wins (process executors).
- ``map``: ``list(executor.map(noop, range(N)))`` for ``--items`` tiny items (100,000)
  (also on threads, against cf's ``ThreadPoolExecutor.map``, no target);
  items per second. taskpool's map with its defaults (``chunksize=1``: items still travel
  in chunks inside), against cf's ``map(chunksize=1)`` and ``map(chunksize=1000)``.
  Targets: >= 3x the first, >= 1x the second.

Usage::

    python -m benchmarks.bench_executor                 # everything (about a minute)
    python -m benchmarks.bench_executor --quick         # CI smoke: small sizes, one repetition
    python -m benchmarks.bench_executor --parts map --repeat 5 --json out.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:  # run as a script: python benchmarks/bench_executor.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._workloads import noop

PARTS = ("roundtrip", "map", "burst")
ROUNDTRIP_TARGET = 1.0  # taskpool / cf, at most
MAP_VS_CHUNK1_TARGET = 3.0  # taskpool / cf map(chunksize=1), at least
MAP_VS_CHUNK1000_TARGET = 1.0  # taskpool / cf map(chunksize=1000), at least

Factory = Callable[[int], cf.Executor]


def _taskpool_process(n: int) -> cf.Executor:
    from taskpool.executor import ProcessPoolExecutor

    return ProcessPoolExecutor(n)


def _taskpool_thread(n: int) -> cf.Executor:
    from taskpool.executor import ThreadPoolExecutor

    return ThreadPoolExecutor(n)


def _cf_process(n: int) -> cf.Executor:
    return cf.ProcessPoolExecutor(n)


def _cf_process_spawn(n: int) -> cf.Executor:
    return cf.ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))


def _cf_thread(n: int) -> cf.Executor:
    return cf.ThreadPoolExecutor(n)


def _warm(ex: cf.Executor, n: int) -> None:
    """Start every worker (both libraries start them on demand) and prime the path."""
    for f in [ex.submit(noop) for _ in range(4 * n)]:
        f.result()
    list(ex.map(noop, range(2000)))


def roundtrip(factories: dict[str, Factory], workers: int, calls: int, block: int) -> dict[str, float]:
    """Median seconds of one ``submit(noop).result()`` on each executor, taking turns."""
    with contextlib.ExitStack() as stack:
        executors = {name: stack.enter_context(make(workers)) for name, make in factories.items()}
        for ex in executors.values():
            _warm(ex, workers)
        times: dict[str, list[float]] = {name: [] for name in executors}
        clock = time.perf_counter
        order = list(executors.items())
        for turn in range(max(1, calls // block)):
            k = turn % len(order)  # (each executor leads in turn)
            for name, ex in order[k:] + order[:k]:
                out = times[name]
                for _ in range(block):
                    t = clock()
                    ex.submit(noop).result()
                    out.append(clock() - t)
    return {name: statistics.median(vals) for name, vals in times.items()}


def map_rate(factory: Factory, workers: int, items: int, chunksize: int) -> float:
    """Items per second of ``list(ex.map(noop, range(items), chunksize=chunksize))``."""
    with factory(workers) as ex:
        _warm(ex, workers)
        t = time.perf_counter()
        out = list(ex.map(noop, range(items), chunksize=chunksize))
        elapsed = time.perf_counter() - t
    assert len(out) == items
    return items / elapsed


def burst_rate(factory: Factory, workers: int, calls: int) -> float:
    """Calls per second of ``calls`` submits at once, then their results (best of three)."""
    with factory(workers) as ex:
        _warm(ex, workers)
        best = 0.0
        for _ in range(3):
            t = time.perf_counter()
            for f in [ex.submit(noop, i) for i in range(calls)]:
                f.result()
            best = max(best, calls / (time.perf_counter() - t))
    return best


def _ratios(ours: list[float], theirs: list[float]) -> list[float]:
    return [a / b for a, b in zip(ours, theirs, strict=True)]


def _table(unit: str, rows: dict[str, list[float]], fmt: Callable[[float], str]) -> list[str]:
    """A markdown table: one row per executor, its value in each run."""
    head = [f"| executor | {unit}, each run |", "| --- | --- |"]
    return head + [f"| {name} | {', '.join(fmt(v) for v in vals)} |" for name, vals in rows.items()]


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--block", type=int, default=100, help="round trip: calls per turn")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--burst", type=int, default=20_000, help="burst: calls submitted at once")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition (CI smoke)")
    parser.add_argument("--json", help="also write the raw numbers here")
    ns = parser.parse_args(argv)
    parts = [p for p in ns.parts.split(",") if p]
    if bad := [p for p in parts if p not in PARTS]:
        parser.error(f"unknown part(s) {bad}; choose from {PARTS}")
    repeat, calls, items = (1, 200, 10_000) if ns.quick else (ns.repeat, ns.calls, ns.items)
    if ns.block < 1:
        parser.error("--block must be at least 1")
    results: dict[str, Any] = {"workers": ns.workers, "repeat": repeat}
    lines = [f"# Executors vs concurrent.futures ({ns.workers} workers, {repeat} runs)", ""]

    if "roundtrip" in parts:
        rt: dict[str, list[float]] = {"taskpool process": [], "cf process": [], "cf process (spawn)": []}
        rt |= {"taskpool thread": [], "cf thread": []}
        groups: list[dict[str, Factory]] = [
            {"taskpool process": _taskpool_process, "cf process": _cf_process, "cf process (spawn)": _cf_process_spawn},
            {"taskpool thread": _taskpool_thread, "cf thread": _cf_thread},
        ]
        for _ in range(repeat):
            for group in groups:
                for name, median in roundtrip(group, ns.workers, calls, ns.block).items():
                    rt[name].append(median)
                    print(f"roundtrip {name}: {median * 1e6:.1f} us", file=sys.stderr)
        ratios = _ratios(rt["taskpool process"], rt["cf process"])
        ratios_spawn = _ratios(rt["taskpool process"], rt["cf process (spawn)"])
        thread_ratios = _ratios(rt["taskpool thread"], rt["cf thread"])
        results["roundtrip"] = {
            "seconds": rt,
            "ratio": ratios,
            "ratio_spawn": ratios_spawn,
            "thread_ratio": thread_ratios,
        }
        lines += [
            f"## submit(noop).result(), one at a time ({calls} calls each, in turns of {ns.block}, median)",
            "",
            *_table("per call (µs)", rt, lambda v: f"{v * 1e6:.1f}"),
            "",
            f"taskpool process / cf process: {_spread(ratios)} (target <= {ROUNDTRIP_TARGET}); "
            f"/ cf spawn: {_spread(ratios_spawn)}; taskpool thread / cf thread: {_spread(thread_ratios)}.",
            "",
        ]

    if "map" in parts:
        mp: dict[str, list[float]] = {"taskpool map": [], "cf map(chunksize=1)": [], "cf map(chunksize=1000)": []}
        mp |= {"taskpool thread map": [], "cf thread map": []}
        for _ in range(repeat):
            mp["taskpool map"].append(map_rate(_taskpool_process, ns.workers, items, 1))
            mp["cf map(chunksize=1)"].append(map_rate(_cf_process, ns.workers, items, 1))
            mp["cf map(chunksize=1000)"].append(map_rate(_cf_process, ns.workers, items, 1000))
            mp["taskpool thread map"].append(map_rate(_taskpool_thread, ns.workers, items, 1))
            mp["cf thread map"].append(map_rate(_cf_thread, ns.workers, items, 1))
            print("map " + ", ".join(f"{k}: {v[-1]:,.0f}/s" for k, v in mp.items()), file=sys.stderr)
        vs1 = _ratios(mp["taskpool map"], mp["cf map(chunksize=1)"])
        vs1000 = _ratios(mp["taskpool map"], mp["cf map(chunksize=1000)"])
        vs_thread = _ratios(mp["taskpool thread map"], mp["cf thread map"])
        results["map"] = {
            "items_per_second": mp,
            "vs_chunksize_1": vs1,
            "vs_chunksize_1000": vs1000,
            "thread_vs_cf": vs_thread,
        }
        lines += [
            f"## map(noop, range({items:,})) on process workers (and on threads)",
            "",
            *_table("items/s", mp, lambda v: f"{v:,.0f}"),
            "",
            f"taskpool / cf map(chunksize=1): {_spread(vs1)}x (target >= {MAP_VS_CHUNK1_TARGET}); "
            f"/ cf map(chunksize=1000): {_spread(vs1000)}x (target >= {MAP_VS_CHUNK1000_TARGET}); "
            f"threads: taskpool / cf {_spread(vs_thread)}x (no target).",
            "",
        ]

    if "burst" in parts:
        burst_calls = 2_000 if ns.quick else ns.burst
        pairs = {
            "process": (_taskpool_process, _cf_process),
            "thread": (_taskpool_thread, _cf_thread),
        }
        br: dict[str, list[float]] = {f"{who} {kind}": [] for kind in pairs for who in ("taskpool", "cf")}
        for _ in range(repeat):
            for kind, (ours, theirs) in pairs.items():
                br[f"taskpool {kind}"].append(burst_rate(ours, ns.workers, burst_calls))
                br[f"cf {kind}"].append(burst_rate(theirs, ns.workers, burst_calls))
            print("burst " + ", ".join(f"{k}: {v[-1]:,.0f}/s" for k, v in br.items()), file=sys.stderr)
        ratios_b = {kind: _ratios(br[f"taskpool {kind}"], br[f"cf {kind}"]) for kind in pairs}
        results["burst"] = {"calls_per_second": br, "ratio": ratios_b}
        lines += [
            f"## {burst_calls:,} submit(noop) at once, then every result (best of three bursts)",
            "",
            *_table("calls/s", br, lambda v: f"{v:,.0f}"),
            "",
            f"taskpool / cf: process {_spread(ratios_b['process'])}x, "
            f"thread {_spread(ratios_b['thread'])}x (no target).",
            "",
        ]

    print("\n".join(lines))
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
