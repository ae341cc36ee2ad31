"""The seed's calls as the pool's own tasks, on process workers (no persistent workers).

The Python way to spread CPU-bound calls: plain functions handed to a process pool.
Run: ``python -m taskpool.examples.process_pool``.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from taskpool import FunctionPool, StatusType, Task
from taskpool.examples import math
from taskpool.examples._common import PoolWatcher, Printer, no_watch, runtime_line, summary


async def run(out: Printer = print, worker: str = "process", watch: PoolWatcher = no_watch) -> FunctionPool:
    """Run the scenario; ``worker`` is the pool's worker kind."""
    start = time.perf_counter()
    pool = FunctionPool(pool_size=4, worker=worker, name="tasks")

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
    async with pool:
        watch(pool)
        pool.add_task(math.fib, 32, meta="fib(32)")
        pool.add_task(math.find_primes_up_to, 17_000_000, meta="find_primes_up_to(17000000)")
        pool.add_task(math.tribonacci, 27, meta="tribonacci(27)")
        pool.add_task(math.estimate_pi, 25, meta="estimate_pi(25)")
    return pool


if __name__ == "__main__":
    anyio.run(run)
