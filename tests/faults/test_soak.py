"""A soak: 20,000 tasks on two process workers, with every kind of trouble mixed in.

Seeded, so a failure replays: ~0.2 % of the calls crash their worker, ~0.1 % are sync calls
that time out (their worker is killed), ~0.5 % async ones that time out (cancelled in the
worker), ~3 % raise, ~1 % are cancelled (right after being added, or later from another
task's done-callback, whatever state they are in by then), and the ``then``/``catch`` hooks
raise now and then. Intake goes through ``submit`` against ``max_queue``.

At the end: every task reached exactly one final state (one final event, one done-callback
call) and the outcome its plan says; every awaiter got it; the counts add up and match the
number of tasks added; the pool still works.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import time
from typing import Any

import pytest

from taskpool import (
    FunctionPool,
    RestartPolicy,
    Task,
    TaskCancelled,
    TaskState,
    TaskTimeout,
    WorkerCrashed,
)

from .. import _funcs as f
from .._support import settle
from . import _faults as x

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, pytest.mark.timeout(120)]

N = int(os.environ.get("TASKPOOL_SOAK_TASKS", "20000"))
SEED = int(os.environ.get("TASKPOOL_SOAK_SEED", "20261123"))


def make_plan(rng: random.Random, later: float = 0.005) -> list[tuple[Any, str, float | None, str]]:
    """(function, what, timeout, cancel) for each task; cancel is "", "now" or "later"
    (``later``: the share of tasks cancelled as an earlier task settles)."""
    plan = []
    for i in range(N):
        r = rng.random()
        if r < 0.002:
            fn, what, timeout = x.soak_sync, "crash", None
        elif r < 0.003:
            fn, what, timeout = x.soak_sync, "hang", 0.2
        elif r < 0.008:
            fn, what, timeout = x.soak_async, "hang", 0.02
        elif r < 0.038:
            fn, what, timeout = (x.soak_sync if i % 2 else x.soak_async), "raise", None
        else:
            fn, what, timeout = (x.soak_sync if i % 3 else x.soak_async), "ok", None
        c = rng.random()
        cancel = "now" if c < 0.005 else "later" if c < 0.005 + later else ""
        plan.append((fn, what, timeout, cancel))
    return plan


class _SlowHandler(logging.Handler):
    """A log handler that holds up the pool's loop for each record, as one rendering
    tracebacks to a terminal does."""

    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(0.002)


@pytest.mark.parametrize("intake", ["submit", "add_task", "retries", "slow-loop"])
async def test_soak(intake: str) -> None:
    """``submit`` against ``max_queue`` (every start reported as it happens), or
    ``add_task`` with no bound (starts told through the control block and the answers),
    or ``add_task`` with random priorities and one retry for every task (a crash or a
    hang happens again on the retry: same outcome, two attempts), or ``add_task`` on a
    pool whose loop is slow: each log record (a worker retired, a hook raised) holds it
    up, and so do the hooks now and then."""
    if intake == "slow-loop":
        logger = logging.getLogger("taskpool")
        handler, level = _SlowHandler(logging.INFO), logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            await _soak(intake)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
    else:
        await _soak(intake)


async def _soak(intake: str) -> None:
    rng = random.Random(SEED)
    # Slow loop: more tasks cancelled while they may run (the kill for one that runs a sync
    # call is decided, then made after a log record that holds up the loop).
    plan = make_plan(rng, 0.05 if intake == "slow-loop" else 0.005)
    prio = random.Random(SEED + 1)
    tasks: list[Task[Any]] = []
    done_calls: collections.Counter[int] = collections.Counter()
    cancelled: dict[int, bool] = {}  # index -> what cancel() returned
    later: dict[int, int] = {}  # when task k settles, cancel task later[k]
    hook_raised = 0

    def then_hook(result: Any, task: Task[Any]) -> None:
        nonlocal hook_raised
        if intake == "slow-loop" and result % 50 == 0:
            time.sleep(0.001)  # a hook that holds up the loop
        if result % 97 == 0:
            hook_raised += 1
            raise RuntimeError(f"then hook fails on {result}")

    def catch_hook(exc: BaseException, task: Task[Any]) -> None:
        nonlocal hook_raised
        if task.id % 7 == 0:
            hook_raised += 1
            raise RuntimeError(f"catch hook fails on task {task.id}")

    def on_done(task: Task[Any]) -> None:
        done_calls[task.id] += 1
        target = later.get(task.meta)
        if target is not None and target < len(tasks):
            cancelled[target] = tasks[target].cancel()

    policy = RestartPolicy(delay=0.01, backoff=1.0)
    t0 = time.monotonic()
    max_queue = 500 if intake == "submit" else None
    async with FunctionPool(2, worker="process", max_queue=max_queue, restart=policy, keep_records=1000) as pool:
        pool.then(then_hook).catch(catch_hook)
        async with pool.events.subscribe(
            "task.succeeded", "task.failed", "task.cancelled", "pool.hook_error", maxsize=4 * N
        ) as sub:
            for i, (fn, what, timeout, cancel) in enumerate(plan):
                if intake == "retries":
                    task = pool.add_task(fn, what, i, meta=i, timeout=timeout, priority=prio.randint(-2, 2), retries=1)
                elif max_queue is None:
                    task = pool.add_task(fn, what, i, meta=i, timeout=timeout)
                else:
                    task = await pool.submit(fn, what, i, meta=i, timeout=timeout)
                tasks.append(task)
                task.add_done_callback(on_done)
                if cancel == "now":
                    cancelled[i] = task.cancel()
                elif cancel == "later" and i >= 13:
                    later[i - rng.randint(1, 12)] = i  # cancelled as an earlier task settles
            async with asyncio.timeout(90):
                outcomes = [await settle(t) for t in tasks]
                await pool.join()
            assert await pool.add_task(f.add, 1, 1) == 2  # still usable
            finals: collections.Counter[int] = collections.Counter()
            hook_errors = 0
            while (event := sub.get_nowait()) is not None:
                if event.topic == "pool.hook_error":
                    hook_errors += 1
                else:
                    finals[event.task_id] += 1
            assert sub.dropped == 0
        counts = pool.status()
        snap = pool.snapshot()
    elapsed = time.monotonic() - t0

    # Every task settled exactly once, and its awaiter got the outcome its plan says.
    by_outcome: collections.Counter[str] = collections.Counter()
    for i, (task, outcome, (_, what, _, _)) in enumerate(zip(tasks, outcomes, plan, strict=True)):
        assert task.done()
        assert done_calls[task.id] == 1, (i, done_calls[task.id])
        assert finals[task.id] == 1, (i, finals[task.id])
        if cancelled.get(i):
            expected: Any = TaskCancelled
            assert task.state is TaskState.CANCELLED
        elif what == "ok":
            assert outcome == 2 * i, (i, outcome)
            by_outcome["ok"] += 1
            continue
        else:
            expected = {"raise": ValueError, "crash": WorkerCrashed, "hang": TaskTimeout}[what]
            if intake == "retries" and what in ("crash", "hang"):
                assert task.attempts == 2, (i, what, task.attempts)  # retried once, failed again
        assert type(outcome) is expected, (i, what, cancelled.get(i), outcome)
        by_outcome[expected.__name__] += 1

    # The counts add up, and match what was added (+1: the follow-up task).
    assert counts["total"] == N + 1
    assert counts["total"] == counts["queued"] + counts["active"] + counts["completed"]
    assert counts["completed"] == counts["succeeded"] + counts["failed"] + counts["cancelled"]
    assert (counts["queued"], counts["active"], counts["remaining"]) == (0, 0, 0)
    assert counts["succeeded"] == by_outcome["ok"] + 1
    assert counts["cancelled"] == by_outcome["TaskCancelled"]
    assert counts["failed"] == by_outcome["ValueError"] + by_outcome["WorkerCrashed"] + by_outcome["TaskTimeout"]
    assert hook_errors == hook_raised > 0
    # The trouble really happened, and the workers that died were replaced.
    assert by_outcome["WorkerCrashed"] > 0 and by_outcome["TaskTimeout"] > 0 and by_outcome["TaskCancelled"] > 0
    assert sum(w.restarts for w in snap.workers) >= by_outcome["WorkerCrashed"]
    print(
        f"\nsoak: {N} tasks in {elapsed:.1f} s; outcomes {dict(by_outcome)}; "
        f"restarts {sum(w.restarts for w in snap.workers)}; hook errors {hook_errors}"
    )
