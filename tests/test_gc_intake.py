"""GC episodes (``taskpool._gc``): a long queue is frozen out of the cyclic GC, and let back in.

Collections are driven with explicit ``gc.collect(generation)`` calls: the episode's hook
runs at the start and the end of every collection, explicit ones included, so each step
here is deterministic. The unit tests watch plain deques of tracked objects; the last ones
go through a real pool, whose queue the scheduler watches.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from taskpool import FunctionPool, _gc
from taskpool._scheduler import Scheduler

from . import _funcs

pytestmark = pytest.mark.skipif(not _gc.SUPPORTED, reason="episodes run on CPython with a GIL only")


class Node:
    """A user object; ``cycle()`` makes one that only the cyclic GC can free."""

    def __init__(self) -> None:
        self.me: Node | None = None


def cycle() -> tuple[Node, weakref.ref[Node]]:
    node = Node()
    node.me = node
    return node, weakref.ref(node)


async def wait_event(event: asyncio.Event) -> None:
    await event.wait()


def long_queue(n: int = _gc.START) -> collections.deque[Any]:
    queue: collections.deque[Any] = collections.deque([i] for i in range(n))  # tracked entries
    gc.collect(1)  # no automatic collection of generation 1 or 2 comes before the test's own
    _gc.watch(queue)
    return queue


@pytest.fixture(autouse=True)
def _clean_gc() -> Iterator[None]:
    """Every test starts and must end with no episode on and nothing frozen."""
    assert gc.isenabled()
    gc.collect()
    assert not _gc.active()
    assert gc.get_freeze_count() == 0
    yield
    gc.collect()
    assert not _gc.active(), "an episode outlived its queues"
    assert gc.get_freeze_count() == 0, "objects were left frozen"


def test_a_long_queue_starts_an_episode_and_a_drained_one_ends_it() -> None:
    queue = long_queue()
    gc.collect()  # its end: a watched queue is long
    assert _gc.active()
    assert gc.get_freeze_count() >= _gc.START  # the queue's entries are frozen
    queue.clear()
    gc.collect()  # its start: every queue is short
    assert not _gc.active()
    assert gc.get_freeze_count() == 0


def test_a_short_queue_starts_nothing() -> None:
    queue = long_queue(_gc.START - 1)
    gc.collect()
    assert not _gc.active()
    assert len(queue) == _gc.START - 1


def test_young_collections_neither_start_nor_feed_an_episode() -> None:
    queue = long_queue()
    gc.collect(0)
    assert not _gc.active()
    gc.collect(1)
    assert _gc.active()
    queue.clear()
    gc.collect(0)  # the start of any collection ends a drained episode
    assert not _gc.active()


def test_the_episode_lasts_until_the_queue_is_under_stop() -> None:
    queue = long_queue()
    gc.collect()
    while len(queue) >= _gc.STOP:
        queue.pop()
    queue.append([0])  # back at STOP
    gc.collect()
    assert _gc.active()
    queue.pop()
    gc.collect()
    assert not _gc.active()


def test_a_users_cycle_frozen_during_an_episode_is_collected_once_the_queue_drains() -> None:
    queue = long_queue()
    node, ref = cycle()
    gc.collect()
    assert _gc.active()
    del node
    gc.collect()
    # The trade-off: a cycle that died while frozen waits for the episode to end.
    assert ref() is not None
    queue.clear()
    gc.collect()
    assert ref() is None


def test_a_cycle_that_dies_young_is_collected_during_an_episode() -> None:
    queue = long_queue()
    gc.collect()
    assert _gc.active()
    node, ref = cycle()
    del node
    gc.collect(1)  # a young collection sees it before any freeze does
    assert ref() is None
    assert _gc.active()
    queue.clear()


def test_an_old_episode_is_renewed_so_a_full_collection_sees_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    queue = long_queue()
    node, ref = cycle()
    gc.collect()
    assert _gc.active()
    del node
    monkeypatch.setattr(_gc, "RENEW_AFTER", -1.0)  # every episode is old now
    gc.collect(0)  # its start ends the episode, however long the queue
    assert not _gc.active()
    gc.collect(1)  # no new episode before a full collection ran over everything
    assert not _gc.active()
    assert ref() is not None
    monkeypatch.setattr(_gc, "RENEW_AFTER", 30.0)
    gc.collect()  # the full collection frees the cycle, then a new episode starts
    assert ref() is None
    assert _gc.active()
    queue.clear()


def test_every_watched_queue_must_be_short_to_end_an_episode() -> None:
    first, second = long_queue(), long_queue()
    gc.collect()
    assert _gc.active()
    first.clear()
    gc.collect()
    assert _gc.active()
    second.clear()
    gc.collect()
    assert not _gc.active()


def test_a_queue_that_is_gone_no_longer_counts() -> None:
    queue = long_queue()
    gc.collect()
    assert _gc.active()
    ref = weakref.ref(queue)
    del queue  # freed by reference counting, frozen or not
    assert ref() is None
    gc.collect()
    assert not _gc.active()


def test_a_programs_own_freeze_is_left_alone() -> None:
    mine = [Node() for _ in range(100)]
    gc.freeze()  # the program's, e.g. before forking workers
    try:
        frozen = gc.get_freeze_count()
        queue = long_queue()
        gc.collect()
        assert not _gc.active()
        queue.clear()
        gc.collect()
        assert not _gc.active()
        assert gc.get_freeze_count() == frozen  # nothing of the program's was unfrozen
    finally:
        gc.unfreeze()
    del mine


def test_a_foreign_freeze_is_looked_for_again_once_the_queues_were_short() -> None:
    gc.freeze()
    try:
        queue = long_queue()
        gc.collect()
        assert not _gc.active()
    finally:
        gc.unfreeze()
    gc.collect()  # the queue is still long: the program's freeze is not looked for again yet
    assert not _gc.active()
    saved = list(queue)
    queue.clear()
    gc.collect()
    queue.extend(saved)
    gc.collect()
    assert _gc.active()
    queue.clear()


def test_no_episode_while_the_gc_is_disabled() -> None:
    queue = long_queue()
    gc.disable()
    try:
        gc.collect()
        assert not _gc.active()
    finally:
        gc.enable()
    queue.clear()


def test_watching_installs_one_hook_however_many_queues() -> None:
    queues = [long_queue(0) for _ in range(3)]
    assert gc.callbacks.count(_gc._on_gc) == 1
    assert len(queues) == 3


def test_the_hook_comes_back_if_the_program_cleared_the_callbacks() -> None:
    gc.callbacks.remove(_gc._on_gc)
    try:
        queue = long_queue()
        assert gc.callbacks.count(_gc._on_gc) == 1
        gc.collect()
        assert _gc.active()
        queue.clear()
    finally:
        if _gc._on_gc not in gc.callbacks:
            gc.callbacks.append(_gc._on_gc)


def test_the_schedulers_queue_is_watched() -> None:
    sched = Scheduler(keep_records=0)
    assert any(ref() is sched.queue for ref in _gc._queues.values())


@pytest.mark.asyncio
async def test_a_pools_backlog_is_frozen_and_let_go_once_it_ran() -> None:
    release = asyncio.Event()
    node, ref = cycle()
    async with FunctionPool(1, worker="inline") as pool:
        blocker = pool.add_task(wait_event, release)
        tasks = [pool.add_task(_funcs.identity, i) for i in range(_gc.START)]
        gc.collect()
        assert _gc.active()
        del node
        gc.collect()
        assert ref() is not None  # frozen with the backlog
        release.set()
        await blocker
        assert [await t for t in tasks[-3:]] == [_gc.START - 3, _gc.START - 2, _gc.START - 1]
        await pool.join()
        gc.collect()
        assert not _gc.active()
        assert ref() is None


@pytest.mark.asyncio
async def test_closing_a_pool_with_a_backlog_ends_the_episode() -> None:
    release = asyncio.Event()
    pool = FunctionPool(1, worker="inline")
    await pool.start()
    try:
        pool.add_task(wait_event, release)
        for i in range(_gc.START):
            pool.add_task(_funcs.identity, i)
        gc.collect()
        assert _gc.active()
    finally:
        await pool.aclose(cancel=True)
    gc.collect()
    assert not _gc.active()
