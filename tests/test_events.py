"""The event bus: globs, every core topic, bounded buffers, publish from tasks and from the pool."""

from __future__ import annotations

import asyncio
import threading
import time

import msgspec
import pytest

import taskpool
from taskpool import (
    AnyEvent,
    EventBus,
    FunctionPool,
    HookErrorEvent,
    PoolEvent,
    TaskEvent,
    UserEvent,
    WorkerEvent,
)

from . import _funcs as f
from ._support import Gate, collect, settle

pytestmark = pytest.mark.asyncio

CORE_TOPICS = {
    "task.queued", "task.started", "task.succeeded", "task.failed", "task.cancelled",
    "worker.started", "worker.exited", "worker.restarted",
    "pool.drained", "pool.closed", "pool.hook_error",
}  # fmt: skip


def drain(sub: taskpool.Subscription) -> list[taskpool.Event]:
    out = []
    while (event := sub.get_nowait()) is not None:
        out.append(event)
    return out


async def test_subscriptions_match_topics_by_glob(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        subs = {
            "task.*": pool.events.subscribe("task.*"),
            "task.s*": pool.events.subscribe("task.s*"),
            "pair": pool.events.subscribe("task.queued", "pool.*"),
            "none": pool.events.subscribe(),
            "nothing": pool.events.subscribe("no.such.*"),
        }
        assert pool.events.subscriber_count == 5
        await pool.add_task(f.add, 1, 2)
        await pool.join()
        pool.events.publish("task.custom", 1)  # user topics may share a prefix
        topics = {name: [e.topic for e in drain(sub)] for name, sub in subs.items()}
        for sub in subs.values():
            sub.close()
        assert pool.events.subscriber_count == 0
    assert topics["task.*"] == ["task.queued", "task.started", "task.succeeded", "task.custom"]
    assert topics["task.s*"] == ["task.started", "task.succeeded"]
    assert topics["pair"] == ["task.queued", "pool.drained"]
    assert topics["none"] == ["task.queued", "task.started", "task.succeeded", "pool.drained", "task.custom"]
    assert topics["nothing"] == []


@pytest.mark.uvloop
async def test_every_core_topic_is_published(kind: str) -> None:
    pool = FunctionPool(1, worker=kind, max_tasks_per_worker=1)
    sub = pool.events.subscribe("*")
    async with sub, Gate() as gate:
        async with pool:
            pool.then(lambda r, t: 1 / 0)
            blocker = pool.add_task(f.wait_gate, gate.path, "b")
            doomed = pool.add_task(f.add, 1, 1)
            await gate.arrived("b")
            doomed.cancel()
            gate.release("b")
            await blocker
            await settle(pool.add_task(f.fail, "x"))
            pool.events.publish("user.topic", {"k": [1, 2]})
        events = [e async for e in sub]
    topics = [e.topic for e in events]
    assert set(topics) == CORE_TOPICS | {"user.topic"}
    assert topics[-1] == "pool.closed"
    for e in events:
        assert isinstance(e, taskpool.Event)
        assert isinstance(e.time, float) and abs(e.time - time.time()) < 60
        if e.topic.startswith("task."):
            assert isinstance(e, TaskEvent) and isinstance(e.task_id, int)
        elif e.topic.startswith("worker."):
            assert isinstance(e, WorkerEvent) and e.worker_id == 0 and e.worker_kind == kind
        elif e.topic == "pool.hook_error":
            assert isinstance(e, HookErrorEvent)
            assert (e.hook, e.error, e.task_id) == ("then", "ZeroDivisionError: division by zero", blocker.id)
        elif e.topic.startswith("pool."):
            assert isinstance(e, PoolEvent) and e.pool == pool.name
        else:
            assert isinstance(e, UserEvent) and e.data == {"k": [1, 2]}
        assert msgspec.json.decode(msgspec.json.encode(e), type=AnyEvent) == e
    cancelled = next(e for e in events if e.topic == "task.cancelled")
    assert (cancelled.task_id, cancelled.error[:13]) == (doomed.id, "TaskCancelled")
    restarted = [e for e in events if e.topic == "worker.restarted"]
    assert {e.reason for e in restarted} == {"recycled"}


async def test_recycled_workers_run_at_most_max_tasks_each(kind: str) -> None:
    pool = FunctionPool(1, worker=kind, max_tasks_per_worker=2)
    sub = pool.events.subscribe("worker.started", "task.started")
    async with sub:
        async with pool:
            tasks = [pool.add_task(f.add, i, 0) for i in range(6)]
        assert [t.result() for t in tasks] == list(range(6))
        topics = [e.topic async for e in sub]
    # Tasks started by each worker, in order: a new worker after every second task.
    per_worker = " ".join(topics).split("worker.started")[1:]
    assert [seg.split() for seg in per_worker[:3]] == [["task.started"] * 2] * 3
    assert all(seg.split() == [] for seg in per_worker[3:])


async def test_a_slow_subscriber_drops_the_oldest_events_and_never_slows_the_pool(kind: str) -> None:
    async with FunctionPool(2, worker=kind) as pool:
        async with pool.events.subscribe("task.*", maxsize=5) as slow, pool.events.subscribe("task.*") as full:
            for i in range(20):
                pool.add_task(f.add, i, 0)
            await pool.join()  # finishes though nobody reads the subscription
            assert slow.maxsize == 5
            assert slow.dropped == 60 - 5
            everything = drain(full)
            assert len(everything) == 60 and full.dropped == 0
            assert drain(slow) == everything[-5:]  # the newest are kept


async def test_iteration_ends_when_the_pool_closes(kind: str) -> None:
    pool = FunctionPool(1, worker=kind)
    sub = pool.events.subscribe("task.succeeded", "pool.closed")
    seen: list[str] = []

    async def consume() -> None:
        async for event in sub:
            seen.append(event.topic)

    consumer = asyncio.ensure_future(consume())
    async with pool:
        await pool.add_task(f.add, 1, 1)
    await asyncio.wait_for(consumer, 10)  # ended by itself
    assert seen == ["task.succeeded", "pool.closed"]
    assert sub.closed and pool.events.closed
    late = pool.events.subscribe("*")  # subscribing to a closed bus: nothing, and no hang
    assert [e async for e in late] == []


@pytest.mark.uvloop
@pytest.mark.parametrize("fn", [f.publish_sync, f.publish_async], ids=["sync", "async"])
async def test_publish_from_inside_a_task_is_tagged_with_task_and_worker(kind: str, fn: object) -> None:
    async with FunctionPool(2, worker=kind) as pool:
        async with pool.events.subscribe("progress.*") as sub:
            task = pool.add_task(fn, "progress.step", {"done": 3, "of": 4})
            assert await task == "published"
            [event] = await collect(sub, 1)
    assert isinstance(event, UserEvent)
    assert event.topic == "progress.step"
    assert event.data == {"done": 3, "of": 4}
    assert event.task_id == task.id
    assert event.worker_id == task.worker_id
    assert event.worker_id in (0, 1)


async def test_publish_from_the_pool_side_has_no_worker(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        async with pool.events.subscribe("app.*") as sub:
            pool.events.publish("app.hello", [1, "two"])
            pool.events.publish("other.topic", "not matched")
            [event] = await collect(sub, 1)
    assert (event.topic, event.data, event.task_id, event.worker_id) == ("app.hello", [1, "two"], None, None)


async def test_publish_outside_a_task_is_a_no_op_and_validates_the_topic() -> None:
    taskpool.publish("nobody.listens", 1)  # not inside a task: nothing happens
    with pytest.raises(TypeError, match="topic"):
        taskpool.publish(3, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="topic"):
        taskpool.publish("", 1)
    bus = EventBus()
    with pytest.raises(TypeError, match="topic"):
        bus.publish(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        bus.publish("")
    with pytest.raises(TypeError, match="patterns"):
        bus.subscribe(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maxsize"):
        bus.subscribe("*", maxsize=0)


async def test_a_subscriber_on_another_threads_loop_receives_events(kind: str) -> None:
    async with FunctionPool(1, worker=kind) as pool:
        sub = pool.events.subscribe("task.succeeded", "pool.closed")
        received: list[str] = []

        async def consume() -> None:
            async for event in sub:
                received.append(event.topic)

        thread = threading.Thread(target=asyncio.run, args=(consume(),))
        thread.start()
        try:
            await pool.add_task(f.add, 1, 2)
        finally:
            await pool.aclose()
            await asyncio.to_thread(thread.join, 10)
    assert received == ["task.succeeded", "pool.closed"]


async def test_closing_a_subscription_stops_delivery() -> None:
    bus = EventBus()
    async with bus.subscribe("a.*") as sub:
        bus.publish("a.one", 1)
    bus.publish("a.two", 2)
    assert sub.closed
    assert [e.data async for e in sub] == [1]  # what was buffered is still read


async def test_hot_lists_the_per_task_topics_someone_wants() -> None:
    import gc

    from taskpool._events import HOT_TOPICS

    bus = EventBus()
    assert bus.hot == frozenset()
    dash = bus.subscribe("worker.*", "pool.*")  # a dashboard: costs a task nothing
    assert bus.active and bus.hot == frozenset()
    failed = bus.subscribe("task.failed")
    assert bus.hot == {"task.failed"}
    everything = bus.subscribe()
    assert bus.hot == set(HOT_TOPICS)
    everything.close()
    assert bus.hot == {"task.failed"}
    del failed  # dropped without closing: forgotten with its last reference
    gc.collect()
    assert bus.hot == frozenset()
    bus.close()
    assert bus.hot == frozenset() and dash.closed
