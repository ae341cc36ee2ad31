"""``taskpool demo``: the seed examples, run with live status.

The scenarios live in :mod:`taskpool.examples` (runnable on their own); each takes a
printer, the worker kind and a pool watcher. The demo passes a :class:`Console` that
prints the scenario's lines and keeps a live status display fed by each pool's event
bus: a progress bar on a terminal, plain status lines otherwise.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import anyio

from ._loop import run
from ._pool import FunctionPool
from ._types import StatusType, TaskEvent
from .examples import basic_workers, process_pool, shared_workers, stateful_chaining

__all__ = ["SCENARIOS", "Console", "run_demo"]


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


Scenario = Callable[..., Awaitable[Any]]


def _scenarios() -> dict[str, tuple[str, Scenario]]:
    return {
        "basic": ("Basic Independent Workers", basic_workers.run),
        "shared": ("Shared Worker Instances", shared_workers.run),
        "chaining": ("Stateful Worker Chaining", stateful_chaining.run),
        "tasks": ("The pool's own tasks on workers", process_pool.run),
    }


SCENARIOS: dict[str, tuple[str, Scenario]] = _scenarios()


def run_demo(names: list[str], *, worker: str, progress: str) -> int:
    """Run the named scenarios one after another; returns the exit code."""
    console = Console(progress)

    async def _main() -> None:
        async with anyio.create_task_group() as tg:

            def watch_pool(pool: FunctionPool) -> None:
                tg.start_soon(watch, pool, console)

            for i, name in enumerate(names):
                title, scenario = SCENARIOS[name]
                if i:
                    console.print()
                console.print(f"=== {title} ({name}, worker={worker}) ===\n")
                await scenario(console.print, worker, watch_pool)

    try:
        run(_main())  # on uvloop when it is installed
    except KeyboardInterrupt:
        return 130
    return 0
