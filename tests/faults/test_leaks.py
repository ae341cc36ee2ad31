"""A closed pool is gone: nothing it started (timers, tasks, workers) keeps it alive."""

from __future__ import annotations

import gc
import weakref

import pytest

from taskpool import FunctionPool

from .. import _funcs as f

pytestmark = pytest.mark.asyncio


async def test_a_closed_pool_is_collected_at_once(kind: str) -> None:
    refs = []
    for _ in range(3):
        pool = FunctionPool(2, worker=kind)
        async with pool:
            assert await pool.add_task(f.add, 1, 2) == 3
            refs.append(weakref.ref(pool._core))  # the engine: what a timer would hold
        del pool
    gc.collect()
    # A timer left armed (a worker's stop deadline, say) would keep its pool for seconds.
    assert [r() for r in refs] == [None, None, None]
