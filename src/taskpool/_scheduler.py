"""The pool's bookkeeping: queue, worker slots, counts, records, rounds and busy time.

Plain synchronous code with no event loop, no clock and no I/O: the core calls it and
acts on what it returns (handing tasks to workers, running hooks). That keeps every
rule testable without a single worker, and lets the core re-run it after any failure
or cancellation to put the books right.

Where a task is, and how it counts::

    add() ─► queue ──assignments()──► slot.inflight ──started()──► running ──settled()──► done
             "queued"   ▲               "active"  │               "active"   (release(): the
                        └──── give_back() ◄───────┘                          worker let it go)
                         (handed back unstarted, or reclaimed)

Invariant, after every call: ``total == queued + active + completed``.

Priorities: tasks of priority 0 (nearly all) wait in ``queue``, a plain deque; the others
in a deque per priority in ``levels``, created on first use. Tasks are taken highest
priority first, FIFO within one; a task handed back goes to the head of its own level.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from . import _gc
from ._busy import BusyMeter
from ._task import describe_error
from ._types import TaskRecord, TaskState, WorkerState

if TYPE_CHECKING:
    from ._task import Task
    from ._workers._base import Worker

__all__ = ["FIELDS", "Scheduler", "Slot"]

FIELDS = (
    "queued",
    "active",
    "completed",
    "succeeded",
    "failed",
    "cancelled",
    "remaining",
    "started",
    "total",
)

#: A call running longer than this (seconds, averaged) gets no prefetched call behind it.
LONG_CALL = 0.002
_QUEUED = TaskState.QUEUED
_RUNNING = TaskState.RUNNING
_SUCCEEDED = TaskState.SUCCEEDED
_FAILED = TaskState.FAILED
_IDLE = WorkerState.IDLE
_BUSY = WorkerState.BUSY


class Slot:
    """One place for a worker in the pool: keeps its id across restarts.

    ``inflight`` holds the tasks handed to the current worker and not yet reported
    back, started or not; ``window`` bounds it.
    """

    __slots__ = (
        "accepting",
        "budget",
        "busy",
        "busy_ewma",
        "id",
        "inflight",
        "max_window",
        "min_window",
        "restarts",
        "state",
        "tasks_done",
        "window",
        "worker",
        "worker_tasks",
    )

    def __init__(self, slot_id: int, window: int, *, adaptive: bool = False, concurrency: int = 1) -> None:
        self.id: int = slot_id
        # A worker runs up to `concurrency` tasks at once, plus window - 1 prefetched.
        # An adaptive slot starts without prefetch and opens up to max_window while its
        # calls are short (see Scheduler.observe): prefetching only pays when the round
        # trip is a large part of a call, and a call queued behind a long one just waits.
        self.min_window: int = concurrency
        self.max_window: int = window + concurrency - 1
        self.window: int = concurrency if adaptive else self.max_window
        self.busy_ewma: float = 0.0 if adaptive else -1.0  # -1: a fixed window
        self.worker: Worker | None = None
        self.inflight: list[Task[Any]] = []
        self.accepting: bool = False
        self.state: WorkerState = WorkerState.STARTING
        self.restarts: int = 0
        self.tasks_done: int = 0  # over the slot's life
        self.worker_tasks: int = 0  # by the current worker (for recycling)
        self.budget: int | None = None  # tasks the current worker may still be handed
        self.busy: BusyMeter = BusyMeter(concurrency)

    @property
    def dead(self) -> bool:
        """The slot will never have a worker again."""
        return self.state is WorkerState.DEAD

    def current(self) -> Task[Any] | None:
        """The (first) task the worker is running, if any."""
        for t in self.inflight:
            if t._state is _RUNNING:
                return t
        return None

    def utilisation(self, now: float) -> float:
        """Busy share of the last 10 s (0-1)."""
        running = [t._started_at for t in self.inflight if t._state is _RUNNING and t._started_at is not None]
        return self.busy.utilisation(now, running)


def _task_id(task: Task[Any]) -> int:
    return task.id


def _room(slot: Slot) -> int:
    """Tasks the slot can still take (a window shrunk under its load has none, never fewer)."""
    return max(0, slot.window - len(slot.inflight))


class Scheduler:
    """Counts, queue and slots of one pool."""

    def __init__(self, *, keep_records: int) -> None:
        self.queue: collections.deque[Task[Any]] = collections.deque()  # priority 0
        _gc.watch(self.queue)  # a long queue keeps the cyclic GC off its tasks (see _gc)
        #: The other priorities' queues, and those priorities from the highest down.
        self.levels: dict[int, collections.deque[Task[Any]]] = {}
        self.level_order: list[int] = []
        self.priorities_used: bool = False  # a task with a priority other than 0 was added
        self.slots: list[Slot] = []
        self.free: int = 0  # sum over accepting slots of _room(slot)
        self.n_total: int = 0
        self.n_queued: int = 0
        self.n_active: int = 0
        self.n_running: int = 0  # active and started
        self.n_started: int = 0
        self.n_succeeded: int = 0
        self.n_failed: int = 0
        self.n_cancelled: int = 0
        # The last keep_records settled tasks, as plain tuples: a TaskRecord each is
        # built only when asked for (records), not once per task.
        self._done: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=keep_records)
        self.keep_records: int = keep_records
        self.round_no: int = 0
        self.round_open: bool = False
        self.round_tasks: list[Task[Any]] = []
        self.round_settled: int = 0  # tasks settled in the open round (kept even without the list)
        self.race_done: bool = False

    # --- counts --------------------------------------------------------------------------

    @property
    def n_completed(self) -> int:
        """Tasks settled so far: succeeded, failed or cancelled."""
        return self.n_succeeded + self.n_failed + self.n_cancelled

    def count(self, field: str) -> int:
        """The cumulative count of ``field`` (one of :data:`FIELDS`), in O(1).

        Raises:
            ValueError: unknown field.
        """
        if field == "queued":
            return self.n_queued
        if field == "active":
            return self.n_active
        if field == "completed":
            return self.n_completed
        if field == "succeeded":
            return self.n_succeeded
        if field == "failed":
            return self.n_failed
        if field == "cancelled":
            return self.n_cancelled
        if field == "remaining":
            return self.n_queued + self.n_active
        if field == "started":
            return self.n_started
        if field == "total":
            return self.n_total
        raise ValueError(f"unknown status field {field!r}; accepted: {', '.join(FIELDS)} or '*'")

    @property
    def n_waiting(self) -> int:
        """Tasks not started yet, wherever they wait: the pool's queue or a worker's window."""
        return self.n_queued + self.n_active - self.n_running

    @property
    def drained(self) -> bool:
        """Nothing queued and nothing held by a worker."""
        return self.n_queued == 0 and self.n_active == 0

    # --- slots ---------------------------------------------------------------------------

    def add_slot(self, slot: Slot) -> None:
        """Add a slot (not accepting work until :meth:`open_slot`)."""
        self.slots.append(slot)

    def open_slot(self, slot: Slot, now: float | None = None) -> None:
        """The slot's worker is ready for work."""
        if not slot.accepting:
            slot.accepting = True
            slot.state = _BUSY if slot.inflight else _IDLE
            self.free += _room(slot)
            if now is not None:
                slot.busy.up_since = now

    def close_slot(self, slot: Slot) -> None:
        """Send no more work to the slot's current worker."""
        if slot.accepting:
            slot.accepting = False
            self.free -= _room(slot)

    def observe(self, slot: Slot, duration: float) -> None:
        """Adapt an adaptive slot's window to how long its calls run (seconds)."""
        if slot.busy_ewma < 0:
            return
        slot.busy_ewma = ewma = 0.7 * slot.busy_ewma + 0.3 * duration
        want = slot.max_window if ewma < LONG_CALL else slot.min_window
        if want != slot.window:
            before = _room(slot)
            slot.window = want
            if slot.accepting:
                self.free += _room(slot) - before

    def release(self, slot: Slot, task: Task[Any], *, unstarted: bool = False) -> bool:
        """The slot's worker is done with ``task`` (reported back, or never will be).

        ``unstarted``: it was taken back before it ran (the slot's budget returns).
        Returns False when the slot did not hold it.
        """
        try:
            slot.inflight.remove(task)
        except ValueError:
            return False
        task.slot = None
        if slot.accepting and len(slot.inflight) < slot.window:
            self.free += 1  # a shrunk window may still be over-full: no room came back
        if unstarted and slot.budget is not None:
            slot.budget += 1
        elif task._started_at is not None and task.finished_at is not None:
            slot.busy.add(task._started_at, task.finished_at)
        if not slot.inflight and slot.state is _BUSY:
            slot.state = _IDLE
        return True

    def give_back(self, slot: Slot, task: Task[Any]) -> None:
        """The slot's worker handed ``task`` back unstarted: it goes to the head of the queue.

        Its budget returns to the slot; a task settled meanwhile just leaves the slot.
        """
        if not self.release(slot, task, unstarted=True):
            return
        if task._held:
            task._held = False
            self.n_active -= 1
            self.n_queued += 1
            self._push_front(task)

    def take_back(self, slot: Slot) -> list[Task[Any]]:
        """Empty the slot (its worker is gone): requeue the unstarted tasks, in order.

        Returns the tasks that were running, still counted active, for the caller to fail.
        """
        self.close_slot(slot)
        running: list[Task[Any]] = []
        unstarted: list[Task[Any]] = []
        for t in slot.inflight:
            t.slot = None
            if t._state is _RUNNING:
                running.append(t)
            elif t._state is _QUEUED and t._held:
                t._held = False
                unstarted.append(t)
        slot.inflight = []
        self.n_active -= len(unstarted)
        self.n_queued += len(unstarted)
        # Requeue in their original order, ahead of everything queued after them.
        for t in reversed(unstarted):
            self._push_front(t)
        return running

    def assignments(self, now: float) -> Iterator[tuple[Slot, Task[Any]]]:
        """Yield (slot, task) pairs, handing queued tasks to slots with room.

        A slot with nothing in flight is preferred to one that would queue the task
        behind another, so work spreads over idle workers before any prefetching.
        """
        queue = self.queue
        levels = self.levels
        while self.free > 0 and (queue or levels):
            best: Slot | None = None
            for s in self.slots:
                n = len(s.inflight)
                if not s.accepting or n >= s.window or s.budget == 0:
                    continue
                if best is None or n < len(best.inflight):
                    best = s
                    if not n:
                        break
            if best is None:  # free count out of date: recompute, never spin
                self.free = sum(_room(s) for s in self.slots if s.accepting)
                return
            task = self._pop() if levels else queue.popleft()
            if task is None:
                return
            if task._state is not _QUEUED or task._held:
                continue  # settled while queued (lazy removal)
            best.inflight.append(task)
            best.state = _BUSY
            task.slot = best
            task._held = True
            task.dispatched_at = now
            self.n_queued -= 1
            self.n_active += 1
            self.free -= 1
            if best.budget is not None:
                best.budget -= 1
            yield best, task

    def steal_candidates(self) -> Iterator[tuple[Slot, Task[Any], Slot]]:
        """(from_slot, task, to_slot) moves that would start prefetched tasks sooner.

        Only when nothing is queued: an idle slot takes the last unstarted task of a busy
        one, so a long task never holds a prefetched one while a worker sits idle.
        """
        if self.queue or self.levels:
            return
        idle = [s for s in self.slots if s.accepting and not s.inflight and s.budget != 0]
        if not idle:
            return
        for s in self.slots:
            if not idle:
                return
            if len(s.inflight) > 1 and s.inflight[-1]._state is _QUEUED:
                yield s, s.inflight[-1], idle.pop()

    def move(self, task: Task[Any], src: Slot, dst: Slot) -> None:
        """Record that ``task`` was taken back from ``src`` and handed to ``dst`` (stays active)."""
        self.release(src, task, unstarted=True)
        dst.inflight.append(task)
        dst.state = _BUSY
        task.slot = dst
        self.free -= 1
        if dst.budget is not None:
            dst.budget -= 1

    # --- tasks ---------------------------------------------------------------------------

    # --- the queues by priority -----------------------------------------------------------

    def _level(self, priority: int) -> collections.deque[Task[Any]]:
        """The queue of ``priority`` (not 0), made on first use."""
        level = self.levels.get(priority)
        if level is None:
            level = self.levels[priority] = collections.deque()
            self.level_order = sorted(self.levels, reverse=True)
        return level

    def _push_front(self, task: Task[Any]) -> None:
        """Put ``task`` back ahead of the tasks added after it, behind those added before
        it that were put back too: tasks handed back one by one, in any order (a thread
        worker's window, a process worker's answers), keep the order they were added in."""
        queue = self._level(task.priority) if task.priority else self.queue
        i = 0
        n = len(queue)
        tid = task.id
        while i < n and queue[i].id < tid:  # (a short run: only tasks put back are older)
            i += 1
        if i:
            queue.insert(i, task)
        else:
            queue.appendleft(task)

    def _pop(self) -> Task[Any] | None:
        """The next task by priority, or None when every queue is empty (a level emptied
        by lazy removal is dropped on the way)."""
        levels = self.levels
        queue = self.queue
        for p in list(self.level_order):
            if p < 0 and queue:
                return queue.popleft()
            level = levels[p]
            if level:
                task = level.popleft()
                if not level:
                    del levels[p]
                    self.level_order.remove(p)
                return task
            del levels[p]
            self.level_order.remove(p)
        return queue.popleft() if queue else None

    def queues(self) -> list[collections.deque[Task[Any]]]:
        """Every queue, highest priority first."""
        order = self.level_order
        levels = self.levels
        return [levels[p] for p in order if p > 0] + [self.queue] + [levels[p] for p in order if p < 0]

    def clear_queue(self) -> None:
        """Forget every queued task (their counts were settled already)."""
        self.queue.clear()
        self.levels.clear()
        self.level_order = []

    def requeue(self, task: Task[Any]) -> None:
        """``task``'s run failed and it runs again: back to the head of its queue.

        Its worker let go of it already (released); its run's times are cleared.
        """
        if task._held:
            task._held = False
            self.n_active -= 1
            if task._started_at is not None:
                self.n_running -= 1
                self.n_started -= 1  # counted again when the new run starts
        else:
            self.n_queued -= 1  # (it was queued: nothing moves)
        task._state = _QUEUED
        task._started_at = None
        task.dispatched_at = None
        task.finished_at = None
        task._worker_id = None
        task.slot = None
        self.n_queued += 1
        self._push_front(task)

    def preemptable(self, priority: int) -> list[tuple[Slot, Task[Any]]]:
        """(slot, task): the unstarted tasks of lower priority than ``priority`` at the end
        of workers' windows, the last handed first (taking them back lets ``priority``
        by). Windows fill highest priority first, so only their tails are looked at."""
        found: list[tuple[Slot, Task[Any]]] = []
        for slot in self.slots:
            if not slot.accepting:
                continue
            for t in reversed(slot.inflight):
                if t._state is not _QUEUED or not t._held or t.priority >= priority:
                    break
                found.append((slot, t))
        return found

    def add(self, task: Task[Any]) -> bool:
        """Queue a new task; True when it opened a new round."""
        self.n_total += 1
        self.n_queued += 1
        if task.priority:
            self.priorities_used = True
            self._level(task.priority).append(task)
        else:
            self.queue.append(task)
        if not self.round_open:
            self.round_open = True
            self.round_no += 1
            self.round_tasks = []
            self.round_settled = 0
            self.race_done = False
            return True
        return False

    def started(self, task: Task[Any], worker_id: int, at: float) -> None:
        """Count ``task`` as running: worker ``worker_id`` started it at ``at`` (epoch seconds)."""
        task._state = _RUNNING
        task._started_at = at
        task._worker_id = worker_id
        self.n_started += 1
        self.n_running += 1

    def settled(self, task: Task[Any], *, keep_in_round: bool) -> bool:
        """Count a task that just reached its final state; True if first in its round.

        A worker may still hold it (a cancelled call being stopped): it leaves its slot
        on :meth:`release`. ``keep_in_round``: remember it for the round's
        ``all_settled`` (only while such a hook exists: no reference kept otherwise).
        """
        if task._held:
            task._held = False
            self.n_active -= 1
            if task._started_at is not None:
                self.n_running -= 1
        else:
            self.n_queued -= 1
        state = task._state
        if state is _SUCCEEDED:
            self.n_succeeded += 1
        elif state is _FAILED:
            self.n_failed += 1
        else:
            self.n_cancelled += 1
        if self.keep_records:
            exc = task._exc
            self._done.append(
                (
                    task.id,
                    task.meta,
                    state,
                    task._worker_id,
                    task.queued_at,
                    task._started_at,
                    task.finished_at,
                    None if exc is None else describe_error(exc),
                    task.dispatched_at,
                    1 if task._retry is None else task._retry.attempts,
                )
            )
        if keep_in_round:
            self.round_tasks.append(task)
        self.round_settled += 1
        if not self.race_done:
            self.race_done = True
            return True
        return False

    def close_round(self) -> list[Task[Any]] | None:
        """If a round is open and the pool drained, end it and return its tasks in order."""
        if self.round_open and self.drained:
            self.round_open = False
            tasks, self.round_tasks = self.round_tasks, []
            return tasks
        return None

    # --- raw views -----------------------------------------------------------------------

    @property
    def records(self) -> list[TaskRecord]:
        """Records of the last ``keep_records`` settled tasks, oldest first."""
        return [
            TaskRecord(
                id=i,
                meta=meta,
                state=state,
                worker_id=worker_id,
                queued_at=queued_at,
                started_at=started_at,
                finished_at=finished_at,
                error=error,
                dispatched_at=dispatched_at,
                attempts=attempts,
            )
            for (i, meta, state, worker_id, queued_at, started_at, finished_at, error, dispatched_at, attempts) in (
                self._done
            )
        ]

    def oldest_queued(self) -> Task[Any] | None:
        """The longest-waiting task in the pool's queues, dropping settled ones from their
        heads (lazy removal)."""
        oldest: Task[Any] | None = None
        for queue in self.queues() if self.levels else (self.queue,):
            while queue:
                task = queue[0]
                if task._state is _QUEUED and not task._held:
                    if oldest is None or task.queued_at < oldest.queued_at:
                        oldest = task
                    break
                queue.popleft()
        return oldest

    def iter_queued(self) -> Iterator[Task[Any]]:
        """Tasks in the pool's queues (not handed to a worker), in the order they would start."""
        for queue in self.queues() if self.levels else (self.queue,):
            for t in queue:
                if t._state is _QUEUED and not t._held:
                    yield t

    def iter_queued_by_id(self) -> Iterator[Task[Any]]:
        """Tasks in the pool's queues in id (= added) order, for paging by id."""
        queues = self.queues() if self.levels else [self.queue]
        merged = heapq.merge(*queues, key=_task_id) if len(queues) > 1 else iter(self.queue)
        return (t for t in merged if t._state is _QUEUED and not t._held)

    def queued_tasks(self) -> list[Task[Any]]:
        """Tasks in the pool's queues (not handed to a worker), in the order they would start."""
        return list(self.iter_queued())

    def active_tasks(self) -> list[Task[Any]]:
        """Tasks held by workers: running, or waiting in a worker's window."""
        return [t for s in self.slots for t in s.inflight]
