"""Persistent-worker call latency against a plain pool task's round trip (issue: persistent workers).

Measures, in one run, on process workers:

- p50 / p99 of N sequential calls through a process proxy (``await math.add(1, 2)``) against
  N sequential round trips of the same function as a plain pool task (``await pool.add_task``);
  the bar: proxy p50 within 1.5x of the pool task's p50;
- 1,000 calls issued concurrently on one proxy (``asyncio.gather``): they keep their order and
  finish no slower than 1,000 sequential calls.

Usage::

    python -m benchmarks.bench_persistent            # 2,000 calls
    python -m benchmarks.bench_persistent --quick    # 200 calls (CI smoke)
    python -m benchmarks.bench_persistent --json -
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taskpool import FunctionPool, import_persistent_worker
from taskpool.examples import math

MODULE = "taskpool.examples.math"


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


async def measure(n: int, concurrent: int) -> dict[str, float | bool]:
    """Run the measurements; returns the figures (seconds, ratios)."""
    out: dict[str, float | bool] = {}
    async with FunctionPool(1, worker="process") as pool:
        for _ in range(50):  # warm: function cached in the worker, loops hot
            await pool.add_task(math.add, 1, 2)
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            await pool.add_task(math.add, 1, 2)
            lat.append(time.perf_counter() - t)
        out["task_p50"], out["task_p99"] = _pct(lat, 50), _pct(lat, 99)
    async with import_persistent_worker(MODULE, worker="process") as proxy:
        for _ in range(50):
            await proxy.add(1, 2)
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            await proxy.add(1, 2)
            lat.append(time.perf_counter() - t)
        out["proxy_p50"], out["proxy_p99"] = _pct(lat, 50), _pct(lat, 99)

        t = time.perf_counter()
        for i in range(concurrent):
            await proxy.add(i, 0)
        out["sequential_s"] = time.perf_counter() - t
        t = time.perf_counter()
        results = await asyncio.gather(*(proxy.add(i, 0) for i in range(concurrent)))
        out["concurrent_s"] = time.perf_counter() - t
        out["order_kept"] = list(results) == list(range(concurrent))
    out["p50_ratio"] = out["proxy_p50"] / out["task_p50"]
    out["concurrent_vs_sequential"] = out["concurrent_s"] / out["sequential_s"]
    return out


def report(r: dict[str, float | bool], n: int, concurrent: int) -> str:
    """A markdown table of the figures."""
    us = 1e6
    lines = [
        f"| measure (process workers, {n} sequential calls) | p50 | p99 |",
        "|---|---|---|",
        f"| plain pool task round trip | {r['task_p50'] * us:.0f} µs | {r['task_p99'] * us:.0f} µs |",
        f"| persistent proxy call | {r['proxy_p50'] * us:.0f} µs | {r['proxy_p99'] * us:.0f} µs |",
        f"| ratio proxy / task (bar <= 1.5) | {r['p50_ratio']:.2f} | |",
        "",
        f"| {concurrent} calls on one proxy | time | |",
        "|---|---|---|",
        f"| sequential | {r['sequential_s'] * 1000:.0f} ms | |",
        f"| concurrent (gather), order kept: {r['order_kept']} | {r['concurrent_s'] * 1000:.0f} ms | "
        f"{r['concurrent_vs_sequential']:.2f}x sequential (bar <= 1.0) |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 calls instead of 2,000")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON ('-' for stdout)")
    ns = parser.parse_args(argv)
    n = 200 if ns.quick else 2_000
    concurrent = 100 if ns.quick else 1_000
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    r = runner(measure(n, concurrent))
    print(report(r, n, concurrent))
    if ns.json:
        text = json.dumps(r, indent=2)
        if ns.json == "-":
            print(text)
        else:
            Path(ns.json).write_text(text)
    ok = r["order_kept"] and r["p50_ratio"] <= 1.5
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
