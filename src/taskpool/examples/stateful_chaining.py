"""Seed scenario "Stateful Worker Chaining", the Python way.

Persistent workers keep state between calls: ``state()`` counts the ``add`` calls made
through that proxy. Task B2 reuses ``math_b`` after task B exits (added from B's
done-callback), so it sees B's state; C2 is added later, in a second round after the
pool drained, so ``all_settled`` runs twice. Run:
``python -m taskpool.examples.stateful_chaining``.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from taskpool import FunctionPool, StatusType, Task, import_persistent_worker
from taskpool.examples._common import PoolWatcher, Printer, no_watch, percent, runtime_line

MATH = "taskpool.examples.math"


async def run(out: Printer = print, worker: str = "process", watch: PoolWatcher = no_watch) -> FunctionPool:
    """Run the scenario; ``worker`` is the persistent workers' kind."""
    start = time.perf_counter()
    pool = FunctionPool(pool_size=3, worker="inline", name="chaining")
    first_round = anyio.Event()

    messages: dict[int, Any] = {}

    def on_done(tasks: list[Task[Any]]) -> None:
        for record in pool.status("completed", StatusType.RAW):
            ok = "Success" if record.error is None else f"Error ({record.error})"
            out(messages.get(record.id), ok, record.meta)
        out("\nDONE!", pool.status("completed", StatusType.COUNT))
        out(runtime_line(start) + "\n\n")
        first_round.set()

    pool.then(lambda result, task: messages.__setitem__(task.id, result)).all_settled(on_done)

    async def session(label: str, math: Any, pairs: list[tuple[int, int]], n: int) -> str:
        out(f"{label}: state(): ", await math.state())
        for a, b in pairs:
            out(f"{label}: add({a}, {b}): ", await math.add(a, b))
            out(f"{label}: state({a}, {b}): ", await math.state())
        out(f"{label}: fib(): ", await math.fib(n))
        out(percent(pool.status("completed", StatusType.PERCENT)), "%")
        return f"Done {label}!"

    async def fresh(label: str, pairs: list[tuple[int, int]], n: int) -> str:
        async with import_persistent_worker(MATH, worker=worker) as math:
            return await session(label, math, pairs, n)

    math_b = await import_persistent_worker(MATH, worker=worker)

    async def b2() -> str:
        try:
            return await session("B2", math_b, [(15, 16), (17, 18)], 27)
        finally:
            await math_b.terminate()

    try:
        async with pool:
            watch(pool)
            out("Available worker: ", "Yes" if pool.has_available_worker() else "No")
            pool.add_task(fresh, "A", [(1, 2), (3, 4)], 32, meta={"meta": 1})
            task_b = pool.add_task(session, "B", math_b, [(5, 6), (7, 8)], 31)
            task_b.add_done_callback(lambda _: pool.add_task(b2))
            pool.add_task(fresh, "C", [(9, 10), (11, 12)], 30)
            out("Available worker: ", "Yes" if pool.has_available_worker() else "No")
            await first_round.wait()
            first_round = anyio.Event()
            # A second round once the first one drained (the seed's setTimeout).
            pool.add_task(fresh, "C2", [(19, 110), (111, 112)], 30)
    finally:
        await math_b.terminate()
    return pool


if __name__ == "__main__":
    anyio.run(run)
