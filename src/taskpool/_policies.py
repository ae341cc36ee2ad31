"""What a pool's intake and crash options decide: priorities, retries, withdrawing a
call that never started, workers started on demand, and a crash breaking the pool.

:class:`Policies` is a base of :class:`~taskpool._core.PoolCore` (the core owns each
task's life and calls these at its decision points)::

    add(priority=p)      a worker's window holds unstarted tasks of lower priority and no
                         worker has room: take the last of them back (preempt)
    run failed           matches retry_on, retries left: back to the head of its queue
                         (requeue_retry), once its worker let go of it; task.retried
    withdraw(task)       cancel only when the call is certain never to run
    pump()               start_workers="on_demand": start a worker per task waiting
                         beyond the idle and starting ones (grow)
    worker died          on_worker_crash="break": every task fails with PoolBroken
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ._errors import PoolBroken, PoolClosed, TaskCancelled, TaskTimeout, WorkerCrashed
from ._task import Retry, Task, describe_error
from ._types import PoolState, TaskEvent, TaskState, WorkerState

if TYPE_CHECKING:
    import anyio.abc

    from ._events import EventBus
    from ._log import Logger
    from ._options import PoolOptions
    from ._scheduler import Scheduler, Slot
    from ._supervisor import Supervisor
    from ._workers import Capabilities, Worker, WorkerExit

__all__ = ["DEFAULT_RETRY_ON", "NEVER_RETRIED", "Policies", "make_retry"]

_QUEUED = TaskState.QUEUED
_FAILED = TaskState.FAILED
_CANCELLED = TaskState.CANCELLED

#: What ``retries`` re-runs by default: a run lost to its worker, not to its own code.
DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (WorkerCrashed, TaskTimeout)
#: Failures no ``retry_on`` re-runs: the pool or the caller ended the task.
NEVER_RETRIED: tuple[type[BaseException], ...] = (TaskCancelled, PoolBroken, PoolClosed)


def make_retry(retries: int, retry_on: Any) -> Retry | None:
    """The retry budget of a task added with ``retries`` and ``retry_on`` (None for none).

    Raises:
        TypeError: ``retries`` is not an int, or ``retry_on`` is not an exception class
            or a tuple of them.
        ValueError: ``retries`` is negative.
    """
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be an int >= 0, got {type(retries).__name__}")
    if retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    if retry_on is None:
        on = DEFAULT_RETRY_ON
    elif isinstance(retry_on, type):
        on = (retry_on,)
    elif isinstance(retry_on, (tuple, list)):
        on = tuple(retry_on)
    else:
        raise TypeError(f"retry_on must be an exception class or a tuple of them, got {type(retry_on).__name__}")
    for cls in on:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(f"retry_on must hold exception classes, got {cls!r}")
    return Retry(retries, on) if retries else None


class Policies:
    """The option-driven decisions of a pool; the attributes below are the core's."""

    name: str
    options: PoolOptions
    events: EventBus
    log: Logger
    sched: Scheduler
    sup: Supervisor
    capabilities: Capabilities
    loop: asyncio.AbstractEventLoop
    _state: PoolState
    _tg: anyio.abc.TaskGroup | None
    _stop_event: asyncio.Event | None
    _broken: PoolBroken | None
    _withdrawing: dict[Task[Any], asyncio.Future[bool]]
    _unstarted: int  # slots never started (start_workers="on_demand")

    if TYPE_CHECKING:  # the core's and the lifecycle's (declared here for the checker only)

        def cancel_task(self, task: Task[Any], exc: BaseException) -> bool:
            """Cancel or time out ``task`` (``PoolCore.cancel_task``)."""
            ...

        def settle(self, task: Task[Any], state: TaskState, result: Any, exc: BaseException | None) -> None:
            """Give ``task`` its final state (``PoolCore.settle``)."""

        def pump(self) -> None:
            """Hand queued tasks to workers (``PoolCore.pump``)."""

        def schedule_check(self) -> None:
            """Check for drain soon (``PoolCore.schedule_check``)."""

        def check_thread(self) -> None:
            """Raise RuntimeError off the pool's loop thread (``Lifecycle.check_thread``)."""

    # --- priorities ----------------------------------------------------------------------

    def preempt(self, priority: int) -> None:
        """Make way for a task of ``priority``: take back the unstarted tasks of lower
        priority waiting in workers' windows (back to the head of their queues; a kind
        that answers later hands them back through ``task_returned``)."""
        sched = self.sched
        for slot, task in sched.preemptable(priority):
            worker = slot.worker
            if worker is not None and worker.reclaim(task):
                sched.give_back(slot, task)

    # --- retries -------------------------------------------------------------------------

    def retry_due(self, task: Task[Any], exc: BaseException) -> bool:
        """Whether ``task``'s failed run with ``exc`` is run again (and spend a retry)."""
        retry = task._retry
        if retry is None or retry.left <= 0 or retry.waiting is not None:
            return False
        if isinstance(exc, NEVER_RETRIED) and not isinstance(exc, TaskTimeout):
            return False
        if not isinstance(exc, retry.on) or self._state not in (PoolState.RUNNING, PoolState.CLOSING):
            return False
        retry.left -= 1
        return True

    def requeue_retry(self, task: Task[Any], exc: BaseException) -> None:
        """Run ``task`` again (its worker let go of it): back to the head of its queue."""
        retry = task._retry
        assert retry is not None
        retry.waiting = None
        retry.attempts += 1
        worker_id = task._worker_id
        if task._timer is not None:
            task._timer.cancel()
            task._timer = None
        self.sched.requeue(task)
        self.log.info("task retried", task_id=task.id, attempt=retry.attempts, error=describe_error(exc))
        events = self.events
        if "task.retried" in events.hot or events.wants("task.retried"):
            events.emit(
                TaskEvent(
                    topic="task.retried",
                    time=time.time(),
                    task_id=task.id,
                    state=_QUEUED,
                    meta=task.meta,
                    worker_id=worker_id,
                    error=describe_error(exc),
                    attempt=retry.attempts,
                )
            )
        if self._tg is not None:
            self.pump()

    def settle_failed(self, task: Task[Any], exc: BaseException) -> None:
        """Settle a run that failed with ``exc`` (released by its worker), or retry it."""
        if task._retry is not None and self.retry_due(task, exc):
            self.requeue_retry(task, exc)
        else:
            self.settle(task, _CANCELLED if isinstance(exc, TaskCancelled) else _FAILED, None, exc)

    # --- withdrawing a call that never started -------------------------------------------

    def withdraw(self, task: Task[Any]) -> bool:
        """Cancel ``task`` only if its call is certain never to run; True when it was.

        True for a task in the pool's queue, or waiting in a worker's window and taken
        back there at once. False for one that started, settled, or waits where it cannot
        be taken back now (a process worker's window answers later: see
        :meth:`withdraw_wait`). Call on the pool's loop.

        Raises:
            RuntimeError: called off the pool's event loop thread.
        """
        if task.done():
            return False
        self.check_thread()
        slot = task.slot
        if slot is None:
            return task._state is _QUEUED and self.cancel_task(task, TaskCancelled(f"task {task.id} was cancelled"))
        worker = slot.worker
        if worker is None or task._state is not _QUEUED:
            return False
        worker.sync_starts()
        if task._state is not _QUEUED:
            return False
        if worker.reclaim(task):
            self.sched.give_back(slot, task)
            return self.cancel_task(task, TaskCancelled(f"task {task.id} was cancelled"))
        return False

    async def withdraw_wait(self, task: Task[Any]) -> bool:
        """:meth:`withdraw`, waiting for a worker that answers later whether it had started
        the call (a process worker's window); True only when the call never runs.

        Raises:
            RuntimeError: called off the pool's event loop thread.
        """
        if self.withdraw(task):
            return True
        if task.done() or task._state is not _QUEUED or task.slot is None:
            return False
        fut = self._withdrawing.get(task)
        if fut is None:
            fut = self._withdrawing[task] = self.loop.create_future()
        return await asyncio.shield(fut)

    def withdrawn(self, task: Task[Any], returned: bool) -> None:
        """A worker answered for a task being withdrawn: handed back unstarted
        (``returned``: cancel it, it is in the queue now) or started / ended (too late)."""
        fut = self._withdrawing.pop(task, None)
        if fut is None or fut.done():
            return
        if returned and task._state is _QUEUED and task.slot is None:
            fut.set_result(self.cancel_task(task, TaskCancelled(f"task {task.id} was cancelled")))
        else:
            fut.set_result(False)

    def withdrawn_requeued(self) -> None:
        """A worker ended: tasks being withdrawn that it handed back are in the queue now."""
        for task in list(self._withdrawing):
            if task.slot is None or task.done():
                self.withdrawn(task, returned=True)

    # --- workers on demand ---------------------------------------------------------------

    def grow(self) -> None:
        """Start a worker in an unstarted slot for each task not started yet beyond the
        workers that are idle or coming up (``start_workers="on_demand"``): as
        ``concurrent.futures`` does, a task that finds no idle worker starts one."""
        sched = self.sched
        if self._tg is None or self._state not in (PoolState.RUNNING, PoolState.CLOSING):
            return
        # Tasks that will not start at once: queued ones, and those behind another task
        # in a worker's window (the first unstarted one of a worker running nothing is
        # about to start). Each worker coming up takes one.
        want = sched.n_queued
        unstarted: list[Slot] = []
        for slot in sched.slots:
            state = slot.state
            if state is WorkerState.UNSTARTED:
                unstarted.append(slot)
            elif state is WorkerState.STARTING or state is WorkerState.RESTARTING:
                want -= 1
            elif slot.inflight:
                waiting = sum(1 for t in slot.inflight if t._state is _QUEUED)
                want += waiting - (waiting == len(slot.inflight))
        if want <= 0:
            self._unstarted = len(unstarted)
            return
        for slot in unstarted[: max(0, want)]:
            slot.state = WorkerState.STARTING
            self.sup.start_one(self._tg, slot)
        self._unstarted = len(unstarted) - max(0, min(want, len(unstarted)))

    # --- a crash breaking the pool -------------------------------------------------------

    def crash_breaks(self, slot: Slot, worker: Worker, exit: WorkerExit) -> bool:
        """With ``on_worker_crash="break"``: an unclean death of ``worker`` (or a failed
        start) fails every task not settled with :class:`PoolBroken` and breaks the pool.
        True when it did."""
        if self.options.on_worker_crash != "break" or not exit.failed or exit.reason in ("retired", "recycled"):
            return False
        stopping = self._stop_event is not None and self._stop_event.is_set()
        if stopping or self._state not in (PoolState.RUNNING, PoolState.CLOSING):
            return False
        detail = f"exit code {exit.exitcode}" if exit.exitcode is not None else ""
        if exit.signal is not None:
            detail = f"signal {exit.signal}"
        broken = PoolBroken(
            f"pool {self.name!r} is broken: worker {slot.id} ended uncleanly ({exit.reason}"
            f"{', ' + detail if detail else ''}); on_worker_crash='break' fails every task"
        )
        broken.__cause__ = WorkerCrashed(
            f"worker {slot.id} ended: {exit.reason}", worker_id=slot.id, exitcode=exit.exitcode, signal=exit.signal
        )
        self.log.error("worker crash broke the pool", worker_id=slot.id, reason=exit.reason)
        self._broken = broken
        self._state = PoolState.BROKEN
        sched = self.sched
        for task in sched.active_tasks() + sched.queued_tasks():
            if not task.done():
                self.cancel_task(task, broken)
        sched.clear_queue()
        self.schedule_check()
        if self._stop_event is not None:
            self._stop_event.set()
        return True
