"""CPU per task, split between the pool's process and its workers.

Runs 3 x 20,000 no-op tasks (``add_task`` all, then ``join()``) on a warm
``FunctionPool(2, worker="process")`` and prints tasks/s and the CPU time (user + system)
per task in the pool's process (``resource.getrusage``) and in its worker processes
(``psutil``; thread workers are counted in the pool's process)::

    python -m benchmarks.cpu_per_task [--kind process|thread] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time

import psutil

from benchmarks import _workloads as wl
from taskpool import FunctionPool


async def measure(kind: str, batches: int = 3, n: int = 20_000) -> tuple[float, float, float]:
    """(tasks/s, pool-process CPU µs per task, workers' CPU µs per task)."""
    async with FunctionPool(2, worker=kind) as pool:
        await pool.add_task(wl.noop)
        kids = psutil.Process().children()
        k0 = sum(sum(k.cpu_times()[:2]) for k in kids)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for _ in range(batches):
            for _ in range(n):
                pool.add_task(wl.noop)
            await pool.join()
        elapsed = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        k1 = sum(sum(k.cpu_times()[:2]) for k in kids)
    total = batches * n
    own = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / total * 1e6
    return total / elapsed, own, (k1 - k0) / total * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="process", choices=("process", "thread"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for _ in range(args.runs):
        rate, own, workers = asyncio.run(measure(args.kind))
        # Thread workers run in the pool's process: their CPU is in the first figure.
        other = f"   workers {workers:.1f} us/task" if args.kind == "process" else ""
        print(f"{rate:,.0f} tasks/s   pool process {own:.1f} us/task{other}")


if __name__ == "__main__":
    main()
