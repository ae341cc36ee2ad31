"""``taskpool demo``: the seed examples, run with live status.

The scenarios live in :mod:`taskpool.examples` (runnable on their own); each takes a
printer, the worker kind and a pool watcher. The demo passes a :class:`Console` that
prints the scenario's lines and keeps a live status display fed by each pool's event
bus: a :class:`~taskpool.Progress` bar on a terminal, plain status lines otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import anyio

from ._loop import run
from ._pool import FunctionPool
from ._progress import Progress
from ._types import StatusType, TaskEvent
from .examples import basic_workers, process_pool, shared_workers, stateful_chaining

__all__ = ["SCENARIOS", "Console", "run_demo"]


class Console:
    """Prints lines, and a live status of one pool at a time that never garbles them.

    ``progress``: ``"bar"`` (a :class:`~taskpool.Progress` line per pool, replaced by its
    summary when the pool closes), ``"lines"`` (a status line per task event) or ``"off"``.
    """

    def __init__(self, progress: str, out: TextIO | None = None) -> None:
        self.progress = progress
        self.out = out or sys.stdout
        self._bar: Progress | None = None

    def print(self, *parts: Any) -> None:
        """Print a line (above the progress bar, when one is shown)."""
        if self._bar is not None:
            self._bar.write(" ".join(map(str, parts)))
        else:
            print(*parts, file=self.out, flush=True)

    def update(self, pool: FunctionPool, event: TaskEvent) -> None:
        """Show the pool's status after ``event``."""
        counts = pool.status()
        if self.progress == "bar":
            bar = self._bar
            if bar is None:  # forced with --progress bar: draw even when out is no terminal
                bar = self._bar = Progress(label=pool.name, file=self.out, enabled=True)
            # Follow the pool's own counts: they hold the tasks added before we subscribed.
            bar.total = counts["total"]
            failed = counts["failed"] + counts["cancelled"] - bar.failed
            if failed > 0:
                bar.advance(failed, failed=True)
            succeeded = counts["completed"] - bar.done
            if succeeded > 0:
                bar.advance(succeeded)
        elif self.progress == "lines" and event.topic != "task.queued":
            meta = f" {event.meta}" if event.meta is not None else ""
            where = f" on worker {event.worker_id}" if event.worker_id is not None else ""
            print(
                f"  [status] task {event.task_id}{meta} {event.state.value}{where}: "
                f"{counts['completed']}/{counts['total']} done ({pool.status('completed', StatusType.PERCENT):.0f}%)",
                file=self.out,
                flush=True,
            )

    def finish(self) -> None:
        """Replace the progress bar by its summary line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


async def watch(pool: FunctionPool, console: Console, stopped: anyio.Event | None = None) -> None:
    """Feed the console from the pool's bus until the pool closes; then set ``stopped``."""
    try:
        if console.progress == "off":
            return
        async with pool.events.subscribe("task.*") as sub:
            async for event in sub:
                if isinstance(event, TaskEvent):
                    console.update(pool, event)
    finally:
        console.finish()
        if stopped is not None:
            stopped.set()


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
            watchers: list[anyio.Event] = []

            def watch_pool(pool: FunctionPool) -> None:
                watchers.append(anyio.Event())
                tg.start_soon(watch, pool, console, watchers[-1])

            for i, name in enumerate(names):
                title, scenario = SCENARIOS[name]
                if i:
                    console.print()
                console.print(f"=== {title} ({name}, worker={worker}) ===\n")
                await scenario(console.print, worker, watch_pool)
                # The pool closed: let its status end (a bar leaves its summary) before the next one.
                with anyio.move_on_after(5):
                    for stopped in watchers:
                        await stopped.wait()
                watchers.clear()

    try:
        run(_main())  # on uvloop when it is installed
    except KeyboardInterrupt:
        return 130
    return 0
