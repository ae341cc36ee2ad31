"""A worker that dies loses no answer it had produced.

- Answers of quick calls wait in the worker to be written in one go; they are copied to
  the control block's journal first, and read from there once it died.
- Answers written just before dying stay unread in the socket when the pool's next write
  to the dead worker fails; they are still read.

Either way a call that returned is reported with its result, never as crashed (nor run
again); only the call that killed the worker fails, and those it never began run on its
replacement.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from taskpool import FunctionPool, RestartPolicy, WorkerCrashed

from .. import _funcs as f
from .._support import WAIT, process_worker, settle
from . import _faults as x
from ._poll import gone, poll_until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60), pytest.mark.uvloop]


async def test_answers_waiting_in_a_dying_worker_come_from_its_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    # Answers are held for at most FLUSH_AGE: long enough here that a slow machine still
    # holds them all when the worker dies.
    monkeypatch.setenv("TASKPOOL_FLUSH_AGE", "30")
    async with FunctionPool(1, worker="process", restart=RestartPolicy(delay=0.01)) as pool:
        for i in range(8):  # the function is known to be quick from now on
            assert await pool.add_task(x.soak_sync, "ok", i) == 2 * i
        worker = process_worker(pool, 0)
        before = [pool.add_task(x.soak_sync, "ok", i) for i in range(20)]
        crash = pool.add_task(x.soak_sync, "crash", 99)
        after = [pool.add_task(x.soak_sync, "ok", i) for i in range(20, 25)]
        async with asyncio.timeout(WAIT):
            outcomes: list[Any] = [await settle(t) for t in before]
            crashed = await settle(crash)
            rerun = [await settle(t) for t in after]
    assert outcomes == [2 * i for i in range(20)]
    assert isinstance(crashed, WorkerCrashed)
    assert rerun == [2 * i for i in range(20, 25)]  # never begun: run on the replacement
    assert worker._from_journal > 0  # some answers were only in the journal


async def test_answers_unread_when_a_write_to_the_dead_worker_fails_are_read() -> None:
    async with FunctionPool(1, worker="process", restart=RestartPolicy(delay=0.01)) as pool:
        assert await pool.add_task(x.soak_sync, "ok", 0) == 0
        pid = pool.snapshot().workers[0].pid
        assert pid is not None
        channel = process_worker(pool, 0)._channel
        channel.transport.pause_reading()  # its answers stay in the socket
        done = [pool.add_task(x.soak_sync, "ok", i) for i in range(1, 6)]
        crash = pool.add_task(x.soak_sync, "crash", 99)
        await poll_until(lambda: gone(pid), "the worker to exit")
        # Written to the dead worker: the write fails, and the transport stops reading.
        late = pool.add_task(x.soak_sync, "ok", 7)
        async with asyncio.timeout(WAIT):
            outcomes = [await settle(t) for t in done]
            crashed = await settle(crash)
            assert await late == 14  # handed back unstarted, run on the replacement
    assert outcomes == [2 * i for i in range(1, 6)]
    assert isinstance(crashed, WorkerCrashed)


async def test_cancelling_a_call_that_has_returned_spares_the_call_running_after_it() -> None:
    # X's start was reported (it has a timeout), X returned, and its answer is still on
    # its way (the pool reads nothing for now) while Y runs. Cancelling X must not kill
    # the worker: that would fail Y, which nobody cancelled (the soak found it).
    from taskpool.testing import Gate, block_gate

    async with FunctionPool(1, worker="process") as pool, Gate() as gate:
        assert await pool.add_task(x.soak_sync, "ok", 0) == 0
        worker = process_worker(pool, 0)
        pid = worker.pid
        xt = pool.add_task(block_gate, gate.path, "x", timeout=30)  # a timeout: its start is reported
        await gate.arrived("x")
        await poll_until(lambda: xt.started_at is not None, "X's Started frame to be read")
        worker._channel.transport.pause_reading()  # from now on X's answer stays in the socket
        y = pool.add_task(block_gate, gate.path, "y")
        gate.release("x")
        await gate.arrived("y")  # X returned, Y runs
        assert xt.cancel() is True  # X settles as cancelled; its answer is dropped when it comes
        worker._channel.transport.resume_reading()
        gate.release("y")
        async with asyncio.timeout(WAIT):
            assert await y == "y"
        snap = pool.snapshot().workers[0]
        assert snap.pid == pid and snap.restarts == 0  # never replaced


async def _grace_passes(worker: Any, call_id: int) -> None:
    """Wait until the cancel grace for ``call_id`` has run out once (its timer fired)."""
    handle = worker._timers[call_id]
    await poll_until(lambda: worker._timers.get(call_id) is not handle, "the cancel grace to run out")


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_an_answer_read_late_spares_the_call_running_after_it(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The pool's loop falls behind (here: reading paused) for longer than the cancel grace,
    # while X's answer waits in the socket and Y runs. X has ended (the control block says
    # so): the worker must not be killed for it, which would fail Y (the soak found it,
    # with a loop slowed by hooks that logged tracebacks).
    from taskpool._workers import _process
    from taskpool.testing import Gate, block_gate, wait_gate

    monkeypatch.setattr(_process, "CANCEL_GRACE", 0.1)
    async with FunctionPool(1, worker="process") as pool, Gate() as gate:
        assert await pool.add_task(x.soak_sync, "ok", 0) == 0
        worker = process_worker(pool, 0)
        pid = worker.pid
        if kind == "sync":
            xt = pool.add_task(block_gate, gate.path, "x", timeout=30)  # its start is reported
        else:
            xt = pool.add_task(wait_gate, gate.path, "x")  # cancelled in the worker
        await gate.arrived("x")
        await poll_until(lambda: worker._control.begun()[0] >= worker._numbers[xt.id], "X to begin")
        y = pool.add_task(block_gate, gate.path, "y")
        await poll_until(lambda: y.id in worker._numbers, "Y to be sent")
        worker._channel.transport.pause_reading()  # from now on X's answer stays in the socket
        if kind == "sync":
            gate.release("x")
            await gate.arrived("y")  # X returned, Y runs
            assert xt.cancel() is True
        else:
            assert xt.cancel() is True  # the worker cancels X, then begins Y
            await gate.arrived("y")
        await _grace_passes(worker, xt.id)
        await _grace_passes(worker, xt.id)
        worker._channel.transport.resume_reading()
        gate.release("y")
        async with asyncio.timeout(WAIT):
            assert await y == "y"
        await poll_until(lambda: xt.id not in worker._calls, "X's answer to be read")
        snap = pool.snapshot().workers[0]
        assert snap.pid == pid and snap.restarts == 0  # never replaced


async def test_a_call_whose_answer_never_comes_retires_its_worker(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The block says X returned, but its answer never comes while the pool keeps reading
    # (a broken channel): after ANSWER_WAIT the worker is replaced, and the calls behind
    # X still run.
    from taskpool import _wire
    from taskpool._workers import _process
    from taskpool.testing import Gate, block_gate

    monkeypatch.setattr(_process, "CANCEL_GRACE", 0.05)
    monkeypatch.setattr(_process, "ANSWER_WAIT", 0.3)
    async with FunctionPool(1, worker="process", restart=RestartPolicy(delay=0.01)) as pool, Gate() as gate:
        assert await pool.add_task(x.soak_sync, "ok", 0) == 0
        worker = process_worker(pool, 0)
        pid = worker.pid
        xt = pool.add_task(block_gate, gate.path, "x", timeout=30)
        await gate.arrived("x")
        await poll_until(lambda: xt.started_at is not None, "X's Started frame to be read")
        # Lose X's answer on the pool's side, as a broken channel would.
        on_message = worker._on_message

        def losing(msg: Any) -> None:
            if isinstance(msg, _wire.Answers):
                msg.items = [m for m in msg.items if m.id != xt.id]
            if getattr(msg, "id", None) != xt.id:
                on_message(msg)

        worker._on_message = losing
        gate.release("x")
        await poll_until(lambda: worker._control.returned(worker._numbers[xt.id]), "X to return")
        assert xt.cancel() is True
        async with asyncio.timeout(WAIT):
            await poll_until(lambda: pool.snapshot().workers[0].pid not in (None, pid), "the worker to be replaced")
            assert await pool.add_task(x.soak_sync, "ok", 3) == 6
    lines = [str(getattr(r, "msg", "")) + str(r.__dict__) for r in caplog.records]
    assert any(f"the answer to call {xt.id} never came" in line for line in lines), lines


@pytest.mark.parametrize("reported", [False, True])
async def test_a_kill_decided_as_the_call_returns_never_lands_on_the_next_call(
    reported: bool, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # T runs when it is cancelled, so its worker must go. Between the look at the control
    # block and the kill, the pool's loop is held up (a slow log handler, say) while T
    # returns. The worker must not begin N meanwhile: the kill would fail N, which nobody
    # cancelled. N never began: it runs on the replacement.
    t_file, n_file = tmp_path / "t", tmp_path / "n"
    async with FunctionPool(1, worker="process", restart=RestartPolicy(delay=0.01)) as pool:
        assert await pool.add_task(x.soak_sync, "ok", 0) == 0
        worker = process_worker(pool, 0)
        block = worker._control
        t = pool.add_task(x.until_file, str(t_file), "t", timeout=60 if reported else None)
        n = pool.add_task(x.until_file, str(n_file), "n")
        await poll_until(lambda: n.id in worker._numbers, "N to be sent")
        nt, nn = worker._numbers[t.id], worker._numbers[n.id]
        await poll_until(lambda: block.begun()[2] == nt, "T to begin")
        if reported:
            await poll_until(lambda: t.started_at is not None, "T's Started frame to be read")
        sup = pool._core.sup  # type: ignore[attr-defined]
        retire = sup.retire
        seen: dict[str, bool] = {}

        def slow_retire(slot: Any, reason: str) -> None:
            t_file.touch()  # T returns now, before the kill
            deadline = time.monotonic() + WAIT
            while not block.returned(nt):
                assert time.monotonic() < deadline, "T never returned"
                time.sleep(0.001)
            # Held up for a while: long enough for the worker to begin N, were it free to.
            until = time.monotonic() + 0.3
            while time.monotonic() < until and block.begun()[0] < nn:
                time.sleep(0.001)
            seen["n began"] = block.begun()[0] >= nn
            retire(slot, reason)

        monkeypatch.setattr(sup, "retire", slow_retire)
        assert t.cancel() is True
        assert seen == {"n began": False}
        n_file.touch()
        async with asyncio.timeout(WAIT):
            assert await n == "n"  # on the replacement
        assert pool.snapshot().workers[0].restarts == 1


async def test_a_loading_frame_read_late_for_a_cancelled_call_spares_the_next_call(tmp_path: Any) -> None:
    # T's first call in the worker sends Loading (its function is imported first). The
    # pool's loop falls behind (reading paused) while the worker loads and runs T, then
    # begins N. T is cancelled, and then its Loading is read: T has returned (the block
    # says so), so nothing is killed; N, which nobody cancelled, runs on. (The slow-loop
    # soak found this.)
    n_file = tmp_path / "n"
    async with FunctionPool(1, worker="process") as pool:
        assert await pool.add_task(f.add, 1, 1) == 2  # neither function below is loaded yet
        worker = process_worker(pool, 0)
        pid, block = worker.pid, worker._control
        worker._channel.transport.pause_reading()
        t = pool.add_task(x.soak_sync, "ok", 1)
        n = pool.add_task(x.until_file, str(n_file), "n")
        await poll_until(lambda: n.id in worker._numbers, "N to be sent")
        nn = worker._numbers[n.id]
        await poll_until(lambda: block.begun()[2] == nn, "T to return and N to begin")
        assert t.cancel() is True
        worker._channel.transport.resume_reading()
        n_file.touch()
        async with asyncio.timeout(WAIT):
            assert await n == "n"
        snap = pool.snapshot().workers[0]
        assert snap.pid == pid and snap.restarts == 0  # never replaced
