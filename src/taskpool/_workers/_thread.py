"""Thread workers: each worker is a thread running its own event loop.

Nothing is serialised: the task's function and arguments are handed over as objects.
Traffic in both directions is batched so a busy pool pays few cross-thread wake-ups::

    pool loop                                   worker thread (own loop, uvloop if any)
    ---------                                   -------------
    send(task) -> inbox.append  --(wake only if the worker sleeps)-->  inbox.popleft()
                                                                       run fn(*args)
    _flush() <-(one call_soon_threadsafe per batch)--  outbox.append(("done", task, ...))

A task's coroutine is awaited directly by the worker's serving coroutine; cancelling it
cancels that coroutine and ``uncancel()`` s the server. A plain function runs on the
worker thread and cannot be interrupted: cancelling or timing it out retires the
worker (the thread ends when the call returns) and a fresh one takes its place.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._context import TaskContext, current
from .._events import set_if_pending
from .._loop import new_event_loop
from ._base import CancelResult, Capabilities, Worker, WorkerExit, own_traceback

if TYPE_CHECKING:
    from .._task import Task

__all__ = ["ThreadWorker"]

_STOP = object()
#: Seconds a worker whose thread reported its end waits for the thread to be gone.
THREAD_EXIT_WAIT = 1.0
_STARTED = 0
_DONE = 1
_PUBLISH = 2
_RETURNED = 3


class ThreadWorker(Worker):
    """A worker thread with its own event loop."""

    kind = "thread"
    capabilities = Capabilities(isolated=False, window=64, adaptive_window=True, reclaims_unstarted=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inbox: collections.deque[Any] = collections.deque()
        self._outbox: collections.deque[tuple[int, Any, Any, Any, float]] = collections.deque()
        self._flush_pending = False
        self._sleeping = False
        self._wloop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._running: dict[Task[Any], asyncio.Task[None]] = {}  # task -> its runner
        self._cancelling: set[Task[Any]] = set()
        self._sync_task: Task[Any] | None = None  # in a plain call: cannot be interrupted
        self._thread: threading.Thread | None = None
        self._ended: asyncio.Future[WorkerExit] | None = None
        self._gone: asyncio.Future[None] | None = None  # the thread has ended
        self._detached = False
        self._stop_seen = False  # a runner took _STOP: ending is asked for, not a death
        self._name = f"taskpool-{self.spec.pool_name}-{self.id}"

    @property
    def thread_name(self) -> str | None:
        return self._thread.name if self._thread is not None else self._name

    @property
    def thread(self) -> threading.Thread | None:
        """The worker's thread, once started."""
        return self._thread

    # --- pool side -----------------------------------------------------------------------

    async def run(self, on_ready: Callable[[], None]) -> WorkerExit:
        loop = self.host.loop
        ready: asyncio.Future[None] = loop.create_future()
        self._ended = loop.create_future()
        self._gone = loop.create_future()
        self._thread = threading.Thread(target=self._main, args=(ready,), name=self._name, daemon=True)
        self._thread.start()
        try:
            await ready
            on_ready()
            exit = await self._ended
            if not self._detached:
                # The thread reported its end and is exiting: see it gone, so a closed pool
                # leaves no thread (nor a reference to itself) behind. Bounded all the same.
                await asyncio.wait({self._gone}, timeout=THREAD_EXIT_WAIT)
                if self._gone.done():
                    self._thread.join(THREAD_EXIT_WAIT)  # past its last line: returns at once
            return exit
        except BaseException:
            # Cancelled (pool shutting down hard): ask the thread to end; never wait on it
            # here, the pool joins its threads when it closes.
            self.kill()
            raise

    def _post(self, code: int, task: Any, a: Any = None, b: Any = None, at: float = 0.0) -> None:
        """Worker thread -> pool loop, batched: one wake-up per burst of reports."""
        self._outbox.append((code, task, a, b, at))
        if not self._flush_pending:
            self._flush_pending = True
            try:
                self.host.loop.call_soon_threadsafe(self._flush)
            except RuntimeError:  # the pool's loop is closed: nobody is listening
                pass

    def _flush(self) -> None:
        # Clear the flag before draining, so a report appended during the drain either
        # is drained now or schedules another flush: none is ever stranded.
        self._flush_pending = False
        if self._detached:
            self._outbox.clear()
            return
        host = self.host
        outbox = self._outbox
        while outbox:
            code, task, a, b, at = outbox.popleft()
            if code == _DONE:
                host.task_finished(self, task, a, b, at)
            elif code == _STARTED:
                host.task_started(self, task, at)
            elif code == _PUBLISH:
                host.worker_publish(self, task, a, b)
            else:
                host.task_returned(self, task)
        host.batch_done()

    def _end(self, exit: WorkerExit) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(exit)

    def send(self, task: Task[Any]) -> None:
        self._inbox.append(task)
        if self._sleeping:
            self._sleeping = False
            self._poke()

    def _poke(self) -> None:
        wloop, wake = self._wloop, self._wake
        if wloop is not None and wake is not None:
            try:
                wloop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # worker loop already closed
                pass

    def cancel(self, task: Task[Any]) -> CancelResult:
        try:
            self._inbox.remove(task)
        except ValueError:
            pass
        else:
            return CancelResult.REMOVED
        if self._sync_task is task:
            return CancelResult.UNSTOPPABLE
        wloop = self._wloop
        if wloop is not None:
            try:
                wloop.call_soon_threadsafe(self._cancel_in_worker, task)
            except RuntimeError:
                pass
        return CancelResult.STOPPING

    def reclaim(self, task: Task[Any]) -> bool:
        try:
            self._inbox.remove(task)
        except ValueError:
            return False
        return True

    def stop(self) -> None:
        self._inbox.append(_STOP)
        self._sleeping = False
        self._poke()

    def kill(self) -> None:
        # A thread cannot be killed: drop what it has not started, cancel what runs.
        self._inbox.clear()
        self._inbox.append(_STOP)
        for task in list(self._running):
            self.cancel(task)
        self._poke()

    def abandon(self) -> None:
        """Retire the worker: ``run`` returns now; the thread ends after its blocking call."""
        self._detached = True
        returned = [t for t in self._inbox if t is not _STOP]
        self._inbox.clear()
        self._inbox.append(_STOP)
        for t in returned:
            self.host.task_returned(self, t)
        self._end(WorkerExit(failed=False, reason="retired"))

    async def join_abandoned(self, timeout: float) -> bool:
        gone = self._gone
        if gone is None or gone.done():
            return True
        if timeout > 0:
            await asyncio.wait({gone}, timeout=timeout)
        return gone.done()

    # --- worker thread -------------------------------------------------------------------

    def _main(self, ready: asyncio.Future[None]) -> None:
        loop = new_event_loop()
        self._wloop = loop
        try:
            loop.run_until_complete(self._serve(ready))
            if self._stop_seen:
                exit = WorkerExit(failed=False, reason="stopped")
            else:  # a runner ended without being asked to: this worker is dead
                exit = WorkerExit(failed=True, reason="thread runner ended unexpectedly")
        except BaseException as exc:  # a bug of ours, or a runner closed from outside
            exit = WorkerExit(failed=True, reason=f"thread died: {exc!r}")
        finally:
            self._wloop = None
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
        try:
            self.host.loop.call_soon_threadsafe(self._end, exit)
            if self._gone is not None:
                self.host.loop.call_soon_threadsafe(set_if_pending, self._gone)
        except RuntimeError:
            pass

    async def _serve(self, ready: asyncio.Future[None]) -> None:
        self._wake = asyncio.Event()
        self.host.loop.call_soon_threadsafe(set_if_pending, ready)
        n = self.spec.concurrency
        if n == 1:
            await self._runner()
            return
        runners = [asyncio.ensure_future(self._runner()) for _ in range(n)]
        try:
            await asyncio.gather(*runners)
        finally:
            for r in runners:
                r.cancel()

    async def _runner(self) -> None:
        """Run tasks from the inbox, one at a time (``concurrency`` runners share it)."""
        wake = self._wake
        assert wake is not None
        me = asyncio.current_task()
        assert me is not None
        ctx = TaskContext(self._publish, self.id)
        current.set(ctx)  # this runner's own context: each runner has its own task_id
        inbox = self._inbox
        post = self._post
        running = self._running
        cancelling = self._cancelling
        while True:
            if not inbox:
                wake.clear()
                self._sleeping = True
                if inbox:  # appended between our check and the flag: no wake is coming
                    self._sleeping = False
                    continue
                await wake.wait()
                continue
            task = inbox.popleft()
            if task is _STOP:
                inbox.appendleft(_STOP)  # leave it for the other runners
                self._stop_seen = True
                wake.set()
                return
            running[task] = me
            ctx.task_id = task.id
            post(_STARTED, task, at=time.time())
            try:
                self._sync_task = task
                value = task.fn(*task.args)
                self._sync_task = None
                if type(value) is types.CoroutineType or hasattr(value, "__await__"):
                    value = await value
                ok = True
            except asyncio.CancelledError as exc:
                self._sync_task = None
                if task in cancelling and me.uncancel() == 0:
                    ok, value = False, None  # we cancelled this task; the pool knows
                elif me.cancelling():
                    raise  # the worker itself is being cancelled
                else:
                    ok, value = False, own_traceback(exc, _RUNNER_CODE)  # the task raised CancelledError itself
            except GeneratorExit:
                raise  # this runner's coroutine is being closed
            except BaseException as exc:  # Exception, or SystemExit/KeyboardInterrupt from the task
                self._sync_task = None
                ok, value = False, own_traceback(exc, _RUNNER_CODE)
            cancelling.discard(task)
            del running[task]
            ctx.task_id = None
            post(_DONE, task, ok, value, time.time())
            del task, value  # keep no reference to a settled task or its result

    def _cancel_in_worker(self, task: Task[Any]) -> None:
        runner = self._running.get(task)
        if runner is not None and self._sync_task is not task:
            self._cancelling.add(task)
            runner.cancel()

    def _publish(self, topic: str, data: Any, task_id: int | None) -> None:
        self._post(_PUBLISH, topic, data, task_id)


_RUNNER_CODE = ThreadWorker._runner.__code__  # stripped from tasks' tracebacks
