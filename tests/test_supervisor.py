"""Supervision decisions and busy time, with no worker and no event loop.

``next_step`` decides what happens to a slot whose worker ended and ``still_wanted``
whether a restart is still wanted after its delay; both are plain functions of their
arguments (``Backoff`` keeps the failure count, fed explicit ``now`` values), so each rule
is one row of a table here. ``BusyMeter`` is fed intervals and read at chosen times.
"""

from __future__ import annotations

from typing import Literal

import pytest

from taskpool import PoolState, RestartPolicy
from taskpool._busy import BUSY_WINDOW, BusyMeter
from taskpool._restart import Backoff
from taskpool._supervisor import PLANNED, START_ATTEMPTS, Dead, Replace, Step, Stop, next_step, still_wanted
from taskpool._workers import WorkerExit

RUNNING, CLOSING, CLOSED, BROKEN, NEW = (
    PoolState.RUNNING,
    PoolState.CLOSING,
    PoolState.CLOSED,
    PoolState.BROKEN,
    PoolState.NEW,
)

CRASH = WorkerExit(failed=True, reason="exit code -9", exitcode=-9, signal=9)
CLEAN = WorkerExit(failed=False, reason="stopped", exitcode=0)
RETIRED = WorkerExit(failed=False, reason="retired")
RECYCLED = WorkerExit(failed=False, reason="recycled", exitcode=0)


def step(
    exit: WorkerExit,
    backoff: Backoff | None = None,
    *,
    pool: PoolState = RUNNING,
    stopping: bool = False,
    queued: bool = False,
    ever_up: bool = True,
    now: float = 100.0,
    init_failures: int = 0,
) -> Step:
    return next_step(
        exit,
        pool=pool,
        stopping=stopping,
        queued=queued,
        backoff=backoff if backoff is not None else Backoff(RestartPolicy()),
        ever_up=ever_up,
        now=now,
        init_failures=init_failures,
    )


def fail_times(backoff: Backoff, n: int, *, ever_up: bool = True, start: float = 100.0) -> list[Step]:
    """``n`` crashes in a row, one second apart, none after a worker stayed up."""
    return [step(CRASH, backoff, ever_up=ever_up, now=start + i) for i in range(n)]


# --- next_step: planned replacements and stopping -----------------------------------------


def test_planned_reasons() -> None:
    assert frozenset({"retired", "recycled"}) == PLANNED


@pytest.mark.parametrize("exit", [RETIRED, RECYCLED], ids=["retired", "recycled"])
@pytest.mark.parametrize("pool", [RUNNING, CLOSING])
@pytest.mark.parametrize("queued", [False, True])
def test_a_planned_replacement_is_at_once_and_not_a_failure(exit: WorkerExit, pool: PoolState, queued: bool) -> None:
    backoff = Backoff(RestartPolicy(mode="never", limit=1))  # the policy does not apply
    assert step(exit, backoff, pool=pool, queued=queued) == Replace(0.0, planned=True)
    assert (backoff.failures, backoff.attempt, backoff.last_failures) == (0, 0, [])


@pytest.mark.parametrize("exit", [CRASH, CLEAN, RETIRED, RECYCLED], ids=["crash", "clean", "retired", "recycled"])
@pytest.mark.parametrize("pool", [RUNNING, CLOSING, CLOSED, BROKEN])
def test_stop_when_the_workers_are_being_stopped(exit: WorkerExit, pool: PoolState) -> None:
    backoff = Backoff(RestartPolicy(mode="always"))
    assert step(exit, backoff, pool=pool, stopping=True, queued=True) == Stop()
    assert (backoff.failures, backoff.attempt) == (0, 0)  # not counted


@pytest.mark.parametrize(
    ("exit", "pool"),
    [
        (CRASH, CLOSED),
        (RETIRED, CLOSED),
        (RECYCLED, BROKEN),
        (CRASH, BROKEN),
        (CRASH, NEW),
    ],
)
@pytest.mark.parametrize("queued", [False, True])
def test_stop_when_the_pool_is_not_running(exit: WorkerExit, pool: PoolState, queued: bool) -> None:
    backoff = Backoff(RestartPolicy(mode="always"))
    assert step(exit, backoff, pool=pool, queued=queued) == Stop()
    assert (backoff.failures, backoff.attempt) == (0, 0)


@pytest.mark.parametrize("exit", [CRASH, CLEAN], ids=["crash", "clean"])
def test_stop_when_the_pool_closes_with_nothing_queued(exit: WorkerExit) -> None:
    backoff = Backoff(RestartPolicy(mode="always"))
    assert step(exit, backoff, pool=CLOSING, queued=False) == Stop()
    assert (backoff.failures, backoff.attempt) == (0, 0)


def test_a_failed_worker_is_replaced_while_closing_drains_queued_work() -> None:
    # Nothing else would run the queued tasks: the worker is replaced (with backoff).
    assert still_wanted(pool=CLOSING, stopping=False, queued=True)
    assert isinstance(step(CRASH, pool=CLOSING, queued=True), Replace)


# --- next_step: the restart policy --------------------------------------------------------


@pytest.mark.parametrize("mode", ["on-failure", "always"])
def test_a_failed_worker_is_replaced_with_backoff(mode: Literal["on-failure", "always"]) -> None:
    backoff = Backoff(RestartPolicy(mode=mode, delay=0.5, backoff=2.0, max_delay=30.0))
    assert step(CRASH, backoff) == Replace(0.5, planned=False)
    assert (backoff.failures, backoff.attempt, backoff.last_failures) == (1, 1, [CRASH.reason])


def test_a_failed_worker_under_never_makes_the_slot_dead() -> None:
    backoff = Backoff(RestartPolicy(mode="never"))
    assert step(CRASH, backoff) == Dead("restart mode 'never'")
    assert (backoff.failures, backoff.attempt) == (1, 0)


def test_a_clean_exit_under_on_failure_makes_the_slot_dead() -> None:
    backoff = Backoff(RestartPolicy(mode="on-failure"))
    assert step(CLEAN, backoff) == Dead("restart mode 'on-failure'")
    assert backoff.failures == 0


def test_a_clean_exit_under_never_makes_the_slot_dead() -> None:
    assert step(CLEAN, Backoff(RestartPolicy(mode="never"))) == Dead("restart mode 'never'")


def test_a_clean_exit_under_always_is_replaced_after_the_delay_without_backoff() -> None:
    backoff = Backoff(RestartPolicy(mode="always", delay=0.25, backoff=4.0))
    fail_times(backoff, 2)  # two failures: the next failure would wait 0.25 * 4 ** 2
    assert step(CLEAN, backoff, now=200.0) == Replace(0.25, planned=False)
    assert step(CLEAN, backoff, now=201.0) == Replace(0.25, planned=False)
    assert backoff.failures == 2  # a clean exit neither adds nor resets
    assert backoff.attempt == 4


def test_backoff_delays_double_and_are_capped_by_max_delay() -> None:
    backoff = Backoff(RestartPolicy(delay=0.1, backoff=2.0, max_delay=1.0))
    steps = fail_times(backoff, 7)
    assert all(isinstance(s, Replace) and not s.planned for s in steps)
    delays = [s.delay for s in steps if isinstance(s, Replace)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert backoff.attempt == 7
    assert backoff.last_failures == [CRASH.reason] * 5  # the last five kept


def test_backoff_of_one_keeps_the_delay() -> None:
    backoff = Backoff(RestartPolicy(delay=0.3, backoff=1.0))
    assert [s.delay for s in fail_times(backoff, 4) if isinstance(s, Replace)] == pytest.approx([0.3] * 4)


def test_the_restart_limit_spent_makes_the_slot_dead() -> None:
    backoff = Backoff(RestartPolicy(limit=3))
    first, second, third = fail_times(backoff, 3)
    assert isinstance(first, Replace)
    assert isinstance(second, Replace)
    assert third == Dead("restart limit 3 spent")
    assert backoff.exhausted
    assert backoff.attempt == 2  # limit=3 allows two restarts


def test_a_limit_of_one_allows_no_restart_even_before_the_worker_was_up() -> None:
    backoff = Backoff(RestartPolicy(limit=1))
    assert step(CRASH, backoff, ever_up=False) == Dead("restart limit 1 spent")


def test_reset_after_resets_the_failure_count() -> None:
    backoff = Backoff(RestartPolicy(delay=0.1, backoff=2.0, limit=3, reset_after=60.0))
    fail_times(backoff, 2, start=100.0)
    assert backoff.failures == 2
    backoff.up(110.0)
    # Up 60 s: the count restarts from this failure (delay back to the first one).
    assert step(CRASH, backoff, now=170.0) == Replace(0.1, planned=False)
    assert backoff.failures == 1


def test_a_worker_up_shorter_than_reset_after_keeps_the_count() -> None:
    backoff = Backoff(RestartPolicy(delay=0.1, backoff=2.0, limit=3, reset_after=60.0))
    fail_times(backoff, 2, start=100.0)
    backoff.up(110.0)
    assert step(CRASH, backoff, now=169.5) == Dead("restart limit 3 spent")
    assert backoff.failures == 3


def test_reset_after_counts_only_the_last_worker_s_time_up() -> None:
    backoff = Backoff(RestartPolicy(limit=3, reset_after=60.0))
    backoff.up(10.0)
    assert isinstance(step(CRASH, backoff, now=20.0), Replace)
    # This worker never answered: the earlier up time is not its own.
    assert isinstance(step(CRASH, backoff, now=500.0), Replace)
    assert step(CRASH, backoff, now=501.0) == Dead("restart limit 3 spent")


def test_start_attempts_failures_before_ever_up_make_the_slot_dead() -> None:
    backoff = Backoff(RestartPolicy())  # no limit
    steps = fail_times(backoff, START_ATTEMPTS, ever_up=False)
    assert all(isinstance(s, Replace) for s in steps[:-1])
    assert steps[-1] == Dead(f"failed {START_ATTEMPTS} times before answering its handshake")


def test_start_attempts_do_not_apply_once_a_worker_was_up() -> None:
    backoff = Backoff(RestartPolicy())  # no limit
    steps = fail_times(backoff, START_ATTEMPTS + 5, ever_up=True)
    assert all(isinstance(s, Replace) for s in steps)


def test_the_start_attempts_rule_comes_before_the_policy_s_limit() -> None:
    backoff = Backoff(RestartPolicy(limit=START_ATTEMPTS))
    *_, last = fail_times(backoff, START_ATTEMPTS, ever_up=False)
    assert last == Dead(f"failed {START_ATTEMPTS} times before answering its handshake")


def test_initializer_failures_in_a_row_make_the_slot_dead_even_after_it_was_up() -> None:
    # A failing initializer fails every new worker the same way: not retried for ever.
    init_failed = WorkerExit(failed=True, reason="initializer failed: ValueError: no db", exitcode=1)
    backoff = Backoff(RestartPolicy())  # no limit
    steps = [
        step(init_failed, backoff, ever_up=True, now=100.0 + i, init_failures=i + 1) for i in range(START_ATTEMPTS)
    ]
    assert all(isinstance(s, Replace) for s in steps[:-1])
    assert steps[-1] == Dead(f"its initializer failed {START_ATTEMPTS} times in a row")


# --- still_wanted -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pool", "stopping", "queued", "wanted"),
    [
        (RUNNING, False, False, True),
        (RUNNING, False, True, True),
        (RUNNING, True, True, False),
        (CLOSING, False, True, True),  # closing still drains queued work
        (CLOSING, False, False, False),
        (CLOSING, True, True, False),
        (CLOSED, False, True, False),
        (BROKEN, False, True, False),
        (NEW, False, True, False),
    ],
)
def test_still_wanted(pool: PoolState, stopping: bool, queued: bool, wanted: bool) -> None:
    assert still_wanted(pool=pool, stopping=stopping, queued=queued) is wanted


# --- BusyMeter --------------------------------------------------------------------------------


def test_busy_window_is_ten_seconds() -> None:
    assert BUSY_WINDOW == 10


def test_an_interval_inside_the_window_gives_its_share() -> None:
    m = BusyMeter()
    m.add(2.25, 2.75)
    assert m.utilisation(10.0, []) == pytest.approx(0.5 / 10)
    m.add(5.0, 6.0)
    assert m.utilisation(10.0, []) == pytest.approx(1.5 / 10)


def test_empty_or_reversed_intervals_count_nothing() -> None:
    m = BusyMeter()
    m.add(3.0, 3.0)
    m.add(4.0, 3.5)
    assert m.utilisation(10.0, []) == 0.0


def test_an_interval_spanning_several_seconds() -> None:
    m = BusyMeter()
    m.add(3.5, 6.25)
    assert m.utilisation(10.0, []) == pytest.approx(2.75 / 10)
    # Read later, only what falls in [4, 14] counts.
    assert m.utilisation(14.0, []) == pytest.approx(2.25 / 10)
    assert m.utilisation(16.0, []) == pytest.approx(0.25 / 10)


def test_old_intervals_fall_out_after_the_window() -> None:
    m = BusyMeter()
    m.add(0.0, 1.0)
    assert m.utilisation(10.0, []) == pytest.approx(0.1)
    assert m.utilisation(11.0, []) == 0.0
    assert m.utilisation(100.0, []) == 0.0


def test_a_bucket_reused_for_a_later_second_forgets_the_old_one() -> None:
    m = BusyMeter()
    m.add(1.0, 2.0)
    m.add(12.0, 12.5)  # same bucket as second 1 (the ring holds BUSY_WINDOW + 1 seconds)
    assert m.utilisation(12.5, []) == pytest.approx(0.5 / 10)
    m.add(13.0, 13.5)
    assert m.utilisation(14.0, []) == pytest.approx(1.0 / 10)


def test_calls_still_running_count_from_their_start() -> None:
    m = BusyMeter()
    assert m.utilisation(10.0, [8.0]) == pytest.approx(2.0 / 10)
    assert m.utilisation(10.0, [8.0, 9.0]) == pytest.approx(3.0 / 10)
    # Running since before the window: only the window's part counts.
    assert m.utilisation(20.0, [5.0]) == 1.0
    m.add(1.0, 2.0)
    assert m.utilisation(10.0, [8.0]) == pytest.approx(3.0 / 10)


def test_up_since_shortens_the_denominator() -> None:
    m = BusyMeter()
    m.up_since = 8.0
    m.add(8.0, 9.0)
    assert m.utilisation(10.0, []) == pytest.approx(1.0 / 2)
    assert m.utilisation(10.0, [9.5]) == pytest.approx(1.5 / 2)
    # Up longer than the window: the window rules again.
    assert m.utilisation(30.0, []) == 0.0
    m.add(25.0, 30.0)
    assert m.utilisation(30.0, []) == pytest.approx(5.0 / 10)


def test_a_worker_just_up_has_no_utilisation() -> None:
    m = BusyMeter()
    m.up_since = 10.0
    assert m.utilisation(10.0, [9.0]) == 0.0
    m.up_since = 11.0  # clocks disagree: never divide by zero or less
    assert m.utilisation(10.0, [9.0]) == 0.0


def test_utilisation_is_clamped_to_0_1() -> None:
    m = BusyMeter()
    m.add(0.0, 10.0)
    m.add(0.0, 10.0)  # more busy time than a capacity-1 worker can have
    assert m.utilisation(10.0, [0.0]) == 1.0
    idle = BusyMeter()
    assert idle.utilisation(10.0, [15.0]) == 0.0  # a start after now (another clock)


def test_capacity_divides() -> None:
    m = BusyMeter(capacity=2)
    assert m.capacity == 2
    m.add(0.0, 10.0)
    assert m.utilisation(10.0, []) == pytest.approx(0.5)
    assert m.utilisation(10.0, [5.0]) == pytest.approx(0.75)
    assert m.utilisation(10.0, [0.0]) == 1.0
    m.add(0.0, 10.0)
    m.add(0.0, 10.0)
    assert m.utilisation(10.0, []) == 1.0


def test_a_call_longer_than_the_window_counts_its_last_ten_seconds() -> None:
    m = BusyMeter()
    m.add(0.0, 1000.0)
    assert m.utilisation(1000.0, []) == 1.0
    assert m.utilisation(1005.0, []) == pytest.approx(0.5)


def test_a_long_call_does_not_wipe_concurrent_calls() -> None:
    # Two calls at once on a capacity-2 worker: [19, 20] and a long one, [8, 20].
    # In [10, 20] they were busy 1 + 10 = 11 of 20 capacity-seconds, whatever the order
    # their ends are reported in.
    reported_short_first = BusyMeter(capacity=2)
    reported_short_first.add(19.0, 20.0)
    reported_short_first.add(8.0, 20.0)
    reported_long_first = BusyMeter(capacity=2)
    reported_long_first.add(8.0, 20.0)
    reported_long_first.add(19.0, 20.0)
    assert reported_long_first.utilisation(20.0, []) == pytest.approx(11 / 20)
    assert reported_short_first.utilisation(20.0, []) == pytest.approx(11 / 20)
