"""Seed scenario "Shared Worker Instances", the Python way.

Some persistent workers are shared between tasks and outlive them: ``math_b`` is
terminated from a ``then`` hook once its task is done, ``math_d`` serves two tasks, the
second of which is added from the first one's done-callback (chained follow-up work,
accepted while the pool drains). Run: ``python -m taskpool.examples.shared_workers``.
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
    math_b = await import_persistent_worker(MATH, worker=worker)
    math_d = await import_persistent_worker(MATH, worker=worker)
    pool = FunctionPool(pool_size=4, worker="inline", name="shared")

    def on_first(result: Any, task: Task[Any]) -> None:
        out(f"Finished First: {task.meta} = {summary(result)}\n")

    async def on_each(result: Any, task: Task[Any]) -> None:
        out(task.meta, summary(result))
        if task.meta == "find_primes_up_to(17000000)":
            await math_b.terminate()

    def on_done(tasks: list[Task[Any]]) -> None:
        out("\nDONE!", pool.status("completed", StatusType.COUNT))
        out(runtime_line(start))

    def on_error(exc: BaseException, task: Task[Any]) -> None:
        out(task.meta, "failed:", repr(exc))

    pool.race(on_first).then(on_each).catch(on_error).all_settled(on_done)

    async def fib() -> int:
        async with import_persistent_worker(MATH, worker=worker) as math_a:
            result: int = await math_a.fib(32)
            return result  # do more stuff here

    async def primes() -> list[int]:
        return await math_b.find_primes_up_to(17_000_000)  # type: ignore[no-any-return]

    async def tribonacci() -> int:
        async with import_persistent_worker(MATH, worker=worker) as math_c:
            return await math_c.tribonacci(27)  # type: ignore[no-any-return]

    async def pi_twice() -> float:
        return await math_d.estimate_pi(25) + await math_d.estimate_pi(25)  # type: ignore[no-any-return]

    async def pi_third(previous: float) -> float:
        result: float = await math_d.estimate_pi(25)
        await math_d.terminate()
        return result + previous

    def chain(task: Task[float]) -> None:
        if not task.exception():
            pool.add_task(pi_third, task.result(), meta="estimate_pi(25) #2")

    try:
        async with pool:
            watch(pool)
            pool.add_task(fib, meta="fib(32)")
            pool.add_task(primes, meta="find_primes_up_to(17000000)")
            pool.add_task(tribonacci, meta="tribonacci(27)")
            pool.add_task(pi_twice, meta="estimate_pi(25)").add_done_callback(chain)
    finally:
        await math_b.terminate()  # no-ops when already terminated
        await math_d.terminate()
    return pool


if __name__ == "__main__":
    anyio.run(run)
