"""The crash matrix: a fault at every stage of a call's round trip to a process worker.

Modelled on CPython's ``test_concurrent_futures/test_deadlock.py`` and loky's crash tests:
raise / exit / segfault / SIGKILL while

- pickling an argument in the parent (raise only: the test process must live),
- unpickling the function or an argument in the worker,
- running the function (sync and async),
- pickling the result in the worker,
- unpickling the result in the parent (raise only).

Every case runs next to a *bystander* task on the other worker and a few tasks queued
behind the victim, and checks: the victim's typed error; the bystander and the queued
tasks untouched; the dead worker replaced (and only it); a follow-up task succeeding; and
never a hang (each wait is bounded, the module has a timeout).
"""

from __future__ import annotations

import asyncio
import functools
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from taskpool import (
    FunctionPool,
    RemoteTraceback,
    SerializationError,
    TaskFailed,
    TaskState,
    WorkerCrashed,
)

from .. import _funcs as f
from .._support import WAIT, Gate, collect, collect_until, process_worker, settle
from . import _faults as x
from ._poll import poll_until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

WORKER_FAULTS = ["exit", "segfault", "sigkill"]


@dataclass
class Outcome:
    """What happened around one victim task."""

    victim: Any
    error: BaseException | Any
    restarts: dict[int, int]
    pids_before: dict[int, int | None]
    pids_after: dict[int, int | None]
    bystander_slot: int
    worker_events: list[Any] = field(default_factory=list)


async def run_victim(fn: Any, *args: Any, crashes: bool) -> Outcome:
    """Run ``fn(*args)`` on one worker of two while a bystander runs on the other and
    four tasks wait in the queue; check everything but the victim came through."""
    async with Gate() as gate, FunctionPool(2, worker="process") as pool:
        async with pool.events.subscribe("worker.*") as sub:
            bystander = pool.add_task(f.wait_gate, gate.path, "bystander")
            await gate.arrived("bystander")
            pids_before = {w.id: w.pid for w in pool.snapshot().workers}
            victim = pool.add_task(fn, *args)
            queued = [pool.add_task(f.add, i, 1) for i in range(4)]
            async with asyncio.timeout(WAIT):
                error = await settle(victim)
            events: list[Any] = []
            if crashes:
                # The dead worker's replacement comes up: exited -> restarted -> started.
                events = await collect_until(
                    sub, lambda e: e.topic == "worker.started" and e.worker_id == victim.worker_id
                )
            async with asyncio.timeout(WAIT):
                # The queued tasks ran on the replacement while the bystander still waits.
                assert [await t for t in queued] == [1, 2, 3, 4]
                assert bystander.state is TaskState.RUNNING
                gate.release("bystander")
                assert await bystander == "bystander"
                assert await pool.add_task(f.add, 20, 22) == 42
            snap = pool.snapshot()
        counts = pool.status()
    assert counts["total"] == counts["completed"] == 7
    assert bystander.worker_id is not None
    return Outcome(
        victim=victim,
        error=error,
        restarts={w.id: w.restarts for w in snap.workers},
        pids_before=pids_before,
        pids_after={w.id: w.pid for w in snap.workers},
        bystander_slot=bystander.worker_id,
        worker_events=events,
    )


def assert_crashed(out: Outcome, fault: str) -> None:
    """The victim failed with WorkerCrashed naming the exit code or signal; its worker, and
    only it, was replaced; the events tell the same story."""
    exc = out.error
    assert isinstance(exc, WorkerCrashed), repr(exc)
    assert out.victim.state is TaskState.FAILED
    slot = out.victim.worker_id
    assert slot is not None and slot != out.bystander_slot
    assert exc.worker_id == slot
    if fault == "exit":
        assert (exc.exitcode, exc.signal) == (x.EXIT_CODE, None)
        assert f"exited with code {x.EXIT_CODE}" in str(exc)
    else:
        sig = signal.SIGSEGV if fault == "segfault" else signal.SIGKILL
        assert (exc.exitcode, exc.signal) == (None, sig)
        assert sig.name in str(exc)
    assert f"task {out.victim.id}" in str(exc)
    assert out.victim.record.error.startswith("WorkerCrashed: ")
    # A fresh worker replaced the dead one; the bystander's worker is the same process.
    assert out.restarts == {slot: 1, out.bystander_slot: 0}
    assert out.pids_after[slot] not in (None, out.pids_before[slot])
    assert out.pids_after[out.bystander_slot] == out.pids_before[out.bystander_slot]
    exited = [e for e in out.worker_events if e.topic == "worker.exited" and e.worker_id == slot]
    assert len(exited) == 1
    assert (exited[0].exitcode, exited[0].signal) == (exc.exitcode, exc.signal)
    topics = [e.topic for e in out.worker_events if e.worker_id == slot]
    assert topics == ["worker.exited", "worker.restarted", "worker.started"]


def assert_untouched(out: Outcome) -> None:
    """No worker died: same processes, no restarts."""
    assert set(out.restarts.values()) == {0}
    assert out.pids_after == out.pids_before


def assert_remote_cause(exc: BaseException, *needles: str) -> None:
    cause = exc.__cause__
    assert isinstance(cause, RemoteTraceback)
    for needle in needles:
        assert needle in cause.traceback


# --- the worker dies --------------------------------------------------------------------------

STAGES = {
    # stage: (function, args) -- the fault is injected where the stage says
    "unpickle-function": lambda fault: (functools.partial(x.take, x.FaultOnUnpickle(fault)), ()),
    "unpickle-argument": lambda fault: (x.take, (1, x.FaultOnUnpickle(fault))),
    "run-sync": lambda fault: (x.run_fault, (fault,)),
    "run-async": lambda fault: (x.async_run_fault, (fault,)),
    "pickle-result": lambda fault: (x.give, (fault, "pickle")),
}


@pytest.mark.uvloop  # the pool's side of a dying channel differs between the loops
@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("fault", WORKER_FAULTS)
async def test_worker_dies(stage: str, fault: str) -> None:
    fn, args = STAGES[stage](fault)
    out = await run_victim(fn, *args, crashes=True)
    assert_crashed(out, fault)


# --- raise at every stage ---------------------------------------------------------------------


async def test_argument_that_fails_to_pickle_in_the_parent() -> None:
    out = await run_victim(x.take, 1, x.FaultOnPickle("raise"), 3, crashes=False)
    exc = out.error
    assert isinstance(exc, SerializationError)
    assert isinstance(exc, TypeError)
    assert "args[1]" in str(exc)
    assert "FaultOnPickle" in str(exc)
    assert "FaultError: injected fault while pickling" in str(exc)
    assert isinstance(exc.__cause__, x.FaultError)
    assert out.victim.started_at is None  # it never reached a worker
    assert out.victim.state is TaskState.FAILED
    assert_untouched(out)


async def test_function_that_fails_to_pickle_in_the_parent() -> None:
    lock = threading.Lock()
    out = await run_victim(lambda: lock, crashes=False)
    exc = out.error
    assert isinstance(exc, SerializationError)
    assert "cannot send function" in str(exc)
    assert out.victim.started_at is None
    assert_untouched(out)


async def test_function_that_fails_to_unpickle_in_the_worker() -> None:
    # The API: a call whose function or arguments fail to load in the worker fails with the
    # worker's error (rebuilt by type, the worker's traceback as __cause__).
    out = await run_victim(functools.partial(x.take, x.FaultOnUnpickle("raise")), crashes=False)
    assert isinstance(out.error, x.FaultError)
    assert str(out.error) == "injected fault while unpickling"
    assert_remote_cause(out.error, "FaultError", "_faults.py")
    assert_untouched(out)


async def test_argument_that_fails_to_unpickle_in_the_worker() -> None:
    out = await run_victim(x.take, 1, x.FaultOnUnpickle("raise"), crashes=False)
    assert isinstance(out.error, x.FaultError)
    assert str(out.error) == "injected fault while unpickling"
    assert_remote_cause(out.error, "FaultError")
    assert out.victim.record.error == "FaultError: injected fault while unpickling"
    assert_untouched(out)


@pytest.mark.parametrize("fn", [x.run_fault, x.async_run_fault], ids=["sync", "async"])
async def test_task_that_raises(fn: Any) -> None:
    out = await run_victim(fn, "raise", crashes=False)
    assert type(out.error) is x.FaultError
    assert "running" in str(out.error)
    assert_remote_cause(out.error, "fault(kind", "FaultError")
    assert_untouched(out)


async def test_result_that_fails_to_pickle_in_the_worker() -> None:
    out = await run_victim(x.give, "raise", "pickle", crashes=False)
    exc = out.error
    assert isinstance(exc, SerializationError)
    assert "result" in str(exc)
    assert "FaultOnPickle" in str(exc)
    assert "FaultError: injected fault while pickling" in str(exc)
    # The original exception, rebuilt, then the worker's side of the story.
    assert isinstance(exc.__cause__, x.FaultError)
    assert isinstance(exc.__cause__.__cause__, RemoteTraceback)
    assert_untouched(out)


async def test_result_that_fails_to_unpickle_in_the_parent() -> None:
    out = await run_victim(x.give, "raise", "unpickle", crashes=False)
    exc = out.error
    assert isinstance(exc, SerializationError)
    assert "cannot receive the result" in str(exc)
    assert "FaultError: injected fault while unpickling" in str(exc)
    assert isinstance(exc.__cause__, x.FaultError)
    assert_untouched(out)


async def test_exception_that_fails_to_pickle_in_the_worker() -> None:
    out = await run_victim(x.raise_unpicklable, "holds a lock", crashes=False)
    exc = out.error
    assert isinstance(exc, TaskFailed)
    assert exc.type_name == "tests.faults._faults.UnpicklableError"
    assert exc.message == "holds a lock"
    assert "raise_unpicklable" in exc.traceback
    assert_untouched(out)


async def test_exception_that_fails_to_unpickle_in_the_parent() -> None:
    out = await run_victim(x.raise_failing_in_parent, crashes=False)
    exc = out.error
    assert isinstance(exc, TaskFailed)
    assert exc.type_name == "tests.faults._faults.ErrorFailingInParent"
    assert exc.message == "cannot be rebuilt"
    assert_untouched(out)


async def test_a_poison_task_fails_once_and_is_not_retried() -> None:
    """A call that kills its worker after it started is failed, never handed to the next
    worker (that would crash-loop the pool on one bad input)."""
    async with FunctionPool(1, worker="process") as pool:
        async with pool.events.subscribe("task.started") as sub:
            victim = pool.add_task(x.take, x.FaultOnUnpickle("exit"))
            async with asyncio.timeout(WAIT):
                assert isinstance(await settle(victim), WorkerCrashed)
                assert await pool.add_task(f.add, 1, 1) == 2
            started = drain(sub)
        assert pool.status("started") == 2
        assert pool.snapshot().workers[0].restarts == 1
    assert [e.task_id for e in started].count(victim.id) == 1


def drain(sub: Any) -> list[Any]:
    """The events buffered in ``sub`` right now."""
    out = []
    while (event := sub.get_nowait()) is not None:
        out.append(event)
    return out


async def test_frames_written_just_before_a_crash_are_read_before_it_is_reported() -> None:
    """The exit and the channel's last frames reach the pool by different routes. Here the
    exit is seen first (the channel is not read meanwhile): the Started and Publish frames
    still count, so the call is failed (not retried) and the event is not lost."""
    async with FunctionPool(1, worker="process") as pool:
        worker = process_worker(pool, 0)
        channel = worker._channel
        async with pool.events.subscribe("last.words", "worker.exited") as sub:
            channel.transport.pause_reading()
            try:
                task = pool.add_task(x.publish_then_exit, "last.words")
                await poll_until(lambda: worker._proc.returncode is not None, "the worker to exit")
                for _ in range(20):  # force the bad interleaving: the pool sees the exit first
                    await asyncio.sleep(0)
            finally:
                channel.transport.resume_reading()
            async with asyncio.timeout(WAIT):
                err = await settle(task)
                events = await collect(sub, 2)
        assert isinstance(err, WorkerCrashed), repr(err)
        assert err.exitcode == x.EXIT_CODE
        assert [e.topic for e in events] == ["last.words", "worker.exited"]
        assert events[0].task_id == task.id
        assert pool.status("started") == 1  # it was not handed to the next worker
