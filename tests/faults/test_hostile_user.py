"""Hostile (or unlucky) users: hooks that never return, subscribers that never read.

Whatever a hook or a subscriber does, closing ends within ``grace`` + about a second,
every task settles once, and the pool's cost does not grow with what they left behind.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest

from taskpool import FunctionPool, HookErrorEvent

from .. import _funcs as f

pytestmark = pytest.mark.asyncio


class Forever:
    """An async hook that never returns (until the pool cancels it)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = 0

    async def __call__(self, *args: Any) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


class Stubborn(Forever):
    """Swallows the first cancellation and waits again."""

    async def __call__(self, *args: Any) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
        await asyncio.Event().wait()  # cancelled again: the pool's scope stays cancelled


@pytest.mark.parametrize("hook", [Forever, Stubborn])
async def test_a_hook_that_never_returns_cannot_hang_a_cancelled_close(kind: str, hook: type[Forever]) -> None:
    h = hook()
    pool = FunctionPool(1, worker=kind)
    errors = pool.events.subscribe("pool.hook_error")
    await pool.start()
    pool.then(h)
    assert await pool.add_task(f.add, 1, 2) == 3
    await asyncio.wait_for(h.started.wait(), 10)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pool.aclose(), 0.5)  # waits for the hook; then its caller gives up
    assert time.monotonic() - started < 0.5 + 1.5
    assert pool.state == "closed"
    assert h.cancelled >= 1
    events = [e async for e in errors]
    assert any(isinstance(e, HookErrorEvent) and e.hook == "then" and "cancelled" in e.error for e in events)


@pytest.mark.parametrize("cancel", [False, True])
async def test_grace_bounds_closing_with_a_hook_that_never_returns(kind: str, cancel: bool) -> None:
    h = Forever()
    async with FunctionPool(1, worker=kind) as pool:
        pool.then(h)
        await pool.add_task(f.add, 1, 2)
        await asyncio.wait_for(h.started.wait(), 10)
        started = time.monotonic()
        await pool.aclose(grace=0.3, cancel=cancel)
        assert time.monotonic() - started < 0.3 + 1.0
    assert h.cancelled == 1


async def test_a_body_that_raises_closes_at_once_despite_a_hung_hook(kind: str) -> None:
    h = Forever()
    started = 0.0
    with pytest.raises(KeyError):
        async with FunctionPool(1, worker=kind) as pool:
            pool.all_settled(h)
            await pool.add_task(f.add, 1, 2)
            await asyncio.wait_for(h.started.wait(), 10)  # drained: the all_settled hook runs
            started = time.monotonic()
            raise KeyError("body failed")
    assert time.monotonic() - started < 1.5
    assert pool.state == "closed"


async def test_subscriptions_dropped_without_closing_cost_nothing(kind: str) -> None:
    async with FunctionPool(2, worker=kind) as pool:
        for _ in range(5000):
            pool.events.subscribe("*")  # never closed, never read, reference dropped
        gc.collect()
        assert pool.events.subscriber_count == 0
        assert not pool.events.wants("task.succeeded")  # publishers skip building events again
        kept = pool.events.subscribe("task.succeeded", maxsize=10)
        tasks = [pool.add_task(f.add, i, 0) for i in range(200)]
        assert [await t for t in tasks] == list(range(200))
        assert pool.events.subscriber_count == 1
        assert len(kept._buffer) == 10 and kept.dropped == 190  # bounded, counted exactly
        kept.close()


async def test_hooks_and_callbacks_that_raise_never_change_an_outcome(kind: str) -> None:
    def bad(*args: Any) -> None:
        raise RuntimeError("hook failed")

    async with FunctionPool(1, worker=kind) as pool:
        errors = pool.events.subscribe("pool.hook_error")
        pool.then(bad).catch(bad).race(bad).all_settled(bad)
        task = pool.add_task(f.add, 2, 2)
        task.add_start_callback(bad)
        task.add_done_callback(bad)
        assert await task == 4
        with pytest.raises(ValueError, match="no"):
            await pool.add_task(f.fail, "no")
        await pool.join()
    hooks = sorted({e.hook async for e in errors if isinstance(e, HookErrorEvent)})
    assert hooks == ["all_settled", "catch", "done_callback", "race", "start_callback", "then"]
    assert pool.status("succeeded") == 1 and pool.status("failed") == 1
