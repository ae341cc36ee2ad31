"""Inline workers: tasks run on the pool's own event loop, ``pool_size`` at a time.

Each worker is a runner coroutine in the pool's task group that awaits its tasks'
coroutines directly (no ``asyncio.Task`` per task). Plain functions are called inline,
so they block the loop while they run: keep them short, or use threads.
"""

from __future__ import annotations

import collections
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from .._context import TaskContext, current
from ._base import CancelResult, Worker, WorkerExit

if TYPE_CHECKING:
    import asyncio

    from .._task import Task

__all__ = ["InlineWorker"]


class InlineWorker(Worker):
    """Runs tasks on the pool's loop, one at a time per worker."""

    kind = "inline"
    window = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inbox: collections.deque[Task[Any]] = collections.deque()
        self._wake: asyncio.Future[None] | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopping = False
        self._killed = False

    async def run(self, on_ready: Callable[[], None]) -> WorkerExit:
        host = self.host
        loop = host.loop
        ctx = TaskContext(self._publish, self.id, owner=host)
        current.set(ctx)
        inbox = self._inbox
        on_ready()
        while True:
            if not inbox:
                if self._stopping or self._killed:
                    break
                self._wake = loop.create_future()
                try:
                    await self._wake
                finally:
                    self._wake = None
                continue
            if self._killed:
                break
            task = inbox.popleft()
            self.current = task
            ctx.task_id = task.id
            host.task_started(self, task)
            ok = False
            value: Any = None
            with anyio.CancelScope() as scope:
                self._scope = scope
                try:
                    value = task.fn(*task.args)
                    if type(value) is types.CoroutineType or hasattr(value, "__await__"):
                        value = await value
                    ok = True
                except Exception as exc:
                    value = exc
            self._scope = None
            self.current = None
            ctx.task_id = None
            self.tasks_done += 1
            host.task_finished(self, task, ok, value)
            host.batch_done()
        return WorkerExit(failed=False, reason="killed" if self._killed else "stopped")

    def _publish(self, topic: str, data: Any, task_id: int | None) -> None:
        self.host.worker_publish(self, topic, data, task_id)

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def send(self, task: Task[Any]) -> None:
        self._inbox.append(task)
        self._poke()

    def cancel(self, task: Task[Any]) -> CancelResult:
        if self.current is task:
            if self._scope is not None:
                self._scope.cancel()
            return CancelResult.STOPPING
        try:
            self._inbox.remove(task)
        except ValueError:
            return CancelResult.STOPPING  # already reported, nothing to stop
        return CancelResult.REMOVED

    def reclaim(self, task: Task[Any]) -> bool:
        try:
            self._inbox.remove(task)
        except ValueError:
            return False
        return True

    def stop(self) -> None:
        self._stopping = True
        self._poke()

    def kill(self) -> None:
        self._killed = True
        if self._scope is not None:
            self._scope.cancel()
        self._poke()
