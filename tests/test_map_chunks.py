"""``map`` sends items in chunks: one task (and one frame to a process worker) per chunk."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import pytest

from taskpool import FunctionPool

from . import _funcs as f

pytestmark = pytest.mark.asyncio


async def test_auto_chunks_tiny_plain_calls(kind: str) -> None:
    n = 5000
    async with FunctionPool(2, worker=kind) as pool:
        out = [r async for r in pool.map(f.square, range(n))]
        tasks = pool.status("total")
    assert out == [i * i for i in range(n)]
    assert tasks < n // 4  # tiny calls travelled in chunks


@pytest.mark.parametrize("ordered", [True, False])
async def test_an_explicit_chunksize_makes_one_task_per_chunk(kind: str, ordered: bool) -> None:
    async with FunctionPool(2, worker=kind) as pool:
        out = [r async for r in pool.map(f.square, range(100), chunksize=7, ordered=ordered)]
        assert pool.status("total") == 15  # ceil(100 / 7)
    assert (out if ordered else sorted(out)) == [i * i for i in range(100)]


async def test_auto_sends_one_item_per_task_when_workers_are_recycled_by_count(kind: str) -> None:
    # max_tasks_per_worker counts tasks: chunks of tiny calls would let a worker run
    # thousands of calls before it is replaced.
    n = 2000
    async with FunctionPool(2, worker=kind, max_tasks_per_worker=1000) as pool:
        out = [r async for r in pool.map(f.square, range(n))]
        assert pool.status("total") == n
    assert out == [i * i for i in range(n)]


async def test_auto_never_chunks_coroutine_functions(kind: str) -> None:
    async with FunctionPool(2, worker=kind) as pool:
        out = [r async for r in pool.map(f.async_square, range(300))]
        assert pool.status("total") == 300  # they may wait on I/O: one task each
    assert out == [i * i for i in range(300)]


@pytest.mark.parametrize("chunksize", [3, "auto"])
async def test_a_failure_in_a_chunk_raises_and_cancels_the_rest(kind: str, chunksize: int | str) -> None:
    async with FunctionPool(2, worker=kind) as pool:
        seen = []
        with pytest.raises(ValueError, match="bad input 57"):
            async for r in pool.map(functools.partial(f.fail_on, 57), range(1000), chunksize=chunksize):  # type: ignore[arg-type]
                seen.append(r)
        assert seen == list(range(len(seen)))  # in order, up to the failure
        assert len(seen) <= 57
        await pool.join()
        assert pool.status("failed") == 1


async def test_chunks_consume_the_input_lazily(kind: str) -> None:
    pulled: list[int] = []

    def gen() -> Iterator[int]:
        for i in range(10_000):
            pulled.append(i)
            yield i

    async with FunctionPool(1, worker=kind) as pool:
        async with contextlib.aclosing(pool.map(f.square, gen(), chunksize=10, window=2)) as it:
            assert await anext(it) == 0
            assert len(pulled) <= 2 * 10 + 10  # a window of two chunks, and the next one


@pytest.mark.parametrize("bad", [0, -1, 1.5, "big", True])
async def test_bad_chunksizes_are_refused(bad: object) -> None:
    async with FunctionPool(1, worker="inline") as pool:
        with pytest.raises(ValueError, match="chunksize must be 'auto' or an int >= 1"):
            pool.map(f.square, [1], chunksize=bad)  # type: ignore[arg-type]
