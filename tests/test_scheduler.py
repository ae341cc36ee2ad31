"""The scheduler's rules, with no pool, no workers and no event loop.

``Scheduler`` is plain bookkeeping (like httpcore's pool): these tests drive it the way the
pool does (``add`` -> ``assignments`` -> ``started`` -> ``release`` + ``settled``) and check
what it decides and that ``total == queued + active + completed`` holds throughout.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskpool import TaskState
from taskpool._scheduler import FIELDS, Scheduler, Slot
from taskpool._task import Task

from . import _funcs

ids = iter(range(1, 1_000_000))


def new_task(task_id: int | None = None) -> Task[int]:
    return Task(None, task_id if task_id is not None else next(ids), _funcs.add, (1, 2), None, None, 0.0)  # type: ignore[arg-type]


def make(n_slots: int = 2, window: int = 1, *, keep_records: int = 100, open_slots: bool = True) -> Scheduler:
    sched = Scheduler(max_queue=None, keep_records=keep_records)
    for i in range(n_slots):
        slot = Slot(i, window)
        sched.add_slot(slot)
        if open_slots:
            sched.open_slot(slot)
    return sched


def add(sched: Scheduler, n: int) -> list[Task[int]]:
    tasks = [new_task() for _ in range(n)]
    for t in tasks:
        sched.add(t)
    return tasks


def start(sched: Scheduler, task: Task[int]) -> None:
    sched.started(task, task.wslot.id, 1.0)


def finish(sched: Scheduler, task: Task[int], state: TaskState = TaskState.SUCCEEDED) -> bool:
    """What the pool does when a worker reports ``task`` done."""
    previous = task.state
    if task.wslot is not None:
        sched.release(task.wslot, task)
    task._settle(state, 1 if state is TaskState.SUCCEEDED else None, None, 2.0)
    return sched.settled(task, previous)


def cancel_queued(sched: Scheduler, task: Task[int]) -> None:
    """What the pool does when a queued task is cancelled: settle it, leave it in the deque."""
    assert task.state is TaskState.QUEUED
    task._settle(TaskState.CANCELLED, None, None, 2.0)
    sched.settled(task, TaskState.QUEUED)


def check_invariants(sched: Scheduler) -> None:
    c = {f: sched.count(f) for f in FIELDS}
    assert c["total"] == c["queued"] + c["active"] + c["completed"]
    assert c["completed"] == c["succeeded"] + c["failed"] + c["cancelled"]
    assert c["remaining"] == c["queued"] + c["active"]
    assert c["started"] >= c["active"]
    assert min(c.values()) >= 0
    assert sched.free == sum(s.window - len(s.inflight) for s in sched.slots if s.accepting)
    assert len(sched.queued_tasks()) == c["queued"]
    assert len(sched.running_tasks()) == c["active"]
    for s in sched.slots:
        assert len(s.inflight) <= s.window
        assert all(t.wslot is s for t in s.inflight)


# --- assignment ------------------------------------------------------------------------


def test_assignment_prefers_idle_slots_before_filling_windows() -> None:
    sched = make(n_slots=3, window=2)
    first = add(sched, 3)
    pairs = list(sched.assignments())
    # One task per slot: nobody prefetches while another slot sits idle.
    assert [(s.id, t) for s, t in pairs] == [(0, first[0]), (1, first[1]), (2, first[2])]
    second = add(sched, 4)
    pairs = list(sched.assignments())
    assert sorted(s.id for s, _ in pairs) == [0, 1, 2]  # windows filled, one more each
    assert [t for _, t in pairs] == second[:3]
    assert sched.free == 0
    assert list(sched.queue) == [second[3]]
    assert list(sched.assignments()) == []  # no room: nothing handed out
    check_invariants(sched)


def test_assignment_prefers_the_least_loaded_slot() -> None:
    sched = make(n_slots=2, window=3)
    a, b, c = add(sched, 3)
    sched.slots[0].inflight.append(new_task())  # simulate: slot 0 already holds one
    sched.slots[0].inflight[-1].wslot = sched.slots[0]
    sched.free -= 1
    pairs = list(sched.assignments())
    assert [(s.id, t) for s, t in pairs] == [(1, a), (0, b), (1, c)]


def test_window_bounds_tasks_in_flight_per_slot() -> None:
    sched = make(n_slots=1, window=2)
    tasks = add(sched, 5)
    assert [t for _, t in sched.assignments()] == tasks[:2]
    assert len(sched.slots[0].inflight) == 2
    start(sched, tasks[0])
    assert list(sched.assignments()) == []  # a running task still holds its place
    finish(sched, tasks[0])
    assert [t for _, t in sched.assignments()] == [tasks[2]]
    check_invariants(sched)


def test_closed_slots_get_no_work_until_opened() -> None:
    sched = make(n_slots=2, window=1, open_slots=False)
    tasks = add(sched, 2)
    assert sched.free == 0
    assert list(sched.assignments()) == []
    sched.open_slot(sched.slots[1])
    assert [(s.id, t) for s, t in sched.assignments()] == [(1, tasks[0])]
    sched.open_slot(sched.slots[1])  # idempotent: free is not counted twice
    assert sched.free == 0
    sched.close_slot(sched.slots[1])
    sched.close_slot(sched.slots[1])
    assert sched.free == 0
    check_invariants(sched)


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
    assert [t for _, t in sched.assignments()] == [c]
    assert not sched.queue
    check_invariants(sched)


def test_a_task_already_handed_out_is_not_handed_out_twice() -> None:
    sched = make(n_slots=2, window=1)
    (a,) = add(sched, 1)
    assert [t for _, t in sched.assignments()] == [a]
    sched.queue.append(a)  # a stale entry (e.g. requeued and reassigned)
    assert list(sched.assignments()) == []
    check_invariants(sched)


# --- taking work back ----------------------------------------------------------------------


def test_take_back_requeues_unstarted_in_order_and_returns_running() -> None:
    sched = make(n_slots=2, window=3)
    tasks = add(sched, 6)
    handed = list(sched.assignments())
    slot0 = sched.slots[0]
    on0 = [t for s, t in handed if s is slot0]
    assert on0 == [tasks[0], tasks[2], tasks[4]]
    start(sched, tasks[0])
    later = add(sched, 1)[0]
    running = sched.take_back(slot0)
    assert running == [tasks[0]]
    # Unstarted ones go back to the head of the queue, in their original order.
    assert list(sched.queue) == [tasks[2], tasks[4], later]
    assert slot0.inflight == []
    assert not slot0.accepting
    assert all(t.wslot is None for t in (tasks[0], tasks[2], tasks[4]))
    # The running one is still active until the pool settles it (as WorkerCrashed).
    assert sched.count("active") == 1
    tasks[0]._settle(TaskState.FAILED, None, RuntimeError("crashed"), 3.0)
    sched.settled(tasks[0], TaskState.RUNNING)
    check_invariants(sched)
    # The other slot picks up the requeued tasks first.
    finish(sched, tasks[1])
    assert [t for _, t in sched.assignments()] == [tasks[2]]
    check_invariants(sched)


def test_take_back_drops_tasks_that_settled_meanwhile() -> None:
    sched = make(n_slots=1, window=2)
    a, b = add(sched, 2)
    list(sched.assignments())
    cancel_queued(sched, b)
    assert sched.take_back(sched.slots[0]) == []
    assert list(sched.queue) == [a]
    check_invariants(sched)


def test_requeue_puts_a_returned_task_first() -> None:
    sched = make(n_slots=1, window=1)
    a, b = add(sched, 2)
    [(slot, task)] = list(sched.assignments())
    sched.release(slot, task)
    sched.requeue(task)
    assert list(sched.queue) == [a, b]
    assert [t for _, t in sched.assignments()] == [a]
    check_invariants(sched)


def test_release_of_unknown_task_is_a_no_op() -> None:
    sched = make(n_slots=1, window=1)
    free = sched.free
    sched.release(sched.slots[0], new_task())
    assert sched.free == free


def test_steal_moves_a_prefetched_task_to_an_idle_slot() -> None:
    sched = make(n_slots=2, window=2)
    a, b = add(sched, 2)
    sched.close_slot(sched.slots[1])
    list(sched.assignments())
    assert sched.slots[0].inflight == [a, b]
    start(sched, a)
    assert list(sched.steal_candidates()) == []  # slot 1 is not accepting
    sched.open_slot(sched.slots[1])
    [(src, task, dst)] = list(sched.steal_candidates())
    assert (src.id, task, dst.id) == (0, b, 1)
    sched.move(task, src, dst)
    assert sched.slots[1].inflight == [b]
    assert b.wslot is sched.slots[1]
    check_invariants(sched)


def test_no_steal_while_work_is_queued() -> None:
    sched = make(n_slots=2, window=2)
    add(sched, 1)
    assert list(sched.steal_candidates()) == []


# --- counts, records, rounds ------------------------------------------------------------------


def test_counts_follow_a_task_through_its_life() -> None:
    sched = make(n_slots=1, window=1)
    assert {f: sched.count(f) for f in FIELDS} == dict.fromkeys(FIELDS, 0)
    assert sched.drained
    (t,) = add(sched, 1)
    assert (sched.count("queued"), sched.count("total"), sched.count("remaining")) == (1, 1, 1)
    list(sched.assignments())
    assert sched.count("queued") == 1  # handed to a worker but not started: still queued
    start(sched, t)
    assert (sched.count("queued"), sched.count("active"), sched.count("started")) == (0, 1, 1)
    assert not sched.drained
    finish(sched, t, TaskState.FAILED)
    assert (sched.count("active"), sched.count("failed"), sched.count("completed")) == (0, 1, 1)
    assert sched.drained
    check_invariants(sched)


def test_unknown_field_raises_value_error_naming_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="unknown status field 'nope'.*queued"):
        make().count("nope")


def test_records_are_bounded_but_counts_stay_exact() -> None:
    sched = make(n_slots=1, window=1, keep_records=3)
    tasks = add(sched, 10)
    for t in tasks:
        finish(sched, t, TaskState.SUCCEEDED)  # settled straight from the queue
    assert sched.count("succeeded") == 10
    assert [r.id for r in sched.records] == [t.id for t in tasks[-3:]]
    none_kept = make(keep_records=0)
    (t,) = add(none_kept, 1)
    finish(none_kept, t)
    assert list(none_kept.records) == []
    assert none_kept.count("completed") == 1


def test_rounds_open_on_first_add_and_close_when_drained() -> None:
    sched = make(n_slots=2, window=1)
    assert not sched.round_open
    a, b = new_task(), new_task()
    assert sched.add(a) is True  # opens round 1
    assert sched.add(b) is False
    assert (sched.round_open, sched.round_no) == (True, 1)
    list(sched.assignments())
    start(sched, a)
    start(sched, b)
    assert finish(sched, b) is True  # first to settle in the round: race
    assert sched.close_round() is None  # not drained yet
    assert finish(sched, a) is False
    assert sched.close_round() == [b, a]  # in settling order
    assert not sched.round_open
    assert sched.close_round() is None  # closes once
    c = new_task()
    assert sched.add(c) is True
    assert sched.round_no == 2
    cancel_queued(sched, c)
    assert sched.close_round() == [c]
    check_invariants(sched)


@given(st.lists(st.tuples(st.sampled_from("aAscfxtor"), st.integers(0, 50)), max_size=60))
def test_counts_invariant_under_any_sequence(ops: list[tuple[str, int]]) -> None:
    """Random add / assign / start / finish / cancel / take_back / reopen: the books balance."""
    sched = make(n_slots=3, window=2)
    live: list[Task[int]] = []
    for op, n in ops:
        if op == "a":
            live.extend(add(sched, 1 + n % 3))
        elif op == "A":
            list(sched.assignments())
        elif op == "s":
            handed = [t for s in sched.slots for t in s.inflight if t.state is TaskState.QUEUED]
            if handed:
                start(sched, handed[n % len(handed)])
        elif op in "cf":
            running = sched.running_tasks()
            if running:
                finish(sched, running[n % len(running)], TaskState.SUCCEEDED if op == "c" else TaskState.FAILED)
        elif op == "x":
            queued = sched.queued_tasks()
            if queued:
                t = queued[n % len(queued)]
                if t.wslot is not None:
                    sched.release(t.wslot, t)
                cancel_queued(sched, t)
        elif op == "t":
            slot = sched.slots[n % 3]
            for t in sched.take_back(slot):
                t._settle(TaskState.FAILED, None, RuntimeError("crash"), 3.0)
                sched.settled(t, TaskState.RUNNING)
        elif op == "o":
            sched.open_slot(sched.slots[n % 3])
        elif op == "r":
            sched.close_round()
        check_invariants(sched)
    done = [t for t in live if t.done()]
    assert sched.count("completed") == len(done)
    assert sched.count("total") == len(live)
