"""The pool's core: each task's life (intake -> dispatch -> settle -> drain) and the pool's.

The dispatch path, as this module runs it::

    add(fn, args)                                        pool's event loop
        |  Task(id, fn, args)  -- QueueFull / PoolClosed raised here, at the boundary
        v
    Scheduler.queue  ("queued": counts, rounds, records are plain sync bookkeeping)
        |  pump(): Scheduler.assignments() -> (slot, task) while a slot has room
        v
    Worker.send(task)  ("active")   one module per kind: inline | thread | process | ...
        |                           a worker holds up to `window` tasks, runs `concurrency`
        v
    worker runs fn(*args) ---- task_started(task, at) ----> RUNNING, timer, start callbacks
        |
        +--------------------- task_finished(task, ok, value, at) ---+
                                                                     v
                 settle(): Task state + waiters, counts, record, task.* event,
                           Hooks: race / then / catch; Supervisor.after_task; pump()
                                                                     v
                 drained? -> Hooks: all_settled, pool.drained, join() returns

Every transition goes through the scheduler first and only then through callbacks, so a
callback, a subscriber or a worker that fails can never leave the books inconsistent.
Workers' lives (start, restart, recycle, stop) belong to :mod:`taskpool._supervisor`;
the core implements the three interfaces the others call back through:
:class:`~taskpool._task.TaskOwner`, :class:`~taskpool._workers.WorkerHost` and
:class:`~taskpool._supervisor.SlotHost`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ._errors import PoolBroken, QueueFull, TaskCancelled, TaskTimeout, WorkerCrashed, as_task_failed
from ._events import EventBus
from ._hooks import Hooks
from ._lifecycle import Extra, Lifecycle
from ._log import Logger, get_logger
from ._options import PoolOptions, check_callable, check_timeout
from ._policies import Policies
from ._scheduler import Scheduler, Slot
from ._supervisor import Supervisor
from ._task import Retry, Task, describe_error
from ._types import (
    PoolEvent,
    PoolState,
    TaskEvent,
    TaskState,
    WorkerEvent,
    WorkerState,
)
from ._waiter import Waiter, Wakeup, run_wakeups
from ._workers import CancelResult, Capabilities, Worker, WorkerExit, WorkerSpec, backend
from ._workers._output import route_line

if TYPE_CHECKING:
    from ._recorder import Recorder
    from .otel import Instrumentation

__all__ = ["Extra", "PoolCore"]

_QUEUED = TaskState.QUEUED
_RUNNING = TaskState.RUNNING
_SUCCEEDED = TaskState.SUCCEEDED
_FAILED = TaskState.FAILED
_CANCELLED = TaskState.CANCELLED
_TOPIC = {_SUCCEEDED: "task.succeeded", _FAILED: "task.failed", _CANCELLED: "task.cancelled"}
_POOL_NEW = PoolState.NEW  # module constants: an enum attribute lookup costs more on hot paths
_POOL_RUNNING = PoolState.RUNNING


class PoolCore(Policies, Lifecycle):
    """Runs one pool: its tasks, its workers (through a Supervisor) and its lifetime.

    ``FunctionPool`` is its public face; persistent workers and services run on a core
    of their own (``role`` ``"persistent"`` / ``"service"``), numbering their workers
    from ``first_worker_id`` and also publishing worker events on ``worker_buses``.
    """

    def __init__(
        self,
        options: PoolOptions,
        *,
        role: str = "pool",
        first_worker_id: int = 0,
        worker_buses: tuple[EventBus, ...] = (),
        cancel_grace: float | None = None,
    ) -> None:
        self.options: PoolOptions = options
        self.name: str = options.name
        self.role: str = role
        self.backend: type[Worker] = backend(options.worker)
        self.capabilities: Capabilities = self.backend.capabilities
        caps = self.capabilities
        if options.max_memory_per_worker is not None and not caps.reports_memory:
            raise ValueError(
                f"max_memory_per_worker needs workers with memory of their own; worker={options.worker!r} "
                "shares the pool's memory (use worker='process')"
            )
        self.events: EventBus = EventBus(source=self.name)
        self.worker_buses: list[EventBus] = [self.events, *worker_buses]
        self.worker_listeners: list[Callable[[WorkerEvent], None]] = []  # told synchronously
        self.log: Logger = get_logger(pool=self.name)  # quiet until the app configures logging
        self.sched: Scheduler = Scheduler(keep_records=options.keep_records)
        #: Fed per task only when no records are kept to read (see _recorder); else None.
        self.recorder: Recorder | None = None
        self.tracer: Instrumentation | None = None  # spans for submit and run (taskpool.otel)
        for i in range(options.pool_size):
            self.sched.add_slot(
                Slot(
                    first_worker_id + i,
                    caps.window if options.prefetch else 1,
                    adaptive=caps.adaptive_window,
                    concurrency=options.concurrency,
                )
            )
        spec = WorkerSpec(
            pool_name=self.name,
            log_dir=options.log_dir,
            concurrency=options.concurrency,
            cancel_grace=cancel_grace,
            max_message_size=options.max_message_size,
            worker_output=options.worker_output,
            initializer=options.initializer,
            initargs=options.initargs,
            init_logger=options.init_logger,
            thread_name_prefix=options.thread_name_prefix,
            kind_options=options.kind_options,
        )
        self.sup: Supervisor = Supervisor(
            self,
            self.sched,
            self.backend,
            spec,
            restart=options.restart,
            max_tasks=options.max_tasks_per_worker,
            max_memory=options.max_memory_per_worker,
            log=self.log,
            name=self.name,
        )
        self.hooks: Hooks = Hooks(self, self.events, self.log)
        self.hooks.on_finished = self.schedule_check
        self._task_timeout = options.task_timeout  # read on every add
        self._max_queue = options.max_queue
        self._recycles = options.max_tasks_per_worker is not None or options.max_memory_per_worker is not None
        self.extras: list[Extra] = []
        self._extra_runs: list[Callable[[], Coroutine[Any, Any, None]]] = []  # services added before start
        self._next_extra_id = first_worker_id + options.pool_size
        self._ids = itertools.count(1)
        self._state = PoolState.NEW
        self._broken: PoolBroken | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self._loop_thread: int | None = None
        self._host_task: asyncio.Task[None] | None = None
        self._cleaning_up = False  # the workers ended; the kind lets go of what they shared
        self._tg: anyio.abc.TaskGroup | None = None
        self._stop_event: asyncio.Event | None = None
        self._join_waiters: list[asyncio.Future[None]] = []
        self.room_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._check_scheduled = False
        self._in_batch = False  # between a worker's batch_begin and batch_done
        self._wakeups: list[Wakeup] = []  # awaiters to resume at batch_done
        self._withdrawing: dict[Task[Any], asyncio.Future[bool]] = {}  # see withdraw_wait
        self._on_demand = options.start_workers == "on_demand"
        self._unstarted = options.pool_size if self._on_demand else 0

    # --- SlotHost: what the supervisor asks ---------------------------------------------------

    @property
    def state(self) -> PoolState:
        """The pool's :class:`PoolState`."""
        return self._state

    @property
    def stopping(self) -> bool:
        """Whether the workers are being stopped (closing has passed its drain)."""
        return self._stop_event is not None and self._stop_event.is_set()

    @property
    def has_queued(self) -> bool:
        """Whether tasks wait in the pool's queue."""
        return self.sched.n_queued > 0

    def worker_ready(self, slot: Slot) -> None:
        """The slot's new worker can take tasks: open the slot and hand it work."""
        self.sched.open_slot(slot, time.time())
        if self._tg is not None and self._state in (PoolState.RUNNING, PoolState.CLOSING):
            self.pump()

    def worker_ended(self, slot: Slot, worker: Worker, exit: WorkerExit) -> None:
        """Put the books right after a worker ended: fail what it ran (or run it again,
        per its retries), requeue the rest; or, with ``on_worker_crash="break"``, break
        the pool."""
        self.crash_breaks(slot, worker, exit)
        for task in self.sched.take_back(slot):
            if not task.done():
                retry = task._retry
                if retry is not None and retry.waiting is not None:
                    self.requeue_retry(task, retry.waiting)  # (a timed-out run, stopped now)
                    continue
                crash = WorkerCrashed(
                    f"worker {slot.id} died while running task {task.id}: {exit.reason}",
                    worker_id=slot.id,
                    exitcode=exit.exitcode,
                    signal=exit.signal,
                )
                self.settle_failed(task, crash)
        if self._withdrawing:
            self.withdrawn_requeued()
        slot.state = WorkerState.EXITED
        if exit.failed:
            self.log.warning(
                "worker exited", worker_id=slot.id, reason=exit.reason, exitcode=exit.exitcode, signal=exit.signal
            )
        self.emit_worker("worker.exited", worker, reason=exit.reason, exitcode=exit.exitcode, signal=exit.signal)
        self.pump()
        self.schedule_check()

    def slot_dead(self, slot: Slot, failures: list[str], why: str) -> None:
        """The slot will never have a worker again: with every slot dead the pool is broken.

        Its queued tasks then fail with :class:`PoolBroken` and the pool stops.
        """
        if all(s.dead for s in self.sched.slots) and self._state in (PoolState.RUNNING, PoolState.CLOSING):
            self._broken = PoolBroken(
                f"pool {self.name!r} is broken: no worker can be started any more ({why}); "
                f"last failures: {'; '.join(failures)}"
            )
            self._state = PoolState.BROKEN
            for task in self.sched.queued_tasks():
                self.settle(task, _FAILED, None, self._broken)
            self.schedule_check()
            if self._stop_event is not None:
                self._stop_event.set()
        elif self._unstarted:
            self.grow()  # its tasks need another slot's worker

    # --- intake --------------------------------------------------------------------------

    def add(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        meta: Any,
        timeout: float | None,
        priority: int = 0,
        retry: Retry | None = None,
    ) -> Task[Any]:
        """Add ``fn(*args)`` to the pool and return its :class:`Task`; never blocks.

        What ``FunctionPool.add_task`` does (arguments passed positionally: the hot path).

        Raises:
            TypeError: ``fn`` is not callable.
            ValueError: ``timeout`` is not a positive number.
            QueueFull: ``max_queue`` tasks are already waiting to start.
            PoolClosed: the pool is closing or closed.
            PoolBroken: the pool is broken (no worker can be started any more).
            RuntimeError: called from a thread other than the pool's event loop's.
        """
        if not callable(fn):  # mypy trusts the signature; callers may not
            check_callable("add_task()", fn)  # type: ignore[unreachable]
        timeout = self._task_timeout if timeout is None else check_timeout("timeout", timeout)
        state = self._state
        if state is not _POOL_RUNNING and state is not _POOL_NEW:
            self._check_intake(state)
        if self._loop_thread is not None and threading.get_ident() != self._loop_thread:
            self.check_thread()
        sched = self.sched
        max_queue = self._max_queue
        if max_queue is not None and sched.n_waiting >= max_queue and not self._room_after_sync():
            raise QueueFull(f"pool {self.name!r} has {sched.n_waiting} tasks waiting to start (max_queue={max_queue})")
        task: Task[Any] = Task(self, next(self._ids), fn, args, meta, timeout, time.time())
        if priority:
            if isinstance(priority, bool) or not isinstance(priority, int):
                raise TypeError(f"priority must be an int, got {type(priority).__name__}")
            task.priority = priority
        if retry is not None:
            task._retry = retry
        tracer = self.tracer
        if tracer is not None:
            tracer.task_added(task)  # before any worker can take it: it carries the trace context
        sched.add(task)
        events = self.events
        if "task.queued" in events.hot:
            events.emit(TaskEvent(topic="task.queued", time=task.queued_at, task_id=task.id, state=_QUEUED, meta=meta))
        if self._tg is not None:
            if sched.priorities_used:
                self.preempt(priority)
            if sched.free > 0:
                self.pump()
            if self._unstarted:
                self.grow()
        return task

    def _room_after_sync(self) -> bool:
        """Whether taking in starts not reported yet makes room under ``max_queue``."""
        self.sync_starts()
        return self.sched.n_waiting < self._max_queue  # type: ignore[operator]

    # --- TaskOwner ---------------------------------------------------------------------

    def cancel_task(self, task: Task[Any], exc: BaseException) -> bool:
        """Cancel or time out ``task`` (Task.cancel and timers land here)."""
        if task.done():
            return False
        self.check_thread()
        slot = task.slot
        retry = task._retry is not None and isinstance(exc, TaskTimeout) and self.retry_due(task, exc)
        if slot is not None and slot.worker is not None:
            if task._state is _QUEUED:
                slot.worker.sync_starts()  # a start not reported yet: it counts as started
            outcome = slot.worker.cancel(task)
            if outcome is CancelResult.REMOVED:
                self.sched.release(slot, task, unstarted=True)
            elif outcome is CancelResult.UNSTOPPABLE:
                self.sup.retire(slot, "task could not be stopped")
            if retry and task.slot is not None:
                # Run again once its worker let go of it (task_finished / worker_ended).
                task._retry.waiting = exc  # type: ignore[union-attr]
                return True
        if retry:
            self.requeue_retry(task, exc)
            return True
        self.settle(task, _CANCELLED if isinstance(exc, TaskCancelled) else _FAILED, None, exc)
        if self._tg is not None:
            self.pump()
        return True

    def run_callback(self, kind: str, cb: Callable[..., Any], args: tuple[Any, ...], task: Task[Any] | None) -> None:
        """Call a user callback through the hooks runner; it never raises into the caller."""
        self.hooks.run(kind, cb, args, task)

    def _on_timeout(self, task: Task[Any]) -> None:
        task._timer = None
        if not task.done():
            self.cancel_task(task, TaskTimeout(f"task {task.id} timed out after {task.timeout} s"))

    def cancel_all(self, exc: TaskCancelled | PoolBroken) -> None:
        """Settle every task not settled yet with ``exc``."""
        sched = self.sched
        for task in sched.active_tasks() + sched.queued_tasks():
            if not task.done():
                self.cancel_task(task, exc)
        sched.clear_queue()

    # --- WorkerHost: what workers report -------------------------------------------------

    def task_started(self, worker: Worker, task: Task[Any], at: float) -> None:
        """``worker`` began running ``task`` at ``at``: start its timer, run its start callbacks.

        A stale report (the task settled or moved to another worker meanwhile) is ignored.
        """
        slot = task.slot
        if task._state is not _QUEUED or slot is None or slot.worker is not worker:
            return  # settled while its start was on the way, or a stale report
        self.sched.started(task, worker.id, at)
        if self._withdrawing:
            self.withdrawn(task, returned=False)
        if task.timeout is not None:
            # Counted from the start in the worker, not from when the report arrived.
            delay = max(0.0, task.timeout - (time.time() - at))
            task._timer = self.loop.call_later(delay, self._on_timeout, task)
        if self.room_waiters:
            self.wake_room()
        cbs = task._start_callbacks
        if cbs is not None:
            task._start_callbacks = None
            for cb in cbs:
                self.hooks.run("start_callback", cb, (task,), task)
        events = self.events
        if "task.started" in events.hot:
            events.emit(
                TaskEvent(
                    topic="task.started", time=at, task_id=task.id, state=_RUNNING, meta=task.meta, worker_id=worker.id
                )
            )

    def start_wanted(self, task: Task[Any]) -> bool:
        """Whether ``task``'s start must be reported as it happens: for its start
        callbacks, its timeout (counted from the start), or ``task.started`` subscribers."""
        if task._start_callbacks is not None or task.timeout is not None or self._max_queue is not None:
            return True  # (max_queue: a start makes room for a waiting submit at once)
        events = self.events
        return "task.started" in events.hot

    def sync_starts(self) -> None:
        """Take in the starts workers have not reported yet (before status is read)."""
        for slot in self.sched.slots:
            if slot.worker is not None and slot.inflight:
                slot.worker.sync_starts()

    def task_finished(
        self, worker: Worker, task: Task[Any], ok: bool, value: Any, at: float, started: float = 0.0
    ) -> None:
        """``task`` ended on ``worker``: ``value`` is its result (``ok``) or its exception.

        ``started``: when it began, if that was not reported yet (0.0: it was, or it
        never began). Releases it from its slot, then settles it unless it settled
        already (a stale report from a worker it was taken from is ignored).
        """
        slot = task.slot
        if slot is not None and slot.worker is not worker:
            return  # a stale report: the task was handed to another worker since
        state = task._state
        if slot is None and state is _QUEUED:
            return  # a stale report: the task is back in the pool's queue (a retry)
        if started and slot is not None:
            if state is _QUEUED:
                events = self.events
                if task._start_callbacks is None and task.timeout is None and "task.started" not in events.hot:
                    self.sched.started(task, worker.id, started)  # nothing else to tell
                    if self.room_waiters:
                        self.wake_room()
                else:
                    self.task_started(worker, task, started)
                state = task._state
            elif task._started_at != started:
                task._started_at = started  # sync_starts had only a later call's start time
        pending = state is _QUEUED or state is _RUNNING
        if pending:
            task.finished_at = at  # the worker's clock: the run time is the call's own
        if slot is not None:
            sched = self.sched
            began = task._started_at
            if began is None:
                # It never ran (cancelled in the window, or refused before it began):
                # its budget returns, and it counts for neither recycling nor the window.
                sched.release(slot, task, unstarted=True)
            else:
                sched.release(slot, task)
                if slot.busy_ewma >= 0:  # an adaptive window
                    sched.observe(slot, at - began)
                if self._recycles:
                    self.sup.after_task(slot, worker)
                else:
                    slot.tasks_done += 1
        if self._withdrawing:
            self.withdrawn(task, returned=False)
        if pending:
            retry = task._retry
            if retry is not None and retry.waiting is not None:
                self.requeue_retry(task, retry.waiting)  # the timed-out run has ended
            elif ok:
                self.settle(task, _SUCCEEDED, value, None)
            else:
                if not isinstance(value, BaseException):
                    value = TaskCancelled(f"task {task.id} was stopped")
                elif not isinstance(value, Exception):
                    value = as_task_failed(value)
                if retry is None:
                    self.settle(task, _CANCELLED if isinstance(value, TaskCancelled) else _FAILED, None, value)
                else:
                    self.settle_failed(task, value)

    def task_returned(self, worker: Worker, task: Task[Any]) -> None:
        """``worker`` handed ``task`` back unstarted: it goes to the head of the queue."""
        slot = task.slot
        if slot is not None:
            self.sched.give_back(slot, task)
            if self._withdrawing:
                self.withdrawn(task, returned=True)

    def batch_begin(self) -> None:
        """A batch of worker reports begins (called from a loop callback, not a task):
        awaiters of tasks it settles resume at its end, in this loop iteration."""
        self._in_batch = True

    def batch_done(self) -> None:
        """A batch of worker reports was delivered: dispatch more work, check for drain,
        then resume the awaiters of what it settled."""
        self._in_batch = False
        self.pump()
        self.schedule_check()
        wakeups = self._wakeups
        if wakeups:
            self._wakeups = []
            loop = self.loop
            if asyncio.current_task(loop) is None:
                run_wakeups(loop, wakeups)
            else:  # inside a task: no other task may run here, so through the loop
                for fn, waiter, context in wakeups:
                    loop.call_soon(fn, waiter, context=context)

    def worker_publish(self, worker: Worker, topic: str, data: Any, task_id: int | None) -> None:
        """Publish a user event a task on ``worker`` sent (``taskpool.publish``) on the worker buses."""
        for bus in self.worker_buses:
            bus.publish(topic, data, task_id=task_id, worker_id=worker.id)

    def worker_log(self, worker: Worker, stream: str, line: str) -> None:
        """Route a line ``worker`` wrote to ``stream`` per ``worker_output`` (logger ``taskpool.worker``,
        ``worker.log`` events, or our own stdout/stderr)."""
        route_line(self.options.worker_output, self.log.child("worker"), self.worker_buses, worker.id, stream, line)

    # --- dispatch and settlement ---------------------------------------------------------

    def pump(self) -> None:
        """Hand queued tasks to workers with room; let idle workers take unstarted work."""
        sched = self.sched
        if sched.free > 0 and (sched.queue or sched.levels):
            for slot, task in sched.assignments(time.time()):
                assert slot.worker is not None
                slot.worker.send(task)
        if self._unstarted and sched.n_queued:
            self.grow()
        if not sched.queue and sched.free > 0 and self.capabilities.reclaims_unstarted:
            for src, task, dst in list(sched.steal_candidates()):
                if src.worker is not None and dst.worker is not None and src.worker.reclaim(task):
                    sched.move(task, src, dst)
                    dst.worker.send(task)

    def settle(self, task: Task[Any], state: TaskState, result: Any, exc: BaseException | None) -> None:
        """Give ``task`` its final state, then tell its awaiters, subscribers and hooks."""
        unstarted = task._started_at is None
        task._settle(state, result, exc)
        hooks = self.hooks
        first = self.sched.settled(task, keep_in_round=hooks.wants_rounds)
        rec = self.recorder
        if rec is not None:
            rec.settled(task, state)
        tracer = self.tracer
        if tracer is not None:
            tracer.task_settled(task, state, exc)
        if unstarted and self.room_waiters:
            self.wake_room()
        callbacks = task._callbacks
        if callbacks is not None:
            task._callbacks = None
            for cb in callbacks:
                if type(cb) is Waiter:
                    cb.resolve(self._wakeups if self._in_batch else None, self.loop)
                else:
                    hooks.run("done_callback", cb, (task,), task)
        events = self.events
        topic = _TOPIC[state]
        if topic in events.hot:
            events.emit(
                TaskEvent(
                    topic=topic,
                    time=task.finished_at or 0.0,
                    task_id=task.id,
                    state=state,
                    meta=task.meta,
                    worker_id=task._worker_id,
                    error=describe_error(exc),
                )
            )
        if hooks.per_task:
            hooks.settled(task, result if exc is None else exc, exc is None, first)
        if not self._check_scheduled:
            self.schedule_check()

    def schedule_check(self) -> None:
        """Check for drain once the current loop iteration ends (at most one check pending)."""
        # Drain is checked once per loop iteration, after a batch of settlements, so
        # all_settled never runs inside another hook and sees follow-up work they added.
        if not self._check_scheduled and self.loop is not None:
            self._check_scheduled = True
            self.loop.call_soon(self._check_drained)

    def _check_drained(self) -> None:
        self._check_scheduled = False
        sched = self.sched
        if not sched.drained:
            return
        tasks = sched.close_round()
        if tasks is not None:
            self.hooks.drained(tasks)
            if self.events.wants("pool.drained"):
                self.events.emit(
                    PoolEvent(
                        topic="pool.drained",
                        time=time.time(),
                        pool=self.name,
                        round=sched.round_no,
                        settled=sched.round_settled,
                    )
                )
        if sched.drained:
            waiters, self._join_waiters = self._join_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
