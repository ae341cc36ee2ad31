"""The scheduler's rules, with no pool, no workers and no event loop.

``Scheduler`` is plain bookkeeping: these tests drive it the way the pool's core does
(``add`` -> ``assignments(now)`` -> ``started`` -> on the worker's report ``release`` then
``settled``; ``release(unstarted=True)`` for a call the worker gave up before starting it,
``give_back`` for one handed back, ``take_back`` when a worker died, ``steal_candidates`` +
``move`` to start a prefetched call sooner) and check what it decides, and that the books
balance throughout: ``total == queued + active + completed``, where ``queued`` is the pool's
queue only and ``active`` every task a worker holds, started or waiting in its window.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskpool import TaskRecord, TaskState
from taskpool._scheduler import FIELDS, LONG_CALL, Scheduler, Slot
from taskpool._task import Task

from . import _funcs

SUCCEEDED, FAILED, CANCELLED = TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED


class FakeOwner:
    """A :class:`~taskpool._task.TaskOwner` that owns nothing: the scheduler never calls it."""

    def cancel_task(self, task: Task[Any], exc: BaseException) -> bool:
        raise AssertionError("the scheduler never cancels a task itself")

    def run_callback(self, kind: str, cb: Callable[..., Any], args: tuple[Any, ...], task: Task[Any] | None) -> None:
        raise AssertionError("the scheduler never runs a callback")


OWNER = FakeOwner()
ids = iter(range(1, 1_000_000))


def running_tasks(sched: Scheduler) -> list[Task[int]]:
    """The tasks workers are running (what ``n_running`` counts)."""
    return [t for s in sched.slots for t in s.inflight if t.state is TaskState.RUNNING]


def new_task() -> Task[int]:
    return Task(OWNER, next(ids), _funcs.add, (1, 2), None, None, 0.0)


def make(
    n_slots: int = 2,
    window: int = 1,
    *,
    keep_records: int = 100,
    open_slots: bool = True,
    adaptive: bool = False,
    concurrency: int = 1,
    budget: int | None = None,
) -> Scheduler:
    sched = Scheduler(keep_records=keep_records)
    for i in range(n_slots):
        slot = Slot(i, window, adaptive=adaptive, concurrency=concurrency)
        slot.budget = budget
        sched.add_slot(slot)
        if open_slots:
            sched.open_slot(slot)
    return sched


def add(sched: Scheduler, n: int) -> list[Task[int]]:
    tasks = [new_task() for _ in range(n)]
    for t in tasks:
        sched.add(t)
    return tasks


def dispatch(sched: Scheduler, now: float = 1.0) -> list[tuple[Slot, Task[Any]]]:
    return list(sched.assignments(now))


def slot_of(task: Task[Any]) -> Slot:
    slot = task.slot
    assert isinstance(slot, Slot)
    return slot


def start(sched: Scheduler, task: Task[Any], at: float = 1.0) -> None:
    """The worker reports it started ``task``."""
    sched.started(task, slot_of(task).id, at)


def settle(sched: Scheduler, task: Task[Any], state: TaskState, *, at: float = 2.0, keep: bool = True) -> bool:
    """The core's settle(): the task's final state first, then the books."""
    if task.finished_at is None:
        task.finished_at = at  # what the worker reported (the core sets it the same way)
    task._settle(state, None, None if state is SUCCEEDED else RuntimeError(str(state)))
    return sched.settled(task, keep_in_round=keep)


def report(
    sched: Scheduler, task: Task[Any], state: TaskState = SUCCEEDED, *, at: float = 2.0, keep: bool = True
) -> bool:
    """The worker reports ``task`` done (the core's task_finished): release, then settle."""
    task.finished_at = at
    assert sched.release(slot_of(task), task)
    return settle(sched, task, state, at=at, keep=keep)


def cancel_queued(sched: Scheduler, task: Task[Any]) -> None:
    """A task in the pool's queue is cancelled: settled, left in the deque."""
    assert task.state is TaskState.QUEUED
    assert task.slot is None
    settle(sched, task, CANCELLED)


def cancel_unstarted(sched: Scheduler, task: Task[Any]) -> None:
    """A task waiting in a worker's window is cancelled and the worker gave it up at once."""
    assert task.state is TaskState.QUEUED
    assert sched.release(slot_of(task), task, unstarted=True)
    settle(sched, task, CANCELLED)


def cancel_held(sched: Scheduler, task: Task[Any]) -> None:
    """A task a worker holds is cancelled but is still being stopped there: settled, not released."""
    settle(sched, task, CANCELLED)


def stopped(sched: Scheduler, task: Task[Any]) -> None:
    """The worker reports a task it was stopping (already settled): it only leaves the slot."""
    assert task.done()
    if task.finished_at is None:
        task.finished_at = 3.0
    assert sched.release(slot_of(task), task)


def crash(sched: Scheduler, slot: Slot) -> list[Task[Any]]:
    """The slot's worker died: take its work back and fail what it was running."""
    running = sched.take_back(slot)
    for t in running:
        settle(sched, t, FAILED, at=3.0)
    return running


def counts(sched: Scheduler) -> dict[str, int]:
    return {f: sched.count(f) for f in FIELDS}


def check_invariants(sched: Scheduler) -> None:
    c = counts(sched)
    assert c["total"] == c["queued"] + c["active"] + c["completed"]
    assert c["completed"] == c["succeeded"] + c["failed"] + c["cancelled"]
    assert c["remaining"] == c["queued"] + c["active"]
    assert min(c.values()) >= 0
    assert 0 <= sched.n_running <= c["active"]
    assert c["started"] >= sched.n_running
    assert sched.n_waiting == c["queued"] + c["active"] - sched.n_running
    assert sched.drained == (c["queued"] == 0 and c["active"] == 0)
    assert sched.free == sum(max(0, s.window - len(s.inflight)) for s in sched.slots if s.accepting)

    # FIFO within one priority: every queue holds its tasks in the order they were added,
    # however they came back to it (handed back one by one, taken back, retried).
    for q in (sched.queue, *sched.levels.values()):
        ids = [t.id for t in q]
        assert ids == sorted(ids)

    queued = sched.queued_tasks()
    assert len(queued) == c["queued"]
    assert all(t.state is TaskState.QUEUED and not t._held and t.slot is None for t in queued)

    # active_tasks() is every task a worker holds, including one that settled (a cancelled
    # call still being stopped in its worker) and leaves the slot only on release(): that
    # one is no longer counted. The unsettled ones are exactly the `active` count.
    held = sched.active_tasks()
    assert len({t.id for t in held}) == len(held)  # no task in two slots
    unsettled = [t for t in held if not t.done()]
    assert len(unsettled) == c["active"]
    assert all(t._held for t in unsettled)
    assert not any(t._held for t in held if t.done())
    assert not {t.id for t in queued} & {t.id for t in held}

    running = running_tasks(sched)
    assert len(running) == sched.n_running
    assert all(t.state is TaskState.RUNNING and t.started_at is not None for t in running)
    windowed = [t for t in unsettled if t.state is TaskState.QUEUED]
    assert sched.n_waiting == len(queued) + len(windowed)
    assert all(t.dispatched_at is not None for t in unsettled)

    for s in sched.slots:
        assert all(t.slot is s for t in s.inflight)
        assert len(s.inflight) <= s.max_window
        assert s.min_window <= s.window <= s.max_window
        assert s.budget is None or s.budget >= 0


# --- assignment ------------------------------------------------------------------------


def test_assignment_prefers_idle_slots_before_filling_windows() -> None:
    sched = make(n_slots=3, window=2)
    first = add(sched, 3)
    pairs = dispatch(sched)
    # One task per slot: nobody prefetches while another slot sits idle.
    assert [(s.id, t) for s, t in pairs] == [(0, first[0]), (1, first[1]), (2, first[2])]
    second = add(sched, 4)
    pairs = dispatch(sched)
    assert sorted(s.id for s, _ in pairs) == [0, 1, 2]  # windows filled, one more each
    assert [t for _, t in pairs] == second[:3]
    assert sched.free == 0
    assert list(sched.queue) == [second[3]]
    assert dispatch(sched) == []  # no room: nothing handed out
    check_invariants(sched)


def test_assignment_prefers_the_least_loaded_slot() -> None:
    sched = make(n_slots=2, window=3)
    sched.close_slot(sched.slots[1])
    (x,) = add(sched, 1)
    assert [(s.id, t) for s, t in dispatch(sched)] == [(0, x)]  # slot 0 already holds one
    sched.open_slot(sched.slots[1])
    a, b, c = add(sched, 3)
    assert [(s.id, t) for s, t in dispatch(sched)] == [(1, a), (0, b), (1, c)]
    check_invariants(sched)


def test_assignments_stamp_dispatched_at() -> None:
    sched = make(n_slots=1, window=1)
    a, b = add(sched, 2)
    assert (a.dispatched_at, b.dispatched_at) == (None, None)
    assert dispatch(sched, now=5.0) == [(sched.slots[0], a)]
    assert a.dispatched_at == 5.0
    assert a.record.dispatched_at == 5.0
    assert b.dispatched_at is None  # still in the pool's queue
    sched.give_back(sched.slots[0], a)
    assert dispatch(sched, now=7.0) == [(sched.slots[0], a)]
    assert a.dispatched_at == 7.0  # handed out again: stamped again
    check_invariants(sched)


def test_window_bounds_tasks_in_flight_per_slot() -> None:
    sched = make(n_slots=1, window=2)
    tasks = add(sched, 5)
    assert [t for _, t in dispatch(sched)] == tasks[:2]
    assert len(sched.slots[0].inflight) == 2
    start(sched, tasks[0])
    assert dispatch(sched) == []  # a running task still holds its place
    report(sched, tasks[0])
    assert [t for _, t in dispatch(sched)] == [tasks[2]]
    check_invariants(sched)


def test_closed_slots_get_no_work_until_opened() -> None:
    sched = make(n_slots=2, window=1, open_slots=False)
    tasks = add(sched, 2)
    assert sched.free == 0
    assert dispatch(sched) == []
    sched.open_slot(sched.slots[1])
    assert [(s.id, t) for s, t in dispatch(sched)] == [(1, tasks[0])]
    sched.open_slot(sched.slots[1])  # idempotent: free is not counted twice
    assert sched.free == 0
    sched.close_slot(sched.slots[1])
    sched.close_slot(sched.slots[1])
    assert sched.free == 0
    assert dispatch(sched) == []
    check_invariants(sched)


def test_open_slot_records_when_the_worker_came_up() -> None:
    sched = make(n_slots=1, open_slots=False)
    slot = sched.slots[0]
    assert (slot.busy.up_since, slot.state.value) == (None, "starting")
    sched.open_slot(slot, 12.5)
    assert slot.busy.up_since == 12.5
    assert slot.state.value == "idle"


def test_cancelled_queued_tasks_are_removed_lazily() -> None:
    sched = make(n_slots=1, window=1)
    a, b, c = add(sched, 3)
    cancel_queued(sched, a)
    cancel_queued(sched, b)
    # Still in the deque (O(1) cancel), but no longer counted and never handed out.
    assert list(sched.queue) == [a, b, c]
    assert sched.count("queued") == 1
    assert sched.count("cancelled") == 2
    assert sched.queued_tasks() == [c]
    check_invariants(sched)
    assert [t for _, t in dispatch(sched)] == [c]
    assert not sched.queue
    assert a.dispatched_at is None
    check_invariants(sched)


def test_a_task_already_handed_out_is_not_handed_out_twice() -> None:
    sched = make(n_slots=2, window=1)
    (a,) = add(sched, 1)
    assert [t for _, t in dispatch(sched)] == [a]
    sched.queue.append(a)  # a stale entry (e.g. requeued and reassigned)
    assert dispatch(sched) == []
    assert sched.slots[1].inflight == []
    check_invariants(sched)


# --- budgets -------------------------------------------------------------------------------


def test_a_slot_is_handed_no_more_than_its_budget() -> None:
    sched = make(n_slots=2, window=2)
    sched.slots[0].budget = 1
    tasks = add(sched, 4)
    pairs = dispatch(sched)
    assert [(s.id, t) for s, t in pairs] == [(0, tasks[0]), (1, tasks[1]), (1, tasks[2])]
    assert sched.slots[0].budget == 0
    assert sched.slots[1].budget is None  # no budget: unlimited, untouched
    # Slot 0 has room in its window but no budget left: the last task waits.
    assert sched.free == 1
    assert dispatch(sched) == []
    assert sched.queued_tasks() == [tasks[3]]
    check_invariants(sched)


def test_budget_decreases_on_hand_out_and_returns_only_for_unstarted_tasks() -> None:
    sched = make(n_slots=2, window=3, budget=5)
    slot0, slot1 = sched.slots
    sched.close_slot(slot1)
    a, b, c = add(sched, 3)
    dispatch(sched)
    assert slot0.inflight == [a, b, c]
    assert slot0.budget == 2
    # Ran and reported: the budget stays spent.
    start(sched, a)
    report(sched, a)
    assert slot0.budget == 2
    # Given up unstarted on cancel: it comes back.
    cancel_unstarted(sched, b)
    assert slot0.budget == 3
    # Handed back unstarted: it comes back.
    sched.give_back(slot0, c)
    assert slot0.budget == 4
    check_invariants(sched)
    # Moved to another slot: back to the source, spent on the destination.
    dispatch(sched)
    assert slot0.inflight == [c]
    assert slot0.budget == 3
    sched.open_slot(slot1)
    sched.move(c, slot0, slot1)
    assert (slot0.budget, slot1.budget) == (4, 4)
    assert slot1.inflight == [c]
    check_invariants(sched)


# --- taking work back ----------------------------------------------------------------------


def test_take_back_requeues_unstarted_in_order_and_returns_running() -> None:
    sched = make(n_slots=2, window=3)
    tasks = add(sched, 6)
    handed = dispatch(sched)
    slot0 = sched.slots[0]
    on0 = [t for s, t in handed if s is slot0]
    assert on0 == [tasks[0], tasks[2], tasks[4]]
    start(sched, tasks[0])
    later = add(sched, 1)[0]
    assert (sched.count("queued"), sched.count("active")) == (1, 6)
    running = sched.take_back(slot0)
    assert running == [tasks[0]]
    # Unstarted ones go back to the head of the queue, in their original order.
    assert list(sched.queue) == [tasks[2], tasks[4], later]
    assert slot0.inflight == []
    assert not slot0.accepting
    assert all(t.slot is None for t in (tasks[0], tasks[2], tasks[4]))
    # The running one is still active until the pool settles it (as WorkerCrashed).
    assert (sched.count("queued"), sched.count("active")) == (3, 4)
    assert sched.n_running == 1
    settle(sched, tasks[0], FAILED, at=3.0)
    assert (sched.count("active"), sched.n_running) == (3, 0)
    check_invariants(sched)
    # The other slot picks up the requeued tasks first.
    report(sched, tasks[1])
    assert [t for _, t in dispatch(sched)] == [tasks[2]]
    check_invariants(sched)


def test_take_back_drops_tasks_that_settled_meanwhile() -> None:
    sched = make(n_slots=1, window=3)
    a, b, c = add(sched, 3)
    dispatch(sched)
    start(sched, a)
    cancel_held(sched, a)  # running, cancelled, still being stopped in the worker
    cancel_held(sched, c)  # windowed, cancelled, the worker not yet answered
    assert sched.take_back(sched.slots[0]) == []  # neither is "running" any more
    assert list(sched.queue) == [b]
    assert sched.slots[0].inflight == []
    assert (sched.count("queued"), sched.count("active"), sched.count("cancelled")) == (1, 0, 2)
    check_invariants(sched)


def test_give_back_puts_a_returned_task_first() -> None:
    sched = make(n_slots=1, window=1)
    a, b = add(sched, 2)
    [(slot, task)] = dispatch(sched)
    assert task is a
    assert (sched.count("queued"), sched.count("active")) == (1, 1)
    sched.give_back(slot, a)
    assert list(sched.queue) == [a, b]
    assert (sched.count("queued"), sched.count("active")) == (2, 0)
    assert a.slot is None
    assert slot.inflight == []
    assert slot.state.value == "idle"
    check_invariants(sched)
    assert [t for _, t in dispatch(sched)] == [a]
    check_invariants(sched)


@pytest.mark.parametrize("order", ["as added", "reversed"])
def test_tasks_given_back_one_by_one_keep_the_order_they_were_added(order: str) -> None:
    # A worker hands its window back a task at a time (a retired thread: in any order);
    # FIFO within a priority holds however they come back.
    sched = make(n_slots=1, window=4)
    tasks = add(sched, 6)
    handed = [t for _, t in dispatch(sched)]
    assert handed == tasks[:4]
    slot = handed[0].slot
    assert slot is not None
    for t in handed if order == "as added" else reversed(handed):
        sched.give_back(slot, t)
    assert list(sched.queue) == tasks
    check_invariants(sched)


def test_give_back_of_a_task_settled_meanwhile_only_leaves_the_slot() -> None:
    sched = make(n_slots=1, window=2, budget=3)
    (a,) = add(sched, 1)
    [(slot, _)] = dispatch(sched)
    cancel_held(sched, a)
    free = sched.free
    sched.give_back(slot, a)
    assert slot.inflight == []
    assert not sched.queue
    assert sched.free == free + 1
    assert slot.budget == 3
    assert (sched.count("queued"), sched.count("active"), sched.count("cancelled")) == (0, 0, 1)
    check_invariants(sched)
    sched.give_back(slot, a)  # not held any more: nothing happens
    check_invariants(sched)


def test_release_of_unknown_task_is_a_no_op() -> None:
    sched = make(n_slots=1, window=1, budget=2)
    slot = sched.slots[0]
    free = sched.free
    stranger = new_task()
    assert sched.release(slot, stranger) is False
    assert sched.release(slot, stranger, unstarted=True) is False
    assert sched.free == free
    assert slot.budget == 2
    sched.give_back(slot, stranger)
    assert not sched.queue
    check_invariants(sched)


def test_steal_moves_a_prefetched_task_to_an_idle_slot() -> None:
    sched = make(n_slots=2, window=2)
    a, b = add(sched, 2)
    sched.close_slot(sched.slots[1])
    dispatch(sched)
    assert sched.slots[0].inflight == [a, b]
    assert list(sched.steal_candidates()) == []  # slot 1 is not accepting
    start(sched, a)
    sched.open_slot(sched.slots[1])
    before = counts(sched)
    [(src, task, dst)] = list(sched.steal_candidates())
    assert (src.id, task, dst.id) == (0, b, 1)
    sched.move(task, src, dst)
    assert sched.slots[0].inflight == [a]
    assert sched.slots[1].inflight == [b]
    assert b.slot is sched.slots[1]
    assert sched.slots[1].state.value == "busy"
    assert counts(sched) == before  # still active, never queued
    assert sched.free == 2
    check_invariants(sched)


def test_no_steal_while_work_is_queued_or_without_an_idle_slot() -> None:
    sched = make(n_slots=2, window=2)
    add(sched, 1)
    assert list(sched.steal_candidates()) == []  # queued work goes to the idle slot instead

    # Only the last task is a candidate, and only while unstarted.
    sched = make(n_slots=2, window=2)
    sched.close_slot(sched.slots[1])
    a, b = add(sched, 2)
    dispatch(sched)
    start(sched, a)
    start(sched, b)
    sched.open_slot(sched.slots[1])
    assert list(sched.steal_candidates()) == []

    # An idle slot with no budget left takes nothing.
    sched = make(n_slots=2, window=2)
    sched.close_slot(sched.slots[1])
    a, b = add(sched, 2)
    dispatch(sched)
    sched.slots[1].budget = 0
    sched.open_slot(sched.slots[1])
    assert list(sched.steal_candidates()) == []
    sched.slots[1].budget = 1
    assert [(s.id, t, d.id) for s, t, d in sched.steal_candidates()] == [(0, b, 1)]


# --- counts, records, rounds ------------------------------------------------------------------


def test_counts_follow_a_task_through_its_life() -> None:
    sched = make(n_slots=1, window=1)
    assert counts(sched) == dict.fromkeys(FIELDS, 0)
    assert sched.drained
    (t,) = add(sched, 1)
    assert (sched.count("queued"), sched.count("total"), sched.count("remaining")) == (1, 1, 1)
    assert (sched.n_waiting, sched.n_running) == (1, 0)
    check_invariants(sched)
    dispatch(sched)
    # Handed to a worker, not started: active (the worker holds it), still waiting.
    assert (sched.count("queued"), sched.count("active"), sched.count("started")) == (0, 1, 0)
    assert (sched.n_waiting, sched.n_running, sched.drained) == (1, 0, False)
    check_invariants(sched)
    start(sched, t)
    assert (sched.count("queued"), sched.count("active"), sched.count("started")) == (0, 1, 1)
    assert (sched.n_waiting, sched.n_running) == (0, 1)
    check_invariants(sched)
    report(sched, t, FAILED)
    assert (sched.count("active"), sched.count("failed"), sched.count("completed")) == (0, 1, 1)
    assert (sched.n_waiting, sched.n_running, sched.count("remaining")) == (0, 0, 0)
    assert sched.drained
    check_invariants(sched)


def test_active_counts_windowed_tasks_and_queued_only_the_pool_s_queue() -> None:
    sched = make(n_slots=2, window=3)
    tasks = add(sched, 8)
    dispatch(sched)
    start(sched, tasks[0])
    start(sched, tasks[1])
    c = counts(sched)
    assert (c["queued"], c["active"], c["remaining"], c["total"]) == (2, 6, 8, 8)
    assert sched.n_running == 2
    assert sched.n_waiting == 6  # 2 in the pool's queue + 4 in windows
    assert sched.queued_tasks() == tasks[6:]
    assert sorted(t.id for t in sched.active_tasks()) == sorted(t.id for t in tasks[:6])
    assert running_tasks(sched) == [tasks[0], tasks[1]]
    assert sched.slots[0].current() is tasks[0]
    check_invariants(sched)


def test_a_windowed_task_the_worker_gave_up_on_cancel() -> None:
    sched = make(n_slots=1, window=2)
    a, b = add(sched, 2)
    dispatch(sched)
    start(sched, a)
    cancel_unstarted(sched, b)
    assert sched.slots[0].inflight == [a]
    assert b.slot is None
    c = counts(sched)
    assert (c["queued"], c["active"], c["cancelled"]) == (0, 1, 1)
    assert sched.n_waiting == 0
    assert sched.free == 1
    check_invariants(sched)


def test_a_cancelled_call_stays_in_its_slot_until_released() -> None:
    sched = make(n_slots=1, window=1)
    (a,) = add(sched, 1)
    [(slot, _)] = dispatch(sched)
    start(sched, a, at=1.0)
    cancel_held(sched, a)  # settled at 2.0, its worker still stopping it
    # No longer counted (the pool may drain), but the worker's place is still taken.
    assert (sched.count("active"), sched.count("cancelled"), sched.n_running) == (0, 1, 0)
    assert sched.drained
    assert sched.active_tasks() == [a]
    assert running_tasks(sched) == []
    assert slot.current() is None
    assert sched.free == 0
    (b,) = add(sched, 1)
    assert dispatch(sched) == []
    check_invariants(sched)
    stopped(sched, a)  # the worker reports it stopped
    assert slot.inflight == []
    assert a.slot is None
    assert slot.state.value == "idle"
    assert counts(sched)["cancelled"] == 1  # not counted twice
    assert [t for _, t in dispatch(sched)] == [b]
    check_invariants(sched)


def test_release_feeds_the_slot_s_busy_meter() -> None:
    sched = make(n_slots=1, window=2)
    slot = sched.slots[0]
    sched.close_slot(slot)
    sched.open_slot(slot, 0.0)
    a, b = add(sched, 2)
    dispatch(sched)
    start(sched, a, at=1.0)
    report(sched, a, at=3.0)  # ran 2 s
    start(sched, b, at=4.0)  # running since 4 s
    assert slot.utilisation(10.0) == pytest.approx((2.0 + 6.0) / 10.0)
    check_invariants(sched)


def test_unknown_field_raises_value_error_naming_the_accepted_ones() -> None:
    sched = make()
    with pytest.raises(ValueError, match="unknown status field 'nope'") as info:
        sched.count("nope")
    for field in FIELDS:
        assert field in str(info.value)


def test_records_are_bounded_but_counts_stay_exact() -> None:
    sched = make(n_slots=1, window=1, keep_records=3)
    tasks = add(sched, 10)
    for t in tasks:
        settle(sched, t, SUCCEEDED)  # settled straight from the queue
    assert sched.count("succeeded") == 10
    assert [r.id for r in sched.records] == [t.id for t in tasks[-3:]]
    assert all(isinstance(r, TaskRecord) and r.state is SUCCEEDED for r in sched.records)
    assert "result" not in TaskRecord.__struct_fields__  # records keep no result
    check_invariants(sched)
    none_kept = make(keep_records=0)
    (t,) = add(none_kept, 1)
    dispatch(none_kept)
    start(none_kept, t)
    report(none_kept, t)
    assert list(none_kept.records) == []
    assert none_kept.count("completed") == 1
    check_invariants(none_kept)


def test_a_record_is_the_task_as_it_settled() -> None:
    sched = make(n_slots=1, window=1)
    (t,) = add(sched, 1)
    dispatch(sched, now=0.5)
    start(sched, t, at=1.0)
    report(sched, t, FAILED, at=2.0)
    [rec] = sched.records
    assert (rec.id, rec.state, rec.worker_id) == (t.id, FAILED, 0)
    assert (rec.queued_at, rec.dispatched_at, rec.started_at, rec.finished_at) == (0.0, 0.5, 1.0, 2.0)
    assert rec.error == "RuntimeError: failed"


def test_rounds_open_on_first_add_and_close_when_drained() -> None:
    sched = make(n_slots=2, window=1)
    assert not sched.round_open
    a, b = new_task(), new_task()
    assert sched.add(a) is True  # opens round 1
    assert sched.add(b) is False
    assert (sched.round_open, sched.round_no) == (True, 1)
    dispatch(sched)
    start(sched, a)
    start(sched, b)
    assert report(sched, b) is True  # first to settle in the round: race
    assert sched.close_round() is None  # not drained yet
    assert report(sched, a) is False
    assert sched.round_settled == 2
    assert sched.close_round() == [b, a]  # in settling order
    assert not sched.round_open
    assert sched.close_round() is None  # closes once
    c = new_task()
    assert sched.add(c) is True
    assert sched.round_no == 2
    assert sched.round_settled == 0
    cancel_queued(sched, c)
    assert sched.close_round() == [c]
    check_invariants(sched)


def test_settled_without_keep_in_round_keeps_no_reference() -> None:
    sched = make(n_slots=1, window=1)
    tasks = add(sched, 2)
    dispatch(sched)
    start(sched, tasks[0])
    assert report(sched, tasks[0], keep=False) is True  # still the round's first
    dispatch(sched)
    start(sched, tasks[1])
    assert report(sched, tasks[1], keep=False) is False
    assert sched.round_tasks == []
    assert sched.round_settled == 2
    refs = [weakref.ref(t) for t in tasks]
    del tasks
    gc.collect()
    assert [r() for r in refs] == [None, None]  # nothing in the scheduler holds them
    assert sched.close_round() == []
    assert [r.state for r in sched.records] == [SUCCEEDED, SUCCEEDED]


# --- windows -------------------------------------------------------------------------------


def test_slot_windows() -> None:
    fixed = Slot(0, 2)
    assert (fixed.min_window, fixed.window, fixed.max_window) == (1, 2, 2)
    wide = Slot(1, 2, concurrency=3)  # runs 3 at once, plus 1 prefetched
    assert (wide.min_window, wide.window, wide.max_window) == (3, 4, 4)
    adaptive = Slot(2, 8, adaptive=True)  # starts with no prefetch
    assert (adaptive.min_window, adaptive.window, adaptive.max_window) == (1, 1, 8)
    adaptive_wide = Slot(3, 8, adaptive=True, concurrency=2)
    assert (adaptive_wide.min_window, adaptive_wide.window, adaptive_wide.max_window) == (2, 2, 9)
    assert adaptive.busy.capacity == 1
    assert adaptive_wide.busy.capacity == 2


def test_observe_opens_and_closes_an_adaptive_window() -> None:
    sched = make(n_slots=1, window=8, adaptive=True)
    slot = sched.slots[0]
    assert (slot.window, sched.free) == (1, 1)
    sched.observe(slot, LONG_CALL / 10)  # short calls: prefetch pays
    assert (slot.window, sched.free) == (8, 8)
    sched.observe(slot, 0.0)
    assert (slot.window, sched.free) == (8, 8)
    sched.observe(slot, 1.0)  # one long call: the average is over LONG_CALL
    assert (slot.window, sched.free) == (1, 1)
    n = 0
    while slot.window == 1:  # the average has to come back under LONG_CALL
        sched.observe(slot, 0.0)
        n += 1
    assert n > 1
    assert slot.busy_ewma < LONG_CALL
    assert (slot.window, sched.free) == (8, 8)
    check_invariants(sched)


def test_observe_on_a_closed_slot_counts_free_room_when_it_opens() -> None:
    sched = make(n_slots=1, window=4, adaptive=True, open_slots=False)
    slot = sched.slots[0]
    sched.observe(slot, 0.0)
    assert (slot.window, sched.free) == (4, 0)
    sched.open_slot(slot)
    assert sched.free == 4
    check_invariants(sched)


def test_observe_leaves_a_fixed_window_alone() -> None:
    sched = make(n_slots=1, window=2)
    slot = sched.slots[0]
    for duration in (0.0, 5.0, 0.0):
        sched.observe(slot, duration)
        assert (slot.window, sched.free, slot.busy_ewma) == (2, 2, -1.0)


def test_a_shrunk_window_keeps_what_it_holds() -> None:
    sched = make(n_slots=1, window=3, adaptive=True)
    slot = sched.slots[0]
    sched.observe(slot, 0.0)
    tasks = add(sched, 4)
    dispatch(sched)
    assert slot.inflight == tasks[:3]
    start(sched, tasks[0])
    report(sched, tasks[0])
    sched.observe(slot, 1.0)
    assert slot.window == 1
    assert slot.inflight == tasks[1:3]  # nothing is taken back by a shrink
    assert dispatch(sched) == []  # but nothing more is handed out
    check_invariants(sched)


def test_an_idle_slot_gets_work_while_another_s_window_is_shrunk() -> None:
    sched = make(n_slots=2, window=3, adaptive=True)
    fast, slow = sched.slots
    sched.observe(fast, 0.0)
    sched.observe(slow, 0.0)
    add(sched, 8)
    dispatch(sched)
    assert (len(fast.inflight), len(slow.inflight)) == (3, 3)
    for slot in (fast, slow):  # the first call on each ran long: both windows shrink to 1
        t = slot.inflight[0]
        start(sched, t)
        report(sched, t)
        sched.observe(slot, 1.0)
    for t in list(fast.inflight):  # fast runs what it prefetched
        start(sched, t)
        report(sched, t)
    assert fast.inflight == []
    assert len(slow.inflight) == 2
    assert len(sched.queued_tasks()) == 2
    # Room is counted per slot, never below zero: slow's over-full window hides nothing.
    assert sched.free == 1
    assert [s for s, _ in dispatch(sched)] == [fast]


# --- any sequence ----------------------------------------------------------------------------

# Each letter is one step (see below); repeated letters are drawn more often, so that
# short sequences already reach tasks that run, settle and move between slots.
OPS = "aaaAAAssscfxwkRgtoCmOr"


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "adaptive"])
@settings(max_examples=300)
@given(ops=st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 50)), min_size=4, max_size=80))
def test_books_balance_under_any_sequence(adaptive: bool, ops: list[tuple[str, int]]) -> None:
    """Random add / assign / start / report / cancel / give back / crash / reopen / steal / observe.

    After every step the invariants hold and every task is in exactly one place: settled,
    in the pool's queue, or held (unsettled) by one slot. With fixed windows, nothing stays
    queued while a slot with room and budget is accepting.
    """
    budgets = (None, None, 2)  # what each slot's worker may be handed (slot 2: recycled often)
    sched = make(n_slots=3, window=2, adaptive=adaptive)
    for s, b in zip(sched.slots, budgets, strict=True):
        s.budget = b
    budget_left = list(budgets)  # the model: what each slot's budget must be
    live: list[Task[Any]] = []
    now = 1.0

    def held_in_window() -> list[Task[Any]]:
        return [t for t in sched.active_tasks() if t.state is TaskState.QUEUED]

    def spend(slot: Slot, k: int = 1) -> None:
        left = budget_left[slot.id]
        if left is not None:
            budget_left[slot.id] = left - k

    def assign() -> list[Task[Any]]:
        room = {s.id: s.window - len(s.inflight) for s in sched.slots}
        handed = dispatch(sched, now)
        for s, t in handed:
            assert s.accepting
            assert t.slot is s
            assert t.dispatched_at == now
            room[s.id] -= 1
            assert room[s.id] >= 0
            spend(s)
        if not adaptive and sched.queued_tasks():
            assert all(len(s.inflight) >= s.window or s.budget == 0 for s in sched.slots if s.accepting)
        return [t for _, t in handed]

    for op, n in ops:
        now += 1.0
        slot = sched.slots[n % 3]
        if op == "a":
            live.extend(add(sched, 1 + n % 3))
        elif op == "A":
            assign()
        elif op == "s":
            waiting = held_in_window() or assign()
            if waiting:
                start(sched, waiting[n % len(waiting)], at=now)
        elif op in "cf":
            running = running_tasks(sched)
            if running:
                t = running[n % len(running)]
                src = slot_of(t)
                report(sched, t, SUCCEEDED if op == "c" else FAILED, at=now)
                sched.observe(src, 0.0 if op == "c" else 1.0)  # as the core does after a report
                assert t.slot is None
        elif op == "x":
            queued = sched.queued_tasks()
            if queued:
                cancel_queued(sched, queued[n % len(queued)])
        elif op == "w":
            waiting = held_in_window()
            if waiting:
                t = waiting[n % len(waiting)]
                spend(slot_of(t), -1)
                cancel_unstarted(sched, t)
        elif op == "k":
            unsettled = [t for t in sched.active_tasks() if not t.done()]
            if unsettled:
                cancel_held(sched, unsettled[n % len(unsettled)])
        elif op == "R":
            being_stopped = [t for t in sched.active_tasks() if t.done()]
            if being_stopped:
                stopped(sched, being_stopped[n % len(being_stopped)])
        elif op == "g":
            waiting = held_in_window()
            if waiting:
                t = waiting[n % len(waiting)]
                spend(slot_of(t), -1)
                sched.give_back(slot_of(t), t)
                assert t in sched.queue  # ahead of the tasks added after it (checked below)
        elif op == "t":
            was_running = [t for t in slot.inflight if t.state is TaskState.RUNNING]
            unstarted = [t for t in slot.inflight if t.state is TaskState.QUEUED]
            assert crash(sched, slot) == was_running
            assert all(t in sched.queue for t in unstarted)  # back, in the order added (below)
            assert slot.inflight == []
            assert not slot.accepting
        elif op == "o":
            if not slot.accepting and not slot.inflight:
                slot.budget = budget_left[slot.id] = budgets[slot.id]  # a new worker: a new budget
            sched.open_slot(slot, now)
        elif op == "C":
            sched.close_slot(slot)
        elif op == "m":
            for src, t, dst in list(sched.steal_candidates()):
                assert not sched.queue
                assert dst.accepting
                assert not dst.inflight
                assert t.state is TaskState.QUEUED
                sched.move(t, src, dst)
                spend(src, -1)
                spend(dst)
                assert t.slot is dst
        elif op == "O":
            sched.observe(slot, 0.0 if n % 2 else 1.0)
        elif op == "r":
            closed = sched.close_round()
            if closed is not None:
                assert sched.drained
                assert all(t.done() for t in closed)
        check_invariants(sched)
        assert [s.budget for s in sched.slots] == budget_left
        queued_ids = {t.id for t in sched.queued_tasks()}
        held_ids = {t.id for t in sched.active_tasks() if not t.done()}
        for t in live:
            assert [t.done(), t.id in queued_ids, t.id in held_ids].count(True) == 1
    done = [t for t in live if t.done()]
    assert sched.count("completed") == len(done)
    assert sched.count("total") == len(live)


def test_priority_levels_emptied_by_lazy_removal_are_dropped() -> None:
    # oldest_queued() drops settled tasks from the heads of the queues: a level may be left
    # empty; taking the next task skips it (and never fails on an empty queue).
    sched = Scheduler(keep_records=0)
    slot = Slot(0, window=1)
    sched.add_slot(slot)
    sched.open_slot(slot)
    doomed = new_task()
    doomed.priority = 5
    sched.add(doomed)
    doomed._state = TaskState.CANCELLED  # settled while queued
    sched.n_queued -= 1
    assert sched.oldest_queued() is None  # the level of priority 5 is empty now
    assert list(sched.assignments(0.0)) == []
    low = new_task()
    low.priority = -1
    sched.add(low)
    assert [t for _, t in sched.assignments(0.0)] == [low]
