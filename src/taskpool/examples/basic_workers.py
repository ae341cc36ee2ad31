"""Seed scenario "Basic Independent Workers", the Python way.

An inline pool's four tasks each start a persistent worker of their own, make one call
and terminate it: the CPU work runs in parallel in the workers, the orchestration on
the pool's event loop. Run: ``python -m taskpool.examples.basic_workers``.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from taskpool import FunctionPool, StatusType, Task, import_persistent_worker
from taskpool.examples._common import PoolWatcher, Printer, no_watch, runtime_line, summary

MATH = "taskpool.examples.math"


async def run(out: Printer = print, worker: str = "process", watch: PoolWatcher = no_watch) -> FunctionPool:
    """Run the scenario; ``worker`` is the persistent workers' kind."""
    start = time.perf_counter()
    pool = FunctionPool(pool_size=4, worker="inline", name="basic")

    def on_first(result: Any, task: Task[Any]) -> None:
        out(f"Finished First: {task.meta} = {summary(result)}\n")

    def on_each(result: Any, task: Task[Any]) -> None:
        out(task.meta, summary(result))

    def on_done(tasks: list[Task[Any]]) -> None:
        out("\nDONE!", pool.status("completed", StatusType.COUNT))
        out(runtime_line(start))

    def on_error(exc: BaseException, task: Task[Any]) -> None:
        out(task.meta, "failed:", repr(exc))

    pool.race(on_first).then(on_each).catch(on_error).all_settled(on_done)

    async def call(fn: str, *args: Any) -> Any:
        async with import_persistent_worker(MATH, worker=worker) as math:
            return await getattr(math, fn)(*args)

    async with pool:
        watch(pool)
        pool.add_task(call, "fib", 32, meta="fib(32)")
        pool.add_task(call, "find_primes_up_to", 17_000_000, meta="find_primes_up_to(17000000)")
        pool.add_task(call, "tribonacci", 27, meta="tribonacci(27)")
        pool.add_task(call, "estimate_pi", 25, meta="estimate_pi(25)")
    return pool


if __name__ == "__main__":
    anyio.run(run)
