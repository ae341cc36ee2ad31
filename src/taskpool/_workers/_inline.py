"""Inline workers: tasks run on the pool's own event loop, ``pool_size`` at a time.

Each worker is a runner coroutine (``concurrency`` of them) in the pool's task group that awaits its tasks'
coroutines directly (no ``asyncio.Task`` per task). Plain functions are called inline,
so they block the loop while they run: keep them short, or use threads.
"""

from __future__ import annotations

import asyncio
import collections
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from .._context import TaskContext, current
from ._base import CancelResult, Worker, WorkerExit

if TYPE_CHECKING:
    from .._task import Task

__all__ = ["InlineWorker"]


class InlineWorker(Worker):
    """Runs tasks on the pool's loop, one at a time per worker."""

    kind = "inline"
    window = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inbox: collections.deque[Task[Any]] = collections.deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._scopes: dict[Task[Any], anyio.CancelScope] = {}  # running task -> its scope
        self._stopping = False
        self._killed = False

    async def run(self, on_ready: Callable[[], None]) -> WorkerExit:
        on_ready()
        if self.spec.concurrency == 1:
            await self._runner()
        else:
            async with anyio.create_task_group() as tg:
                for _ in range(self.spec.concurrency):
                    tg.start_soon(self._runner)
        return WorkerExit(failed=False, reason="killed" if self._killed else "stopped")

    async def _runner(self) -> None:
        host = self.host
        loop = host.loop
        ctx = TaskContext(self._publish, self.id, owner=host)
        current.set(ctx)
        inbox = self._inbox
        scopes = self._scopes
        while True:
            if not inbox:
                if self._stopping or self._killed:
                    return
                wake = loop.create_future()
                self._waiters.append(wake)
                try:
                    await wake
                finally:
                    if not wake.done():
                        self._waiters.remove(wake)
                continue
            if self._killed:
                return
            task = inbox.popleft()
            self.current = task
            ctx.task_id = task.id
            host.task_started(self, task)
            ok = False
            value: Any = None
            with anyio.CancelScope() as scope:
                scopes[task] = scope
                try:
                    value = task.fn(*task.args)
                    if type(value) is types.CoroutineType or hasattr(value, "__await__"):
                        value = await value
                    ok = True
                except Exception as exc:
                    value = exc
                except BaseException as exc:
                    # A real cancellation (ours or the pool's) comes with the runner being
                    # cancelled; a CancelledError/SystemExit the task raised by itself is
                    # just how that task failed.
                    me = asyncio.current_task()
                    if isinstance(exc, GeneratorExit) or (
                        isinstance(exc, asyncio.CancelledError) and me is not None and me.cancelling()
                    ):
                        raise
                    value = exc
            del scopes[task]
            self.current = None
            ctx.task_id = None
            self.tasks_done += 1
            host.task_finished(self, task, ok, value)
            host.batch_done()

    def _publish(self, topic: str, data: Any, task_id: int | None) -> None:
        self.host.worker_publish(self, topic, data, task_id)

    def _poke(self) -> None:
        if self._waiters:
            wake = self._waiters.pop()
            if not wake.done():
                wake.set_result(None)

    def send(self, task: Task[Any]) -> None:
        self._inbox.append(task)
        self._poke()

    def cancel(self, task: Task[Any]) -> CancelResult:
        scope = self._scopes.get(task)
        if scope is not None:
            scope.cancel()
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
        self._wake_all()

    def kill(self) -> None:
        self._killed = True
        for scope in self._scopes.values():
            scope.cancel()
        self._wake_all()

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, []
        for wake in waiters:
            if not wake.done():
                wake.set_result(None)
