"""Inline workers: tasks run on the pool's own event loop, ``pool_size`` at a time.

Each worker is a runner coroutine (``concurrency`` of them) in the pool's task group that awaits its tasks'
coroutines directly (no ``asyncio.Task`` per task). Plain functions are called inline,
so they block the loop while they run: keep them short, or use threads.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import time
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from .._context import TaskContext, attach_trace, current, detach_trace
from ._base import INIT_FAILED, CancelResult, Capabilities, Worker, WorkerExit, own_traceback

if TYPE_CHECKING:
    from .._task import Task

__all__ = ["InlineWorker"]


class InlineWorker(Worker):
    """Runs tasks on the pool's loop, one at a time per worker."""

    kind = "inline"
    capabilities = Capabilities(isolated=False, window=1, reclaims_unstarted=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inbox: collections.deque[Task[Any]] = collections.deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._running: dict[Task[Any], asyncio.Task[Any]] = {}  # running task -> its runner
        self._cancelling: set[Task[Any]] = set()  # running tasks we are stopping
        self._stopping = False
        self._killed = False
        self._abandoned = False

    async def run(self, on_ready: Callable[[], None]) -> WorkerExit:
        spec = self.spec
        if spec.initializer is not None:
            try:
                result = spec.initializer(*spec.initargs)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                logging.getLogger(spec.init_logger).critical("Exception in initializer:", exc_info=True)
                return WorkerExit(failed=True, reason=f"{INIT_FAILED}: {type(exc).__name__}: {exc}")
        on_ready()
        try:
            if self.spec.concurrency == 1:
                await self._runner()
            else:
                async with anyio.create_task_group() as tg:
                    for _ in range(self.spec.concurrency):
                        tg.start_soon(self._runner)
        except (Exception, GeneratorExit) as exc:  # a runner broke: the worker is dead, and is replaced
            return WorkerExit(failed=True, reason=f"runner died: {exc!r}")
        if self._abandoned:
            return WorkerExit(failed=False, reason="retired")
        if not (self._stopping or self._killed):
            # A runner returned without being asked to (it was closed from outside).
            return WorkerExit(failed=True, reason="runner ended unexpectedly")
        return WorkerExit(failed=False, reason="killed" if self._killed else "stopped")

    async def _runner(self) -> None:
        host = self.host
        loop = host.loop
        ctx = TaskContext(self._publish, self.id, owner=host)
        current.set(ctx)
        inbox = self._inbox
        running = self._running
        cancelling = self._cancelling
        me = asyncio.current_task()
        assert me is not None
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
            ctx.task_id = task.id
            host.task_started(self, task, time.time())
            ok = False
            value: Any = None
            # Stopping a task cancels this runner's asyncio task (no cancel scope per task:
            # they cost more than the task); the runner takes the cancellation back.
            running[task] = me
            carrier = task._trace
            token = None if carrier is None else attach_trace(carrier)
            try:
                value = task.fn(*task.args)
                if type(value) is types.CoroutineType or hasattr(value, "__await__"):
                    value = await value
                ok = True
            except asyncio.CancelledError as exc:
                if task in cancelling and me.uncancel() == 0:
                    value = None  # we stopped it; the pool knows
                elif me.cancelling():
                    raise  # the runner itself is being cancelled (the pool closes hard)
                else:
                    value = own_traceback(exc, _RUNNER_CODE)  # the task raised CancelledError by itself
            except GeneratorExit:
                raise  # this runner's coroutine is being closed
            except BaseException as exc:  # Exception, or the task's own SystemExit/KeyboardInterrupt
                value = own_traceback(exc, _RUNNER_CODE)
            del running[task]
            cancelling.discard(task)
            if token is not None:
                detach_trace(token)
            ctx.task_id = None
            host.task_finished(self, task, ok, value, time.time())
            del task, value  # keep no reference to a settled task or its result
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
        runner = self._running.get(task)
        if runner is not None:
            self._cancelling.add(task)
            runner.cancel()
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
        for task, runner in list(self._running.items()):
            self._cancelling.add(task)
            runner.cancel()
        self._wake_all()

    def abandon(self) -> None:
        self._abandoned = True
        self.kill()

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, []
        for wake in waiters:
            if not wake.done():
                wake.set_result(None)


_RUNNER_CODE = InlineWorker._runner.__code__  # stripped from tasks' tracebacks
