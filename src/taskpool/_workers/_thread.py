"""Thread workers: plain threads, with an event loop only for coroutine tasks, made on demand.

Nothing is serialised: the task's function and arguments are handed over as objects.
Traffic in both directions is batched so a busy pool pays few cross-thread wake-ups::

    pool loop                                   worker thread (plain: no event loop)
    ---------                                   -------------
    send(task) -> inbox.append --(release the wake lock, only if the thread sleeps on it)-->
                                                inbox.popleft(); fn(*args) right here
    _flush() <-(one call_soon_threadsafe per burst)-- outbox.append((_DONE, task, ...))

    fn(*args) gave a coroutine: the thread makes its event loop (once: uvloop if any) and
    serves from it until it idles (nothing runs, the inbox is empty), then is plain again:
                                                loop.run_until_complete(_serve_async(...))
                                                  up to `concurrency` runners (the others
                                                  start once a coroutine waits) share the
                                                  inbox: await coroutines, call functions
    send(task) -> inbox.append --(a runner idles: call_soon_threadsafe(awake.set))-->

The thread sleeps by taking a lock that is held while no wake-up is owed; the pool (only
the pool) releases it when it is held. A coroutine task is cancelled in the worker's loop
(``cancel`` asks, the worker cancels) and the worker lives on. A plain function cannot be
interrupted: cancelling or timing it out retires the worker (the thread ends when the
call returns) and a fresh one takes its place.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import threading
import time
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._context import TaskContext, attach_trace, current, detach_trace
from .._events import resolve, set_if_pending
from .._loop import new_event_loop
from ._base import INIT_FAILED, CancelResult, Capabilities, Worker, WorkerExit, own_traceback

if TYPE_CHECKING:
    from .._task import Task

__all__ = ["ThreadWorker"]

_STOP = object()
#: Seconds a worker whose thread reported its end waits for the thread to be gone.
THREAD_EXIT_WAIT = 1.0
_STARTED = 0
_DONE = 1
_PUBLISH = 2
_Coroutine = types.CoroutineType


class ThreadWorker(Worker):
    """A worker thread: calls plain functions itself, runs an event loop for coroutines."""

    kind = "thread"
    capabilities = Capabilities(isolated=False, window=128, adaptive_window=True, reclaims_unstarted=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inbox: collections.deque[Any] = collections.deque()
        self._outbox: collections.deque[tuple[int, Any, Any, Any, float]] = collections.deque()
        self._flush_pending = False
        # The thread sleeps by taking _wake; the pool releases it to wake the thread.
        self._wake = threading.Lock()
        self._wake.acquire()
        self._sleeping = False  # set by the thread before it sleeps; cleared by whoever wakes it
        self._in_loop = False  # the thread runs (or is about to run) its event loop
        self._wloop: asyncio.AbstractEventLoop | None = None  # made with the first coroutine
        self._awake: asyncio.Event | None = None  # idle runners wait on it (in the loop)
        self._idle = 0  # runners waiting for work
        self._n_runners = 1  # runners serving: the first, and helpers once a coroutine waits
        self._helpers: list[asyncio.Task[None]] = []
        self._spawning = 0  # the loop turn to start helpers in (0: none asked)
        self._turn = 0  # counts the loop's turns of service (from plain to idle)
        self._leaving = False  # the loop went idle: its runners end, the thread is plain again
        self._running: dict[Task[Any], asyncio.Task[Any]] = {}  # coroutine task -> its runner
        self._stop_asked: set[Task[Any]] = set()  # the pool asked to stop them (any thread adds)
        self._cancelling: set[Task[Any]] = set()  # runners cancelled for them (worker thread only)
        self._killed = False
        self._sync_task: Task[Any] | None = None  # in a plain call: cannot be interrupted
        self._held = False  # take no task from the inbox: the pool decides on a retirement
        self._thread: threading.Thread | None = None
        self._ended: asyncio.Future[WorkerExit] | None = None
        self._gone: asyncio.Future[None] | None = None  # the thread has ended
        self._detached = False
        prefix = self.spec.thread_name_prefix
        self._name = f"{prefix}_{self.id}" if prefix else f"taskpool-{self.spec.pool_name}-{self.id}"
        self._init: asyncio.Future[str | None] | None = None  # the initializer's outcome

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
        self._ended = loop.create_future()
        self._gone = loop.create_future()
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        if self.spec.initializer is not None:
            self._init = loop.create_future()
        self._thread.start()
        try:
            if self._init is not None:
                failure = await self._init
                if failure is not None:  # the thread ends by itself: see it gone
                    await asyncio.wait({self._gone}, timeout=THREAD_EXIT_WAIT)
                    return WorkerExit(failed=True, reason=f"{INIT_FAILED}: {failure}")
            on_ready()  # the inbox takes tasks before the thread looks at it
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

    def _flush(self) -> None:
        # Clear the flag before draining, so a report appended during the drain either
        # is drained now or schedules another flush: none is ever stranded.
        self._flush_pending = False
        outbox = self._outbox
        if self._detached:
            outbox.clear()
            return
        host = self.host
        finished, started = host.task_finished, host.task_started
        stop_asked = self._stop_asked
        while outbox:
            code, task, a, b, at = outbox.popleft()
            if code == _DONE:
                if stop_asked:
                    stop_asked.discard(task)
                finished(self, task, a, b, at)
            elif code == _STARTED:
                started(self, task, at)
            else:
                host.worker_publish(self, task, a, b)
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
        """Wake the thread wherever it sleeps (a spare wake-up only costs it a look)."""
        if self._in_loop:
            self._in_worker_loop(self._set_awake)
        elif self._wake.locked():  # only this (the pool's) thread releases it: no race
            self._wake.release()

    def _in_worker_loop(self, callback: Callable[[], None]) -> None:
        wloop = self._wloop
        if wloop is not None:
            try:
                wloop.call_soon_threadsafe(callback)
            except RuntimeError:  # the worker's loop is closed: its thread is ending
                pass

    def cancel(self, task: Task[Any]) -> CancelResult:
        try:
            self._inbox.remove(task)
        except ValueError:
            pass
        else:
            return CancelResult.REMOVED
        # Asked first, then looked at: a thread that took the task meanwhile either is
        # seen in its call, or sees the ask before the call and skips it.
        self._stop_asked.add(task)
        if self._sync_task is task and not inspect.iscoroutinefunction(task.fn):
            # Held, then looked at again: the thread takes no task until the end of this
            # loop iteration, so the retirement (made in this iteration) never abandons
            # one it took since the look, after this call returned.
            self._held = True
            self.host.loop.call_soon(self._let_go)
            if self._sync_task is task:
                return CancelResult.UNSTOPPABLE  # (a coroutine function returns at once: stoppable)
        self._in_worker_loop(self._cancel_asked)  # a coroutine (or done): cancelled if it runs
        return CancelResult.STOPPING

    def _let_go(self) -> None:
        self._held = False
        if self._sleeping:
            self._sleeping = False
            self._poke()

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
        self._killed = True
        self._in_worker_loop(self._cancel_asked)
        self._sleeping = False
        self._poke()

    def abandon(self) -> None:
        """Retire the worker: ``run`` returns now; the thread ends after its blocking call."""
        self._detached = True
        returned = [t for t in self._inbox if t is not _STOP]
        self._inbox.clear()
        self._inbox.append(_STOP)
        self._killed = True  # its coroutines are the pool's no more: cancelled after the call
        self._in_worker_loop(self._cancel_asked)
        self._sleeping = False
        self._poke()
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

    def _main(self) -> None:
        try:
            if self._init is None or self._initialize():
                self._serve()
            exit = WorkerExit(failed=False, reason="stopped")
        except BaseException as exc:  # a bug of ours, or the worker's loop stopped under a task
            exit = WorkerExit(failed=True, reason=f"thread died: {exc!r}")
        self._in_loop = False
        self._leaving = True  # runners the last loop turns may wake take no more work
        loop, self._wloop = self._wloop, None
        if loop is not None:
            try:
                try:
                    loop.run_until_complete(loop.shutdown_asyncgens())
                finally:
                    loop.close()
            except BaseException as exc:  # the end is reported all the same
                exit = WorkerExit(failed=True, reason=f"thread's loop did not close: {exc!r}")
        try:
            self.host.loop.call_soon_threadsafe(self._end, exit)
            if self._gone is not None:
                self.host.loop.call_soon_threadsafe(set_if_pending, self._gone)
        except RuntimeError:  # the pool's loop is closed: nobody is listening
            pass

    def _initialize(self) -> bool:
        """Run the pool's initializer on this thread (a coroutine on this thread's loop,
        which its tasks then share); tell the pool how it went. False: it failed."""
        spec = self.spec
        assert spec.initializer is not None
        assert self._init is not None
        failure: str | None = None
        try:
            result = spec.initializer(*spec.initargs)
            if inspect.isawaitable(result):
                self._wloop = new_event_loop()
                self._awake = asyncio.Event()
                self._wloop.run_until_complete(_awaited(result))
        except BaseException as exc:
            logging.getLogger(spec.init_logger).critical("Exception in initializer:", exc_info=True)
            failure = f"{type(exc).__name__}: {exc}"
        try:
            self.host.loop.call_soon_threadsafe(resolve, self._init, True, failure)
        except RuntimeError:  # the pool's loop is closed: nobody is listening
            pass
        return failure is None

    def _report(self, record: tuple[int, Any, Any, Any, float]) -> None:
        """Worker thread -> pool loop, batched: one wake-up per burst of reports."""
        self._outbox.append(record)
        if not self._flush_pending:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        self._flush_pending = True
        try:
            self.host.loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the pool's loop is closed: nobody is listening
            pass

    def _serve(self) -> None:
        """Run tasks from the inbox on this thread until told to stop."""
        ctx = TaskContext(self._publish, self.id)
        current.set(ctx)  # this thread's context: plain calls see it (runners get their own)
        inbox = self._inbox
        popleft = inbox.popleft
        post = self._outbox.append
        flush = self._schedule_flush
        stop_asked = self._stop_asked
        wake = self._wake
        clock = time.time
        while True:
            if self._held:  # the pool decides on a retirement (see cancel): take nothing
                self._sleep_held()
                continue
            try:
                task = popleft()
            except IndexError:
                self._sleeping = True
                if inbox or self._held:  # appended (or held) since our look: look again
                    self._sleeping = False
                else:
                    wake.acquire()
                continue
            if task is _STOP:
                return
            ctx.task_id = task.id
            post((_STARTED, task, None, None, clock()))
            if not self._flush_pending:
                flush()  # (may let the pool's thread run: it may cancel the task now)
            self._sync_task = task
            ok, value = _call(task, stop_asked)
            self._sync_task = None
            ctx.task_id = None
            if ok and value is not None and (type(value) is _Coroutine or hasattr(value, "__await__")):
                self._run_loop(task, value)
            else:
                post((_DONE, task, ok, value, clock()))
                if not self._flush_pending:
                    flush()
            del task, value  # keep no reference to a settled task or its result

    def _sleep_held(self) -> None:
        """Sleep until the pool lets go (``_let_go``), unless it already did."""
        self._sleeping = True
        if self._held:
            self._wake.acquire()
        else:  # let go since our look: no wake-up is coming
            self._sleeping = False

    def _run_loop(self, task: Task[Any], coro: Any) -> None:
        """Serve from this thread's event loop (made now if need be) until it goes idle."""
        loop = self._wloop
        if loop is None:
            loop = self._wloop = new_event_loop()
            self._awake = asyncio.Event()
        self._idle = 0
        self._n_runners = 1
        self._helpers = []
        self._turn += 1
        self._leaving = False
        self._in_loop = True
        try:
            loop.run_until_complete(self._serve_async(task, coro))
        finally:
            self._in_loop = False

    async def _serve_async(self, task: Task[Any], coro: Any) -> None:
        try:
            await self._runner(task, coro)
            if self._helpers:  # they end too: the loop went idle, or the worker stops
                await asyncio.gather(*self._helpers)
        finally:
            for r in self._helpers:
                r.cancel()

    def _start_helpers(self, turn: int) -> None:
        """In the loop, once it got control back: a coroutine waits, so start the other
        ``concurrency - 1`` runners (a burst of coroutines that never wait needs none)."""
        self._spawning = 0
        if turn != self._turn or self._leaving:
            return
        while self._n_runners < self.spec.concurrency:
            self._n_runners += 1
            self._helpers.append(asyncio.ensure_future(self._runner(None, None)))

    async def _runner(self, task: Any, coro: Any) -> None:
        """Run tasks from the inbox in the loop, one at a time (``concurrency`` runners)."""
        awake = self._awake
        assert awake is not None
        me = asyncio.current_task()
        assert me is not None
        ctx = TaskContext(self._publish, self.id)
        current.set(ctx)  # this runner's own context: each runner has its own task_id
        inbox = self._inbox
        report = self._report
        running = self._running
        cancelling = self._cancelling
        stop_asked = self._stop_asked
        n = self.spec.concurrency
        while True:
            if coro is None:
                if self._leaving:
                    return
                if not inbox or self._held:
                    if self._idle == self._n_runners - 1:  # nothing runs, nothing waits: leave the loop
                        self._leaving = True
                        awake.set()
                        return
                    awake.clear()
                    self._sleeping = True
                    if inbox and not self._held:  # appended since our look: no wake-up is coming
                        self._sleeping = False
                        continue
                    self._idle += 1
                    try:
                        await awake.wait()
                    finally:
                        self._idle -= 1
                    continue
                task = inbox.popleft()
                if task is _STOP:
                    inbox.appendleft(_STOP)  # leave it for the other runners and the thread
                    self._leaving = True
                    awake.set()
                    return
                ctx.task_id = task.id
                report((_STARTED, task, None, None, time.time()))
                self._sync_task = task
                ok, value = _call(task, stop_asked)
                if ok and value is not None and (type(value) is _Coroutine or hasattr(value, "__await__")):
                    coro = value
                self._sync_task = None
            if coro is not None:
                if self._killed or task in stop_asked:  # stopped before it could run
                    if type(coro) is _Coroutine:
                        coro.close()  # never started: no "never awaited" warning
                    ok, value = False, None
                else:
                    if self._n_runners < n and not self._spawning:
                        self._spawning = self._turn
                        asyncio.get_running_loop().call_soon(self._start_helpers, self._turn)
                    ctx.task_id = task.id
                    running[task] = me
                    carrier = task._trace
                    token = None if carrier is None else attach_trace(carrier)
                    try:
                        value = await coro
                        ok = True
                        if cancelling and task in cancelling:  # it finished all the same
                            me.uncancel()
                    except asyncio.CancelledError as exc:
                        if task in cancelling and me.uncancel() == 0:
                            ok, value = False, None  # we cancelled this task; the pool knows
                        elif me.cancelling():
                            raise  # the worker itself is being cancelled
                        else:  # the task raised CancelledError itself
                            ok, value = False, own_traceback(exc, _RUNNER_CODE)
                    except GeneratorExit:
                        raise  # this runner's coroutine is being closed
                    except BaseException as exc:  # Exception, or SystemExit/KeyboardInterrupt from the task
                        ok, value = False, own_traceback(exc, _RUNNER_CODE)
                    cancelling.discard(task)
                    del running[task]
                    if token is not None:
                        detach_trace(token)
                coro = None
            ctx.task_id = None
            # Decided before the report, so work the pool sends once it has the report
            # finds the thread plain again.
            leave = not inbox and self._idle == self._n_runners - 1
            if leave:
                self._leaving = True
                awake.set()
            report((_DONE, task, ok, value, time.time()))
            del task, value  # keep no reference to a settled task or its result
            if leave:
                return

    def _set_awake(self) -> None:
        if self._awake is not None:
            self._awake.set()

    def _cancel_asked(self) -> None:
        """In the worker's loop: cancel the runners of the coroutines the pool wants stopped."""
        for task, runner in list(self._running.items()):
            if (self._killed or task in self._stop_asked) and task not in self._cancelling:
                self._cancelling.add(task)
                runner.cancel()

    def _publish(self, topic: str, data: Any, task_id: int | None) -> None:
        self._report((_PUBLISH, topic, data, task_id, 0.0))


async def _awaited(awaitable: Any) -> None:
    await awaitable


def _call(task: Task[Any], stop_asked: set[Task[Any]]) -> tuple[bool, Any]:
    """Call ``task``'s function on this thread: ``(True, value)``, or ``(False, its own
    exception)`` (SystemExit, GeneratorExit... included: the task's failure), or
    ``(False, None)`` when it was cancelled as it was taken (it does not run)."""
    if stop_asked and task in stop_asked:
        return False, None
    carrier = task._trace
    if carrier is not None:
        return _call_traced(task, carrier)
    try:
        return True, task.fn(*task.args)
    except BaseException as exc:
        return False, own_traceback(exc, _CALL_CODE)


def _call_traced(task: Task[Any], carrier: dict[str, str]) -> tuple[bool, Any]:
    """:func:`_call` in the trace context of the task's submit span (taskpool.otel)."""
    token = attach_trace(carrier)
    try:
        return True, task.fn(*task.args)
    except BaseException as exc:
        return False, own_traceback(exc, _TRACED_CODE)
    finally:
        detach_trace(token)


_CALL_CODE = _call.__code__  # stripped from tasks' tracebacks
_TRACED_CODE = _call_traced.__code__
_RUNNER_CODE = ThreadWorker._runner.__code__
