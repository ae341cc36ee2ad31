"""``taskpool demo``: the seed examples, run with live status.

Each scenario is an async function taking a :class:`Console` and the worker kind; the
console prints the scenario's own lines and keeps a live status display (a progress bar
on a terminal, plain lines otherwise) fed by the pool's event bus.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import anyio

from ._pool import FunctionPool
from ._task import Task
from ._types import StatusType, TaskEvent
from .examples import math

__all__ = ["SCENARIOS", "Console", "run_demo"]


def summary(value: Any) -> Any:
    """What the seed prints for a result: a list's length, else the value."""
    return len(value) if isinstance(value, list) else value


class Console:
    """Prints lines, and a live status of one pool that never garbles them."""

    def __init__(self, progress: str, out: TextIO | None = None) -> None:
        self.progress = progress
        self.out = out or sys.stdout
        self._bar = ""

    def print(self, *parts: Any) -> None:
        """Print a line (above the progress bar, when one is shown)."""
        self._clear()
        print(*parts, file=self.out, flush=True)
        self._draw()

    def _clear(self) -> None:
        if self._bar:
            self.out.write("\r\x1b[2K")

    def _draw(self) -> None:
        if self._bar:
            self.out.write(self._bar)
            self.out.flush()

    def update(self, pool: FunctionPool, event: TaskEvent) -> None:
        """Show the pool's status after ``event``."""
        counts = pool.status()
        total = counts["total"] or 1
        done = counts["completed"]
        if self.progress == "bar":
            width = max(10, min(40, shutil.get_terminal_size((80, 20)).columns - 50))
            filled = int(width * done / total)
            self._clear()
            self._bar = (
                f"[{'#' * filled}{'.' * (width - filled)}] {done}/{counts['total']} done, "
                f"{counts['active']} running, {counts['queued']} queued"
            )
            self._draw()
        elif self.progress == "lines" and event.topic != "task.queued":
            meta = f" {event.meta}" if event.meta is not None else ""
            where = f" on worker {event.worker_id}" if event.worker_id is not None else ""
            print(
                f"  [status] task {event.task_id}{meta} {event.state.value}{where}: "
                f"{done}/{counts['total']} done ({pool.status('completed', StatusType.PERCENT):.0f}%)",
                file=self.out,
                flush=True,
            )

    def finish(self) -> None:
        """Remove the progress bar."""
        self._clear()
        self._bar = ""


async def watch(pool: FunctionPool, console: Console) -> None:
    """Feed the console from the pool's bus until the pool closes."""
    if console.progress == "off":
        return
    async with pool.events.subscribe("task.*") as sub:
        async for event in sub:
            if isinstance(event, TaskEvent):
                console.update(pool, event)
    console.finish()


async def pool_tasks(console: Console, worker: str) -> None:
    """The seed's four calls as the pool's own tasks, on ``worker`` workers."""
    start = time.perf_counter()
    pool = FunctionPool(pool_size=4 if worker != "inline" else 4, worker=worker, name="demo")

    def on_first(result: Any, task: Task[Any]) -> None:
        console.print(f"Finished First: {task.meta} = {summary(result)}\n")

    def on_each(result: Any, task: Task[Any]) -> None:
        console.print(task.meta, summary(result))

    def on_done(tasks: list[Task[Any]]) -> None:
        console.print("\nDONE!", pool.status("completed", StatusType.COUNT))
        console.print(f"\n\nScript runtime: {time.perf_counter() - start:.3f} sec")

    pool.race(on_first).then(on_each).all_settled(on_done)
    async with anyio.create_task_group() as tg, pool:
        tg.start_soon(watch, pool, console)
        pool.add_task(math.fib, 32, meta="fib(32)")
        pool.add_task(math.find_primes_up_to, 17_000_000, meta="find_primes_up_to(17000000)")
        pool.add_task(math.tribonacci, 27, meta="tribonacci(27)")
        pool.add_task(math.estimate_pi, 25, meta="estimate_pi(25)")


Scenario = Callable[[Console, str], Awaitable[None]]

SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "pool": ("The pool's own tasks on the chosen worker kind", pool_tasks),
}


def run_demo(names: list[str], *, worker: str, progress: str) -> int:
    """Run the named scenarios one after another; returns the exit code."""
    console = Console(progress)

    async def _main() -> None:
        for i, name in enumerate(names):
            title, scenario = SCENARIOS[name]
            if i:
                console.print()
            console.print(f"=== {title} ({name}, worker={worker}) ===\n")
            await scenario(console, worker)

    from ._workers._thread import new_event_loop

    loop = new_event_loop()
    try:
        loop.run_until_complete(_main())
    except KeyboardInterrupt:
        return 130
    finally:
        loop.close()
    return 0
