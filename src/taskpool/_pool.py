"""FunctionPool: schedules function calls onto a bounded set of workers.

The dispatch path (this module owns it; see docs/architecture.md for the long form)::

    add_task(fn, *args)                                  pool's event loop
        |  Task(id, fn, args)  -- QueueFull / PoolClosed raised here, at the boundary
        v
    Scheduler.queue  (deque; counts, rounds, records: plain sync bookkeeping)
        |  _pump(): Scheduler.assignments() -> (slot, task) while a slot has room
        v
    Worker.send(task)         one module per kind: inline | thread | process
        |                     a worker may hold `window` tasks, running one at a time
        v
    worker runs fn(*args)  ---- task_started(task) ----> counts, timeout timer, task.started
        |
        +--------------------- task_finished(task, ok, value) ---+
                                                                 v
                    _settle(): Task state + waiters, counts, record, task.* event,
                               race / then / catch hooks; _pump() again
                                                                 v
                    drained? -> all_settled hooks, pool.drained, join() returns

Every transition goes through the scheduler first and only then through callbacks, so a
callback, a subscriber or a worker that fails can never leave the books inconsistent.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import inspect
import itertools
import math
import os
import threading
import time
import traceback
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import anyio
import anyio.abc
import structlog

from . import _context
from ._errors import (
    PoolBroken,
    PoolClosed,
    QueueFull,
    RemoteTraceback,
    TaskCancelled,
    TaskFailed,
    TaskTimeout,
    WorkerCrashed,
)
from ._events import EventBus
from ._restart import Backoff, RestartPolicy
from ._scheduler import FIELDS, Scheduler, Slot
from ._task import Task, describe_error
from ._types import (
    HookErrorEvent,
    PoolEvent,
    PoolSnapshot,
    StatusType,
    TaskEvent,
    TaskRecord,
    TaskState,
    WorkerEvent,
    WorkerLogEvent,
    WorkerSnapshot,
)
from ._workers import CancelResult, Worker, WorkerExit, WorkerSpec, backend

if TYPE_CHECKING:
    from ._persistent import _Starter
    from ._service import Service

__all__ = ["FunctionPool"]

T = TypeVar("T")
R = TypeVar("R")
PoolT = TypeVar("PoolT", bound="FunctionPool")

_QUEUED = TaskState.QUEUED
_RUNNING = TaskState.RUNNING
_SUCCEEDED = TaskState.SUCCEEDED
_FAILED = TaskState.FAILED
_CANCELLED = TaskState.CANCELLED
_TOPIC = {
    _SUCCEEDED: "task.succeeded",
    _FAILED: "task.failed",
    _CANCELLED: "task.cancelled",
}
_pool_numbers = itertools.count(1)
#: Attempts a worker gets to come up while the pool starts, whatever the restart policy.
START_ATTEMPTS = 3
# Set inside the pool's async hooks: work they add while the pool drains is accepted.
_in_hook: contextvars.ContextVar[object] = contextvars.ContextVar("taskpool_in_hook", default=None)


def default_pool_size() -> int:
    """``$TASKPOOL_WORKERS`` if set, else the number of CPUs this process may use.

    Raises:
        ValueError: ``TASKPOOL_WORKERS`` is set but is not an integer >= 1.
    """
    env = os.environ.get("TASKPOOL_WORKERS")
    if env is not None and env.strip():
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"TASKPOOL_WORKERS must be an integer >= 1, got {env!r}")
        return n
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _check_timeout(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0 or None, got {value!r}")
    return float(value)


def _check_count(name: str, value: int | None, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum} or None, got {value!r}")
    return value


class FunctionPool:
    """A pool of workers running function calls, with hooks, status and an event bus.

    Args:
        pool_size: how many workers; ``None`` means ``$TASKPOOL_WORKERS`` if set, else
            the CPUs this process may use.
        worker: ``"process"`` (fresh interpreters), ``"thread"`` (threads with their own
            event loops) or ``"inline"`` (the pool's own event loop).
        max_queue: bound on queued (not yet running) tasks; ``None`` for no bound.
        task_timeout: default per-task timeout in seconds, counted from the task's start.
        max_tasks_per_worker: replace a worker after it ran this many tasks.
        max_memory_per_worker: replace a process worker whose RSS exceeds this (bytes).
        restart: how a crashed worker is replaced (default ``RestartPolicy()``:
            on failure, 0.1 s delay doubling up to 30 s, no limit).
        log_dir: also write each worker's stdout/stderr to a file of its own there.
        keep_records: completed :class:`TaskRecord` s kept for ``status(..., RAW)``.
        name: the pool's name in logs, events and snapshots.
        concurrency: how many tasks each worker runs at once (default 1). Above 1,
            coroutine tasks interleave on the worker's event loop (I/O-bound work);
            a plain function still holds its worker's loop while it runs.

    Raises:
        ValueError: an argument is out of range (the message names it and what is accepted).
        TypeError: an argument has the wrong type.
    """

    def __init__(
        self,
        pool_size: int | None = None,
        *,
        worker: Literal["process", "thread", "inline"] | str = "process",
        max_queue: int | None = None,
        task_timeout: float | None = None,
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
        restart: RestartPolicy | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        keep_records: int = 10_000,
        name: str | None = None,
        concurrency: int = 1,
    ) -> None:
        if pool_size is None:
            pool_size = default_pool_size()
        elif isinstance(pool_size, bool) or not isinstance(pool_size, int):
            raise TypeError(f"pool_size must be an int >= 1 or None, got {type(pool_size).__name__}")
        elif pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1 or None, got {pool_size!r}")
        self._backend = backend(worker)
        self._max_queue = _check_count("max_queue", max_queue)
        self._task_timeout = _check_timeout("task_timeout", task_timeout)
        self._max_tasks = _check_count("max_tasks_per_worker", max_tasks_per_worker)
        self._max_memory = _check_count("max_memory_per_worker", max_memory_per_worker)
        if self._max_memory is not None and worker != "process":
            raise ValueError(
                "max_memory_per_worker applies to worker='process' only "
                f"(threads and inline tasks share the pool's memory); got worker={worker!r}"
            )
        if restart is None:
            restart = RestartPolicy()
        elif not isinstance(restart, RestartPolicy):
            raise TypeError(f"restart must be a RestartPolicy or None, got {type(restart).__name__}")
        if isinstance(keep_records, bool) or not isinstance(keep_records, int) or keep_records < 0:
            raise ValueError(f"keep_records must be an int >= 0, got {keep_records!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty str or None, got {name!r}")
        if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(f"log_dir must be a path or None, got {type(log_dir).__name__}")

        self.name: str = name or f"pool-{next(_pool_numbers)}"
        self.pool_size: int = pool_size
        self.worker_kind: str = worker
        self.restart: RestartPolicy = restart
        self.log_dir: str | None = os.fspath(log_dir) if log_dir is not None else None
        self.events: EventBus = EventBus(source=self.name)
        self._log = structlog.get_logger("taskpool").bind(pool=self.name)
        self.concurrency: int = _check_count("concurrency", concurrency) or 1
        self._spec = WorkerSpec(pool_name=self.name, log_dir=self.log_dir, concurrency=self.concurrency)
        self._sched = Scheduler(max_queue=self._max_queue, keep_records=keep_records)
        # Set by persistent workers and services, which run on a private pool of their
        # own: unique worker ids, a role for dashboards, worker events on the parent's bus.
        self._id_base = 0
        self._extra_ids = 0
        self._role = "pool"
        self._worker_buses: list[EventBus] = [self.events]
        for i in range(pool_size):
            self._sched.add_slot(
                Slot(i, self._backend.window, adaptive=self._backend.adaptive_window, concurrency=self.concurrency)
            )
        self._ids = itertools.count(1)
        self._state = "new"
        self._broken: PoolBroken | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self._loop_thread: int | None = None
        self._host_task: asyncio.Task[None] | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._stop_event: asyncio.Event | None = None
        self._join_waiters: list[asyncio.Future[None]] = []
        self._room_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._check_scheduled = False
        self._hook_depth = 0
        self._hooks_running = 0  # async hooks started, not finished: join/aclose wait for them
        self._then: list[Callable[..., Any]] = []
        self._catch: list[Callable[..., Any]] = []
        self._race: list[Callable[..., Any]] = []
        self._all_settled: list[Callable[..., Any]] = []
        self._pending_hooks: list[tuple[str, Awaitable[Any], int | None]] = []
        self._retired: list[Worker] = []
        self._closed_future: asyncio.Future[None] | None = None
        self._extras: list[Any] = []  # persistent workers and services tied to this pool

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``"new"``, ``"running"``, ``"closing"``, ``"closed"`` or ``"broken"``."""
        return self._state

    async def start(self: PoolT) -> PoolT:
        """Start the workers; return once every worker has answered (is ready).

        Raises:
            RuntimeError: the pool was already started.
            PoolBroken: the workers could not be started within the restart policy.
        """
        if self._state != "new":
            raise RuntimeError(f"pool {self.name!r} was already started (state {self._state})")
        self._state = "running"
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop_event = asyncio.Event()
        self._closed_future = self.loop.create_future()
        ready: asyncio.Future[None] = self.loop.create_future()
        # The host task owns the pool's task group, so start() and aclose() may be called
        # from different tasks; aclose() awaits it: nothing the pool runs is left behind.
        self._host_task = self.loop.create_task(self._host(ready), name=f"taskpool-{self.name}")
        try:
            await asyncio.shield(ready)
        except BaseException:
            if not ready.done() or ready.cancelled():
                # We were cancelled while starting: tear everything down before re-raising.
                await self._abort_start()
            else:
                await self._wait_host()
            raise
        return self

    async def _abort_start(self) -> None:
        self._state = "closing"
        self._cancel_all(TaskCancelled("pool start was cancelled"))
        assert self._stop_event is not None
        self._stop_event.set()
        with anyio.CancelScope(shield=True):
            await self._wait_host()

    async def _wait_host(self) -> None:
        if self._host_task is not None:
            try:
                await asyncio.shield(self._host_task)
            except BaseException:
                if not self._host_task.done():
                    raise
        self._finish_close()

    async def _host(self, ready: asyncio.Future[None]) -> None:
        assert self._stop_event is not None
        started = False
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    async with anyio.create_task_group() as starting:
                        for slot in self._sched.slots:
                            starting.start_soon(self._start_slot, tg, slot)
                except BaseException as exc:
                    if not ready.done():
                        err = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc
                        ready.set_exception(err)
                    raise
                if not ready.done():
                    ready.set_result(None)
                started = True
                for extra in self._extras:
                    if getattr(extra, "state", None) == "new" and hasattr(extra, "run"):
                        tg.start_soon(extra.run)  # services added before start
                for kind, coro, task_id in self._pending_hooks:
                    self._hooks_running += 1
                    tg.start_soon(self._await_hook, kind, coro, task_id)
                self._pending_hooks.clear()
                self._pump()
                self._schedule_check()
                await self._stop_event.wait()
                # Stop sequence (aclose has drained or cancelled the tasks by now).
                for slot in self._sched.slots:
                    self._sched.close_slot(slot)
                    if slot.worker is not None:
                        slot.worker.stop()
                for extra in list(self._extras):
                    tg.start_soon(extra.aclose)
        except BaseException as exc:
            if not ready.done():
                err = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc
                if isinstance(err, (Exception, asyncio.CancelledError)):
                    ready.set_exception(err)
                else:
                    ready.set_exception(PoolBroken(f"pool host failed: {err!r}"))
            self._cancel_all(PoolBroken(f"pool {self.name!r} stopped unexpectedly: {exc!r}"))
            if not isinstance(exc, (asyncio.CancelledError, Exception)):
                raise
            if isinstance(exc, Exception) and started:  # a failed start is raised by start()
                self._log.error("pool host failed", exc_info=exc)
        finally:
            self._tg = None

    async def _start_slot(self, tg: anyio.abc.TaskGroup, slot: Slot) -> None:
        await tg.start(self._supervise, slot)

    async def _supervise(self, slot: Slot, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Keep a worker in ``slot``: start it, replace it when it ends, per the policy."""
        backoff = Backoff(self.restart)
        reported = False
        while True:
            worker = self._backend(self, slot.id, self._spec)
            slot.worker = worker
            slot.worker_tasks = 0
            # With recycling, a worker is handed no more tasks than it may run.
            slot.budget = self._max_tasks
            slot.state = "starting"

            def on_ready(worker: Worker = worker) -> None:
                nonlocal reported
                backoff.up(time.monotonic())
                self._sched.open_slot(slot)
                self._emit_worker("worker.started", worker, attempt=backoff.attempt)
                if not reported:
                    reported = True
                    task_status.started()
                elif self._state in ("running", "closing"):
                    self._pump()

            try:
                exit = await worker.run(on_ready)
            except Exception as exc:  # a worker that failed to start or broke
                exit = WorkerExit(failed=True, reason=f"{type(exc).__name__}: {exc}")
            if slot.state == "recycling" and not exit.failed:
                exit = WorkerExit(failed=False, reason="recycled")
            self._worker_ended(slot, worker, exit)
            stopping = self._state not in ("running",) or self._stop_event_set()
            # While closing drains, a retired or recycled worker is replaced (work may still
            # be queued); once the workers are being stopped, a new one would never be.
            replace = exit.reason in ("retired", "recycled") and self._state == "closing"
            if stopping and not (replace and not self._stop_event_set()):
                slot.state = "exited"
                return
            if exit.reason in ("retired", "recycled"):
                slot.restarts += 1
                self._emit_worker("worker.restarted", worker, reason=exit.reason, attempt=slot.restarts)
                continue
            delay = backoff.down(time.monotonic(), failed=exit.failed, reason=exit.reason)
            if not reported and backoff.failures >= START_ATTEMPTS:
                # start() must answer: a worker that cannot come up at all is not retried
                # for ever while the caller waits (after start, the policy's limit rules).
                delay = None
            if delay is None:
                # The slot will never have a worker again (limit spent, or mode "never").
                slot.state = "exited"
                slot.dead = True
                if backoff.exhausted:
                    why = f"restart limit {self.restart.limit} spent"
                elif not reported and backoff.failures >= START_ATTEMPTS:
                    why = f"failed {backoff.failures} times before answering its handshake"
                else:
                    why = f"restart mode {self.restart.mode!r}"
                self._log.error("worker will not be restarted", worker_id=slot.id, why=why, reason=exit.reason)
                self._check_broken(backoff.last_failures or [exit.reason], why)
                if not reported:  # start() fails: this worker never came up
                    raise PoolBroken(
                        f"pool {self.name!r}: worker {slot.id} could not be started ({why}); "
                        f"last failures: {'; '.join(backoff.last_failures or [exit.reason])}"
                    )
                return
            slot.state = "restarting"
            self._log.warning(
                "worker restarting", worker_id=slot.id, reason=exit.reason, delay=delay, attempt=backoff.attempt
            )
            if delay:
                await anyio.sleep(delay)
            if self._state != "running" and not (self._state == "closing" and self._sched.n_queued):
                slot.state = "exited"
                if not reported:
                    task_status.started()
                return
            slot.restarts += 1
            self._emit_worker("worker.restarted", worker, reason=exit.reason, attempt=backoff.attempt, delay=delay)

    def _stop_event_set(self) -> bool:
        return self._stop_event is not None and self._stop_event.is_set()

    def _worker_ended(self, slot: Slot, worker: Worker, exit: WorkerExit) -> None:
        """Put the books right after a worker ended: fail what it ran, requeue the rest."""
        running = self._sched.take_back(slot)
        slot.state = "exited"
        for task in running:
            if not task.done():
                self._settle(
                    task,
                    _FAILED,
                    None,
                    WorkerCrashed(
                        f"worker {slot.id} died while running task {task.id}: {exit.reason}",
                        worker_id=slot.id,
                        exitcode=exit.exitcode,
                        signal=exit.signal,
                    ),
                )
        if exit.failed:
            self._log.warning(
                "worker exited", worker_id=slot.id, reason=exit.reason, exitcode=exit.exitcode, signal=exit.signal
            )
        self._emit_worker("worker.exited", worker, reason=exit.reason, exitcode=exit.exitcode, signal=exit.signal)
        self._pump()
        self._schedule_check()

    def _check_broken(self, failures: list[str], why: str) -> None:
        if all(s.dead for s in self._sched.slots) and self._state in ("running", "closing"):
            self._broken = PoolBroken(
                f"pool {self.name!r} is broken: no worker can be started any more "
                f"({why}); last failures: {'; '.join(failures)}"
            )
            self._state = "broken"
            for task in self._sched.queued_tasks():
                self._settle(task, _FAILED, None, self._broken)
            self._schedule_check()
            if self._stop_event is not None:
                self._stop_event.set()

    def _retire(self, slot: Slot, reason: str) -> None:
        """Replace the slot's worker (its work cannot be stopped, or it is recycled)."""
        worker = slot.worker
        if worker is None:
            return
        self._sched.close_slot(slot)
        self._log.info("worker retired", worker_id=slot.id, reason=reason)
        if reason == "recycled":
            slot.state = "recycling"  # its clean stop is a recycle: _supervise replaces it
            worker.stop()
        else:
            self._retired.append(worker)
            worker.abandon()

    async def aclose(self, *, cancel: bool = False, grace: float | None = None) -> None:
        """Close the pool: stop intake, settle every task, stop the workers.

        With ``cancel=False`` it waits for every task added to settle (at most ``grace``
        seconds when given, then cancels the rest); with ``cancel=True`` queued and
        running tasks are cancelled at once. Hooks still running are awaited. Safe to
        call more than once, and on a pool never started.

        Raises:
            ValueError: ``grace`` is negative.
        """
        if grace is not None and (not math.isfinite(grace) or grace < 0):
            raise ValueError(f"grace must be a finite number of seconds >= 0 or None, got {grace!r}")
        if self._state == "new":
            self._state = "closing"
            self._cancel_all(TaskCancelled("pool closed before it started"))
            # Persistent workers tied to the pool run on their own even before it starts.
            with anyio.CancelScope(shield=True):
                for extra in list(self._extras):
                    await extra.aclose()
            self._finish_close()
            return
        if self._state == "closed":
            return
        if self._state == "running":
            self._state = "closing"
        try:
            if cancel:
                self._cancel_all(TaskCancelled("pool closed with cancel=True"))
            else:
                with anyio.move_on_after(grace):
                    await self._drained()
                if not self._sched.drained:
                    self._cancel_all(TaskCancelled(f"pool closed: grace of {grace} s ran out"))
        except BaseException:
            # Our caller is cancelled: close hard, but still close.
            self._cancel_all(TaskCancelled("pool closed: the closing code was cancelled"))
            with anyio.CancelScope(shield=True):
                await self._stop_and_wait(grace)
            raise
        with anyio.CancelScope(shield=True):
            await self._stop_and_wait(grace)

    async def _stop_and_wait(self, grace: float | None) -> None:
        if self._stop_event is not None:
            self._stop_event.set()
        if self._host_task is not None and not self._host_task.done():
            limit = 10.0 if grace is None else max(grace, 0.5)
            with anyio.move_on_after(limit) as scope:
                await asyncio.shield(self._host_task)
            if scope.cancelled_caught:
                # Workers ignored the stop request: kill them and wait again.
                for slot in self._sched.slots:
                    if slot.worker is not None:
                        slot.worker.kill()
                await asyncio.shield(self._host_task)
        self._join_retired(grace)
        self._finish_close()

    def _join_retired(self, grace: float | None) -> None:
        for w in self._retired:
            thread = getattr(w, "thread", None)
            if thread is not None and thread.is_alive():
                thread.join(0.0 if grace is None else grace)
                if thread.is_alive():
                    self._log.warning(
                        "retired worker thread still running a blocking call",
                        worker_id=w.id,
                        thread=thread.name,
                    )
        self._retired = [w for w in self._retired if getattr(w, "thread", None) and w.thread.is_alive()]  # type: ignore[attr-defined]

    def _finish_close(self) -> None:
        if self._state == "closed":
            return
        self._cancel_all(TaskCancelled("pool closed"))
        self._state = "closed"
        if self.events.wants("pool.closed"):
            self.events.emit(PoolEvent(topic="pool.closed", time=time.time(), pool=self.name))
        self.events.close()
        for fut in self._join_waiters:
            if not fut.done():
                fut.set_result(None)
        self._join_waiters.clear()
        while self._room_waiters:
            fut = self._room_waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        if self._closed_future is not None and not self._closed_future.done():
            self._closed_future.set_result(None)

    async def __aenter__(self: PoolT) -> PoolT:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            with anyio.CancelScope(shield=True):
                await self.aclose(cancel=True)
        else:
            await self.aclose()

    async def join(self) -> None:
        """Wait until the pool is drained: nothing queued, nothing running.

        Raises:
            RuntimeError: the pool has queued tasks but was never started (would wait forever).
        """
        if self._state == "new" and not self._sched.drained:
            raise RuntimeError(f"pool {self.name!r} has queued tasks but was not started")
        await self._drained()

    async def _drained(self) -> None:
        # An async hook still running may add follow-up work: not drained until it ends; and
        # a pending drain check is waited for, so the round's all_settled hooks and
        # pool.drained have run by the time join() returns.
        own = 1 if _in_hook.get() is self else 0  # join() awaited by an async hook: not itself
        while (
            not self._sched.drained or self._hooks_running > own or self._check_scheduled
        ) and self._state != "closed":
            fut = asyncio.get_running_loop().create_future()
            self._join_waiters.append(fut)
            try:
                await fut
            finally:
                if not fut.done():
                    fut.cancel()

    # --- adding work ---------------------------------------------------------------------

    def _check_thread(self) -> None:
        if self._loop_thread is not None and threading.get_ident() != self._loop_thread:
            raise RuntimeError(f"pool {self.name!r} must be used from the thread running its event loop")

    # Overloads, not one union: with `Callable[..., Awaitable[T]] | Callable[..., T]` mypy
    # infers T = Never for a coroutine function and rejects the call.
    @overload
    def add_task(
        self, fn: Callable[..., Awaitable[T]], /, *args: Any, meta: Any = None, timeout: float | None = None
    ) -> Task[T]: ...
    @overload
    def add_task(
        self, fn: Callable[..., T], /, *args: Any, meta: Any = None, timeout: float | None = None
    ) -> Task[T]: ...

    def add_task(
        self,
        fn: Callable[..., Awaitable[T]] | Callable[..., T],
        /,
        *args: Any,
        meta: Any = None,
        timeout: float | None = None,
    ) -> Task[T]:
        """Add ``fn(*args)`` to the pool and return its :class:`Task`; never blocks.

        ``fn`` may be a coroutine function or a plain function; pass keyword arguments
        with ``functools.partial``. ``timeout`` (seconds, counted from the task's start)
        overrides the pool's ``task_timeout``.

        Raises:
            TypeError: ``fn`` is not callable.
            ValueError: ``timeout`` is not a positive number.
            QueueFull: ``max_queue`` tasks are already queued.
            PoolClosed: the pool is closing or closed.
            PoolBroken: the pool is broken (no worker can be started any more).
            RuntimeError: called from a thread other than the pool's event loop's.
        """
        if not callable(fn):
            raise TypeError(f"add_task() needs a callable, got {type(fn).__name__}")
        timeout = self._task_timeout if timeout is None else _check_timeout("timeout", timeout)
        state = self._state
        if state not in ("running", "new"):
            self._check_intake(state)
        if self._loop_thread is not None and threading.get_ident() != self._loop_thread:
            self._check_thread()
        sched = self._sched
        if self._max_queue is not None and sched.n_queued >= self._max_queue:
            raise QueueFull(f"pool {self.name!r} has {sched.n_queued} tasks queued (max_queue={self._max_queue})")
        task: Task[T] = Task(self, next(self._ids), fn, args, meta, timeout, time.time())
        sched.add(task)
        events = self.events
        if events._subs and events.wants("task.queued"):
            events.emit(TaskEvent(topic="task.queued", time=task.queued_at, task_id=task.id, state=_QUEUED, meta=meta))
        if sched.free > 0 and self._tg is not None:
            self._pump()
        return task

    def _check_intake(self, state: str) -> None:
        if state == "broken":
            assert self._broken is not None
            raise self._broken
        if state == "closing" and (self._hook_depth or _in_hook.get() is self or self._in_own_task()):
            return  # follow-up work from the pool's own hooks and tasks while it drains
        raise PoolClosed(f"pool {self.name!r} is {state}; no more tasks can be added")

    def _in_own_task(self) -> bool:
        ctx = _context.current.get()
        return ctx is not None and ctx.owner is self

    @overload
    async def submit(
        self, fn: Callable[..., Awaitable[T]], /, *args: Any, meta: Any = None, timeout: float | None = None
    ) -> Task[T]: ...
    @overload
    async def submit(
        self, fn: Callable[..., T], /, *args: Any, meta: Any = None, timeout: float | None = None
    ) -> Task[T]: ...

    async def submit(
        self,
        fn: Callable[..., Awaitable[T]] | Callable[..., T],
        /,
        *args: Any,
        meta: Any = None,
        timeout: float | None = None,
    ) -> Task[T]:
        """Like :meth:`add_task`, but wait for room in the queue instead of raising ``QueueFull``.

        Waiters get room in the order they asked; cancelling the wait adds nothing.

        Raises:
            TypeError, ValueError, PoolClosed, PoolBroken: as :meth:`add_task`.
        """
        while True:
            if not self._room_waiters or self._max_queue is None:
                try:
                    return self.add_task(fn, *args, meta=meta, timeout=timeout)
                except QueueFull:
                    pass
            fut = asyncio.get_running_loop().create_future()
            self._room_waiters.append(fut)
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    self._wake_room()  # we were given room but leave: pass it on
                else:
                    try:
                        self._room_waiters.remove(fut)
                    except ValueError:
                        pass
                raise
            if self._state == "closed":
                self._check_intake("closed")
            try:
                return self.add_task(fn, *args, meta=meta, timeout=timeout)
            except QueueFull:
                continue
            finally:
                if self._room_waiters and (self._max_queue is None or self._sched.n_queued < self._max_queue):
                    self._wake_room()

    def _wake_room(self) -> None:
        while self._room_waiters:
            fut = self._room_waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def map(
        self,
        fn: Callable[[Any], Awaitable[R]] | Callable[[Any], R],
        iterable: Iterable[Any] | AsyncIterable[Any],
        /,
        *,
        ordered: bool = True,
        window: int | None = None,
    ) -> AsyncIterator[R]:
        """Run ``fn(item)`` for each item, yielding results in input order (or as they finish).

        The input (sync or async iterable) is consumed lazily, with at most ``window``
        tasks in flight (default: twice the pool size). A failure raises from the
        iterator as soon as it happens (in ordered mode too, ahead of earlier items still
        running) and cancels the tasks still in flight; so does closing the iterator
        early (use ``contextlib.aclosing`` when you may break out of the loop).

        Raises:
            TypeError: ``fn`` is not callable or ``iterable`` is not iterable.
            ValueError: ``window`` < 1.
        """
        if not callable(fn):
            raise TypeError(f"map() needs a callable, got {type(fn).__name__}")
        if not isinstance(iterable, (Iterable, AsyncIterable)):
            raise TypeError(f"map() needs an iterable or async iterable, got {type(iterable).__name__}")
        window = _check_count("window", window) or 2 * self.pool_size
        return self._map(fn, iterable, ordered, window)

    async def _map(
        self,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any] | AsyncIterable[Any],
        ordered: bool,
        window: int,
    ) -> AsyncIterator[Any]:
        inflight: collections.deque[Task[Any]] = collections.deque()
        ready: collections.deque[Task[Any]] = collections.deque()  # settled, not yet yielded
        failed: list[Task[Any]] = []  # the first task that failed (either mode fails fast)
        waiter: list[asyncio.Future[None] | None] = [None]

        def on_done(t: Task[Any]) -> None:
            if t.exception() is not None and not failed:
                failed.append(t)
            if not ordered:
                ready.append(t)
            w = waiter[0]
            if w is not None and not w.done():
                w.set_result(None)

        async def wait_for_news() -> None:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiter[0] = fut
            try:
                await fut
            finally:
                waiter[0] = None

        if isinstance(iterable, AsyncIterable):
            aiter_ = aiter(iterable)
            it = None
        else:
            it = iter(iterable)
            aiter_ = None
        exhausted = False
        try:
            while True:
                while not exhausted and len(inflight) < window and not failed:
                    try:
                        item = next(it) if it is not None else await anext(aiter_)  # type: ignore[arg-type]
                    except (StopIteration, StopAsyncIteration):
                        exhausted = True
                        break
                    task = await self.submit(fn, item)
                    inflight.append(task)
                    task.add_done_callback(on_done)
                if failed:
                    # Any failure ends the map at once, even behind unfinished earlier items.
                    inflight.remove(failed[0])
                    failed[0].result()
                if not inflight:
                    return
                if ordered:
                    head = inflight[0]
                    while not head.done() and not failed:
                        await wait_for_news()
                    if failed:
                        continue
                    inflight.popleft()
                    yield head.result()
                else:
                    while not ready:
                        await wait_for_news()
                    done = ready.popleft()
                    if done in inflight:
                        inflight.remove(done)
                        yield done.result()
        finally:
            for t in inflight:
                t.cancel()

    # --- hooks ---------------------------------------------------------------------------

    def _add_hook(self, hooks: list[Callable[..., Any]], cb: Callable[..., Any], name: str) -> None:
        if not callable(cb):
            raise TypeError(f"{name}() needs a callable, got {type(cb).__name__}")
        hooks.append(cb)

    def then(self: PoolT, cb: Callable[[Any, Task[Any]], Any]) -> PoolT:
        """Call ``cb(result, task)`` for every task that succeeds; returns the pool.

        Raises:
            TypeError: ``cb`` is not callable.
        """
        self._add_hook(self._then, cb, "then")
        return self

    def catch(self: PoolT, cb: Callable[[BaseException, Task[Any]], Any]) -> PoolT:
        """Call ``cb(exception, task)`` for every task that fails or is cancelled; returns the pool.

        Raises:
            TypeError: ``cb`` is not callable.
        """
        self._add_hook(self._catch, cb, "catch")
        return self

    def race(self: PoolT, cb: Callable[[Any, Task[Any]], Any]) -> PoolT:
        """Call ``cb(result_or_exception, task)`` for the first task to settle in each round.

        A round runs from the first task added to an idle pool until it drains again.

        Raises:
            TypeError: ``cb`` is not callable.
        """
        self._add_hook(self._race, cb, "race")
        return self

    def all_settled(self: PoolT, cb: Callable[[list[Task[Any]]], Any]) -> PoolT:
        """Call ``cb(tasks)`` each time the pool drains, with the round's tasks in settling order.

        The list holds the tasks settled since the hook was added (tasks are only
        remembered for a round while an ``all_settled`` hook exists).

        Raises:
            TypeError: ``cb`` is not callable.
        """
        self._add_hook(self._all_settled, cb, "all_settled")
        return self

    def _run_callback(self, kind: str, cb: Callable[..., Any], args: tuple[Any, ...], task: Task[Any] | None) -> None:
        """Call a hook; never let it break the pool. Async hooks run in the pool's task group."""
        self._hook_depth += 1
        try:
            ret = cb(*args)
        except Exception as exc:
            self._hook_error(kind, exc, task)
            return
        finally:
            self._hook_depth -= 1
        if inspect.isawaitable(ret):
            task_id = task.id if task is not None else None
            if self._tg is not None:
                self._hooks_running += 1
                self._tg.start_soon(self._await_hook, kind, ret, task_id)
            elif self._state == "new":
                self._pending_hooks.append((kind, ret, task_id))
            else:
                if inspect.iscoroutine(ret):
                    ret.close()
                self._hook_error(kind, RuntimeError(f"async {kind} could not run: pool {self._state}"), task)

    async def _await_hook(self, kind: str, awaitable: Awaitable[Any], task_id: int | None) -> None:
        _in_hook.set(self)
        try:
            await awaitable
        except Exception as exc:
            self._hook_error(kind, exc, None, task_id)
        finally:
            self._hooks_running -= 1
            self._schedule_check()

    def _hook_error(self, kind: str, exc: BaseException, task: Task[Any] | None, task_id: int | None = None) -> None:
        if task is not None:
            task_id = task.id
        self._log.error("hook raised", hook=kind, task_id=task_id, exc_info=exc)
        if self.events.wants("pool.hook_error"):
            self.events.emit(
                HookErrorEvent(
                    topic="pool.hook_error",
                    time=time.time(),
                    hook=kind,
                    error="".join(traceback.format_exception_only(type(exc), exc)).strip(),
                    task_id=task_id,
                )
            )

    # --- the WorkerHost side -------------------------------------------------------------

    def task_started(self, worker: Worker, task: Task[Any]) -> None:
        """A worker began ``task`` (WorkerHost)."""
        if task._state is not _QUEUED:
            return  # cancelled while it was on its way
        now = time.time()
        self._sched.started(task, worker.id, now)
        if task.timeout is not None:
            task._timer = self.loop.call_later(task.timeout, self._on_timeout, task)
        if self._room_waiters:
            self._wake_room()
        events = self.events
        if events._subs and events.wants("task.started"):
            events.emit(
                TaskEvent(
                    topic="task.started", time=now, task_id=task.id, state=_RUNNING, meta=task.meta, worker_id=worker.id
                )
            )

    def task_finished(self, worker: Worker, task: Task[Any], ok: bool, value: Any) -> None:
        """A worker finished ``task`` (WorkerHost)."""
        slot = task.wslot
        if slot is not None:
            self._sched.release(slot, task)
            slot.tasks_done += 1
            slot.worker_tasks += 1
            if slot.worker is worker and slot.state != "recycling":
                if self._max_tasks is not None and slot.worker_tasks >= self._max_tasks:
                    self._retire(slot, "recycled")
                elif self._max_memory is not None:
                    rss = worker.memory()  # one /proc read, only when a limit is set
                    if rss is not None and rss > self._max_memory:
                        self._log.info(
                            "worker over its memory limit", worker_id=slot.id, rss=rss, limit=self._max_memory
                        )
                        self._retire(slot, "recycled")
        if slot is not None and task.started_at is not None:
            self._sched.observe(slot, time.time() - task.started_at)
        if task._state is _QUEUED or task._state is _RUNNING:
            if ok:
                self._settle(task, _SUCCEEDED, value, None)
            else:
                if not isinstance(value, BaseException):
                    value = TaskCancelled(f"task {task.id} was stopped")
                elif not isinstance(value, Exception):
                    value = _as_task_failed(value)
                self._settle(task, _CANCELLED if isinstance(value, TaskCancelled) else _FAILED, None, value)

    def task_returned(self, worker: Worker, task: Task[Any]) -> None:
        """A worker handed ``task`` back unstarted (WorkerHost)."""
        slot = task.wslot
        if slot is not None:
            self._sched.release(slot, task, unstarted=True)
        self._sched.requeue(task)

    def batch_done(self) -> None:
        """A batch of worker reports was delivered (WorkerHost)."""
        self._pump()
        self._schedule_check()

    def worker_publish(self, worker: Worker, topic: str, data: Any, task_id: int | None) -> None:
        """A task called ``taskpool.publish`` (WorkerHost)."""
        for bus in self._worker_buses:
            bus.publish(topic, data, task_id=task_id, worker_id=worker.id)

    def worker_log(self, worker: Worker, stream: str, line: str) -> None:
        """A worker wrote a line of output (WorkerHost)."""
        log = self._log.warning if stream == "stderr" else self._log.info
        log("worker output", worker_id=worker.id, stream=stream, line=line)
        for bus in self._worker_buses:
            if bus.wants("worker.log"):
                bus.emit(
                    WorkerLogEvent(topic="worker.log", time=time.time(), worker_id=worker.id, stream=stream, line=line)  # type: ignore[arg-type]
                )

    # --- dispatch and settlement ---------------------------------------------------------

    def _pump(self) -> None:
        """Hand queued tasks to workers with room."""
        sched = self._sched
        if sched.free > 0 and sched.queue:
            for slot, task in sched.assignments():
                assert slot.worker is not None
                slot.worker.send(task)
        if not sched.queue and sched.free > 0:
            for src, task, dst in list(sched.steal_candidates()):
                if src.worker is not None and dst.worker is not None and src.worker.reclaim(task):
                    sched.move(task, src, dst)
                    dst.worker.send(task)

    def _settle(self, task: Task[Any], state: TaskState, result: Any, exc: BaseException | None) -> None:
        previous = task._state
        task._settle(state, result, exc, time.time())
        sched = self._sched
        first = sched.settled(task, previous)
        if not self._all_settled:
            sched.round_tasks.clear()  # remember a round's tasks only for all_settled hooks
        if previous is _QUEUED and self._room_waiters:
            self._wake_room()
        callbacks = task._callbacks
        if callbacks is not None:
            task._callbacks = None
            for cb in callbacks:
                if isinstance(cb, asyncio.Future):
                    if not cb.done():
                        if cb.get_loop() is self.loop:
                            cb.set_result(None)
                        else:
                            cb.get_loop().call_soon_threadsafe(_resolve, cb)
                else:
                    self._run_callback("done_callback", cb, (task,), task)
        events = self.events
        if events._subs:
            topic = _TOPIC[state]
            if events.wants(topic):
                events.emit(
                    TaskEvent(
                        topic=topic,
                        time=task.finished_at or 0.0,
                        task_id=task.id,
                        state=state,
                        meta=task.meta,
                        worker_id=task.worker_id,
                        error=describe_error(exc),
                    )
                )
        outcome = result if exc is None else exc
        if first and self._race:
            for cb in self._race:
                self._run_callback("race", cb, (outcome, task), task)
        hooks = self._then if exc is None else self._catch
        for cb in hooks:
            self._run_callback("then" if exc is None else "catch", cb, (outcome, task), task)
        self._schedule_check()

    def _schedule_check(self) -> None:
        # Drain is checked once per loop iteration, after a batch of settlements, so
        # all_settled never runs inside another hook and sees follow-up work they added.
        if not self._check_scheduled and self.loop is not None:
            self._check_scheduled = True
            self.loop.call_soon(self._check_drained)

    def _check_drained(self) -> None:
        self._check_scheduled = False
        sched = self._sched
        if not sched.drained:
            return
        if sched.round_open:
            tasks = sched.close_round()
            assert tasks is not None
            settled = sched.round_settled
            for cb in self._all_settled:
                self._run_callback("all_settled", cb, (tasks,), None)
            if self.events.wants("pool.drained"):
                self.events.emit(
                    PoolEvent(
                        topic="pool.drained", time=time.time(), pool=self.name, round=sched.round_no, settled=settled
                    )
                )
        if sched.drained:
            waiters, self._join_waiters = self._join_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _cancel_task(self, task: Task[Any], exc: BaseException) -> bool:
        """Cancel or time out ``task`` (Task.cancel and timers land here)."""
        if task.done():
            return False
        self._check_thread()
        slot = task.wslot
        if slot is not None and slot.worker is not None:
            outcome = slot.worker.cancel(task)
            if outcome is CancelResult.REMOVED:
                self._sched.release(slot, task, unstarted=True)
            elif outcome is CancelResult.UNSTOPPABLE:
                self._retire(slot, "task could not be stopped")
        self._settle(task, _CANCELLED if isinstance(exc, TaskCancelled) else _FAILED, None, exc)
        if self._tg is not None:
            self._pump()
        return True

    def _on_timeout(self, task: Task[Any]) -> None:
        task._timer = None
        if not task.done():
            self._cancel_task(task, TaskTimeout(f"task {task.id} timed out after {task.timeout} s"))

    def _cancel_all(self, exc: TaskCancelled | PoolBroken) -> None:
        sched = self._sched
        for task in sched.running_tasks() + sched.queued_tasks():
            if not task.done():
                self._cancel_task(task, exc)
        sched.queue.clear()

    # --- status --------------------------------------------------------------------------

    @overload  # "*" is also a str: the dict overload must win, as in typeshed's own overlaps
    def status(  # type: ignore[overload-overlap]
        self, field: Literal["*"] = ..., kind: Literal[StatusType.COUNT] = ...
    ) -> dict[str, int]: ...
    @overload
    def status(self, field: str, kind: Literal[StatusType.COUNT] = ...) -> int: ...
    @overload
    def status(self, field: str, kind: Literal[StatusType.PERCENT]) -> float: ...
    @overload
    def status(self, field: str, kind: Literal[StatusType.RAW]) -> list[TaskRecord]: ...
    @overload
    def status(self, field: str = ..., kind: StatusType | str = ...) -> Any: ...

    def status(self, field: str = "*", kind: StatusType | str = StatusType.COUNT) -> Any:
        """Counts, percentages or records of the pool's tasks.

        ``field`` is one of ``"queued"``, ``"active"``, ``"completed"`` (succeeded +
        failed + cancelled), ``"succeeded"``, ``"failed"``, ``"cancelled"``,
        ``"remaining"`` (queued + active), ``"started"``, ``"total"``, or ``"*"`` for a
        ``dict`` of all of them. ``COUNT`` gives an ``int`` (O(1), cumulative over the
        pool's life), ``PERCENT`` a ``float`` in 0-100 of ``total`` (0.0 when nothing was
        added), ``RAW`` a ``list[TaskRecord]`` (completed ones: the last ``keep_records``).

        Raises:
            ValueError: unknown ``field`` or ``kind``.
        """
        try:
            kind = StatusType(kind)
        except ValueError:
            raise ValueError(
                f"unknown status kind {kind!r}; accepted: {', '.join(k.value for k in StatusType)}"
            ) from None
        if field == "*":
            return {f: self.status(f, kind) for f in FIELDS}
        sched = self._sched
        if kind is StatusType.COUNT:
            return sched.count(field)
        if kind is StatusType.PERCENT:
            n = sched.count(field)
            return 100.0 * n / sched.n_total if sched.n_total else 0.0
        sched.count(field)  # validates the field
        return self._raw(field)

    def _raw(self, field: str) -> list[TaskRecord]:
        sched = self._sched
        done = list(sched.records)
        if field in ("succeeded", "failed", "cancelled"):
            state = TaskState(field)
            return [r for r in done if r.state is state]
        queued = [t.record for t in sched.queued_tasks()]
        active = [t.record for t in sched.running_tasks()]
        return {
            "completed": done,
            "queued": queued,
            "active": active,
            "remaining": queued + active,
            "started": [r for r in done if r.started_at is not None] + active,
            "total": done + active + queued,
        }[field]

    def has_available_worker(self) -> bool:
        """True when a task added now would start at once (an idle worker, nothing queued)."""
        sched = self._sched
        if self._state != "running" or sched.n_queued:
            return False  # a pool not started runs nothing at once
        return any(s.accepting and not s.inflight for s in sched.slots)

    has_available_thread = has_available_worker

    def snapshot(self) -> PoolSnapshot:
        """A :class:`PoolSnapshot` for dashboards (``msgspec.json.encode`` works on it)."""
        workers = []
        for slot in self._sched.slots:
            w = slot.worker
            cur = slot.current()
            workers.append(
                WorkerSnapshot(
                    id=slot.id,
                    kind=self.worker_kind,
                    pid=w.pid if w is not None else None,
                    thread_name=w.thread_name if w is not None else None,
                    state=slot.state if not slot.dead else "dead",
                    tasks_done=slot.tasks_done,
                    restarts=slot.restarts,
                    current_task=cur.id if cur is not None else None,
                    role=self._role,
                    name=self.name if self._role != "pool" else None,
                )
            )
        for extra in self._extras:
            workers.extend(extra.snapshot_workers())
        return PoolSnapshot(
            name=self.name,
            kind=self.worker_kind,
            pool_size=self.pool_size,
            state=self._state,
            time=time.time(),
            counts=self.status(),
            queue_depth=self._sched.n_queued,
            workers=workers,
        )

    # --- persistent workers ----------------------------------------------------------------

    def import_persistent_worker(
        self,
        module: str | ModuleType,
        *,
        worker: str = "process",
        timeout: float | None = None,
        restart: RestartPolicy | None = None,
    ) -> _Starter[Any]:
        """Like :func:`taskpool.import_persistent_worker`, tied to this pool's life.

        The worker does not count toward ``pool_size``; it shows in :meth:`snapshot`,
        publishes its ``worker.*`` events on this pool's bus, and is terminated when the
        pool closes.

        Raises:
            PoolClosed: the pool is closing or closed.
            TypeError, ValueError: as :func:`taskpool.import_persistent_worker`.
        """
        from ._persistent import PersistentWorker, _Starter

        if self._state not in ("new", "running"):
            raise PoolClosed(f"pool {self.name!r} is {self._state}")
        return _Starter(PersistentWorker(module, worker=worker, timeout=timeout, restart=restart, parent=self))

    def keep_alive(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        name: str,
        instances: int = 1,
        restart: RestartPolicy | None = None,
        worker: str = "process",
        grace: float = 5.0,
    ) -> Service:
        """Run ``fn(*args)`` in ``instances`` dedicated workers and keep it running.

        Each instance is run again per ``restart`` (default
        ``RestartPolicy(mode="always")``) whenever it returns or its worker dies, until
        ``await service.stop()`` or the pool closes. The service's workers do not count
        toward ``pool_size``; they show in :meth:`snapshot`, and ``service.*`` events are
        published on this pool's bus.

        Raises:
            TypeError: ``fn`` is not callable, or ``restart`` is not a RestartPolicy.
            ValueError: ``name`` is empty or taken, ``instances`` < 1, bad ``worker``
                or ``grace``.
            PoolClosed: the pool is closing or closed.
        """
        from ._service import Service

        if not callable(fn):
            raise TypeError(f"keep_alive() needs a callable, got {type(fn).__name__}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"keep_alive() name must be a non-empty str, got {name!r}")
        if any(isinstance(e, Service) and e.name == name for e in self._extras):
            raise ValueError(f"keep_alive() name {name!r} is already used by a service of this pool")
        instances = _check_count("instances", instances) or 1
        if restart is None:
            restart = RestartPolicy(mode="always")
        elif not isinstance(restart, RestartPolicy):
            raise TypeError(f"restart must be a RestartPolicy or None, got {type(restart).__name__}")
        if not math.isfinite(grace) or grace < 0:
            raise ValueError(f"grace must be a finite number of seconds >= 0, got {grace!r}")
        if self._state not in ("new", "running"):
            raise PoolClosed(f"pool {self.name!r} is {self._state}")
        service = Service(self, fn, args, name=name, instances=instances, restart=restart, worker=worker, grace=grace)
        self._extras.append(service)
        if self._tg is not None:
            self._tg.start_soon(service.run)
        return service

    def _next_worker_id(self, count: int) -> int:
        """Reserve ``count`` worker ids beyond the pool's own (for persistent workers, services)."""
        base = self._id_base + self.pool_size + self._extra_ids
        self._extra_ids += count
        return base

    def _rebase(self, base: int) -> None:
        """Number this (private) pool's workers from ``base``; before start only."""
        self._id_base = base
        for slot in self._sched.slots:
            slot.id = base + slot.id

    # --- events --------------------------------------------------------------------------

    def _emit_worker(self, topic: str, worker: Worker, **fields: Any) -> None:
        for bus in self._worker_buses:
            if bus.wants(topic):
                bus.emit(
                    WorkerEvent(
                        topic=topic,
                        time=time.time(),
                        worker_id=worker.id,
                        worker_kind=worker.kind,
                        pid=worker.pid,
                        role=self._role,
                        **fields,
                    )
                )

    def __repr__(self) -> str:
        s = self._sched
        return (
            f"<FunctionPool {self.name!r} {self.worker_kind}x{self.pool_size} {self._state} "
            f"queued={s.n_queued} active={s.n_active} completed={s.n_completed}>"
        )


def _as_task_failed(exc: BaseException) -> TaskFailed:
    """A task's SystemExit, KeyboardInterrupt or own CancelledError, made safe to re-raise.

    Re-raising those in the awaiting code would stop the program or look like the
    awaiter itself being cancelled; the process worker does the same (see _wire).
    """
    tb = "".join(traceback.format_exception(exc))
    failed = TaskFailed(type(exc).__qualname__, str(exc), tb)
    failed.__cause__ = RemoteTraceback(tb)
    return failed


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def partial(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> functools.partial[T]:
    """``functools.partial``, re-exported for passing keyword arguments to tasks."""
    return functools.partial(fn, *args, **kwargs)
