"""Restart storms: backoff between restarts, the restart limit breaking the pool, reset_after."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from taskpool import FunctionPool, PoolBroken, RestartPolicy, WorkerCrashed

from .. import _funcs as f
from .._support import WAIT, Gate, settle
from . import _faults as x

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def drain(sub: Any) -> list[Any]:
    out = []
    while (event := sub.get_nowait()) is not None:
        out.append(event)
    return out


@pytest.mark.uvloop
async def test_a_restart_storm_backs_off_then_breaks_the_pool() -> None:
    policy = RestartPolicy(delay=0.05, backoff=2, limit=4)
    async with FunctionPool(1, worker="process", restart=policy) as pool:
        async with pool.events.subscribe("worker.*", "pool.*") as sub:
            crashers = [pool.add_task(x.exit_with, 1) for _ in range(4)]
            queued = [pool.add_task(f.add, i, 1) for i in range(3)]
            async with asyncio.timeout(WAIT):
                errors = [await settle(t) for t in crashers]
                late = [await settle(t) for t in queued]
            events = drain(sub)
        # Each crasher started and took its worker down with it.
        for e in errors:
            assert isinstance(e, WorkerCrashed), repr(e)
            assert (e.exitcode, e.signal, e.worker_id) == (1, None, 0)
        # Three restarts, each waiting twice as long as the one before...
        restarted = [e for e in events if e.topic == "worker.restarted"]
        assert [e.delay for e in restarted] == pytest.approx([0.05, 0.1, 0.2])
        assert [e.attempt for e in restarted] == [1, 2, 3]
        assert all(e.reason == "exited with code 1" for e in restarted)
        exited = [e for e in events if e.topic == "worker.exited"]
        assert len(exited) == 4
        for down, up in zip(exited, restarted, strict=False):
            assert up.time - down.time >= up.delay * 0.9  # the wait really happened
        # ...then the fourth consecutive failure spends the limit: the pool is broken.
        assert pool.state == "broken"
        snap = pool.snapshot()
        assert (snap.workers[0].state, snap.workers[0].restarts) == ("dead", 3)
        for e in late:
            assert isinstance(e, PoolBroken), repr(e)
            assert "restart limit 4 spent" in str(e)
            assert str(e).count("exited with code 1") == 4  # the last failures, listed
        with pytest.raises(PoolBroken, match="exited with code 1"):
            pool.add_task(f.add, 1, 1)
        counts = pool.status()
        assert counts["total"] == counts["completed"] == counts["failed"] == 7
    assert pool.state == "closed"


async def test_reset_after_forgives_failures_after_a_healthy_period() -> None:
    policy = RestartPolicy(delay=0.05, backoff=2, limit=2, reset_after=0.3)
    async with FunctionPool(1, worker="process", restart=policy) as pool:
        async with pool.events.subscribe("worker.restarted") as sub:
            async with asyncio.timeout(WAIT):
                assert isinstance(await settle(pool.add_task(x.exit_with, 1)), WorkerCrashed)
                # The replacement stays up (doing real work) longer than reset_after...
                assert await pool.add_task(x.stay_up, 0.35) == "up"
                # ...so its crash counts as the first again: restarted after the base delay.
                assert isinstance(await settle(pool.add_task(x.exit_with, 1)), WorkerCrashed)
                assert pool.state == "running"
                assert await pool.add_task(f.add, 1, 1) == 2
                # A crash right after (no healthy period): the second in a row, the limit.
                assert isinstance(await settle(pool.add_task(x.exit_with, 1)), WorkerCrashed)
            restarted = drain(sub)
        assert [e.delay for e in restarted] == pytest.approx([0.05, 0.05])
        assert pool.state == "broken"
        with pytest.raises(PoolBroken, match="restart limit 2 spent"):
            pool.add_task(f.add, 2, 2)


async def test_start_fails_promptly_when_workers_can_never_come_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # Even with no restart limit, start() must answer: three failed starts per worker.
    import taskpool._workers._process as process

    attempts = 0

    async def cannot_spawn(*args: Any, **kwargs: Any) -> Any:
        nonlocal attempts
        attempts += 1
        raise OSError("no interpreter here")

    monkeypatch.setattr(process, "spawn_child", cannot_spawn)
    # One worker: with two, start() fails as soon as either one is dead, and how far the
    # other got by then is a race.
    pool = FunctionPool(1, worker="process", restart=RestartPolicy(delay=0.01, limit=None))
    with pytest.raises(PoolBroken, match="failed 3 times before answering its handshake") as info:
        await asyncio.wait_for(pool.start(), WAIT)
    assert "no interpreter here" in str(info.value)
    assert attempts == 3  # as the message says (not a private constant)
    await pool.aclose()


async def gated_crash(path: str, tag: str) -> None:
    """Wait at the gate, then end the worker process."""
    await f.wait_gate(path, tag)
    os._exit(3)


async def test_a_worker_dying_while_the_pool_drains_is_replaced_for_the_queued_work() -> None:
    pool = FunctionPool(1, worker="process", restart=RestartPolicy(delay=0.0))
    await pool.start()
    async with Gate() as gate:
        doomed = pool.add_task(gated_crash, gate.path, "d")
        await gate.arrived("d")
        behind = pool.add_task(f.add, 2, 3)  # waits behind the call that kills its worker
        closing = asyncio.ensure_future(pool.aclose())  # no grace: drain everything
        while pool.state == "running":
            await asyncio.sleep(0)  # aclose() has begun: the pool is closing
        gate.release("d")
        await asyncio.wait_for(closing, WAIT)
    with pytest.raises(WorkerCrashed):
        doomed.result()
    assert behind.result() == 5  # ran on the replacement, while the pool was closing
