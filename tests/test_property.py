"""Property: under any interleaving of adds, releases, cancels, timeouts and failing hooks,
the books balance after every step, and every task settles exactly once.

Each generated example is an op list run in one event loop against a fresh pool. Tasks that
must stay running wait at a :class:`Gate` (no sleeps); ``yield`` ops let the loop turn.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from taskpool import FunctionPool, StatusType, Task, TaskCancelled, TaskState

from . import _funcs as f
from ._support import Gate, caps

FINAL = {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED}
HOOKS = ["then", "catch", "race", "all_settled", "done_callback"]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("ok")),
        st.tuples(st.just("raise")),
        st.tuples(st.just("async_ok")),
        st.tuples(st.just("gated")),
        st.tuples(st.just("gated_timeout")),
        st.tuples(st.just("release"), st.integers(0, 30), st.booleans()),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("await"), st.integers(0, 30)),
        st.tuples(st.just("drop_awaiter"), st.integers(0, 30)),
        st.tuples(st.just("bad_hook"), st.sampled_from(HOOKS)),
        st.tuples(st.just("yield"), st.integers(1, 5)),
    ),
    min_size=5,
    max_size=40,
)


def check_books(pool: FunctionPool, tasks: list[Task[Any]]) -> None:
    c = pool.status()
    assert c["total"] == c["queued"] + c["active"] + c["completed"] == len(tasks)
    assert c["completed"] == c["succeeded"] + c["failed"] + c["cancelled"]
    assert c["remaining"] == c["queued"] + c["active"]
    states = Counter(t.state for t in tasks)
    # Every running task is active; a task not started yet is queued, or active while it
    # waits in a worker's window.
    assert c["queued"] + c["active"] == states[TaskState.QUEUED] + states[TaskState.RUNNING]
    assert c["active"] >= states[TaskState.RUNNING]
    assert len(pool.status("queued", StatusType.RAW)) == c["queued"]
    assert len(pool.status("active", StatusType.RAW)) == c["active"]
    assert c["succeeded"] == states[TaskState.SUCCEEDED]
    assert c["failed"] == states[TaskState.FAILED]
    assert c["cancelled"] == states[TaskState.CANCELLED]


async def scenario(kind: str, program: list[tuple[Any, ...]]) -> None:
    tasks: list[Task[Any]] = []
    gated: list[str] = []
    settled: Counter[int] = Counter()  # done-callback calls per task
    hooked: Counter[int] = Counter()  # then/catch calls per task
    awaiters: dict[asyncio.Future[Any], Task[Any]] = {}
    dropped: set[asyncio.Future[Any]] = set()

    async def await_task(t: Task[Any]) -> tuple[bool, Any]:
        try:
            return True, await t
        except Exception as exc:
            return False, exc

    def fail_hook(*args: Any) -> None:
        raise RuntimeError("hook failed")

    pool = FunctionPool(2, worker=kind)
    terminal_events = pool.events.subscribe("task.succeeded", "task.failed", "task.cancelled", maxsize=1000)
    async with Gate() as gate, pool:
        pool.then(lambda r, t: hooked.update([t.id])).catch(lambda e, t: hooked.update([t.id]))

        def added(t: Task[Any]) -> None:
            t.add_done_callback(lambda t: settled.update([t.id]))
            tasks.append(t)

        for op in program:
            name = op[0]
            if name == "ok":
                added(pool.add_task(f.add, len(tasks), 1))
            elif name == "raise":
                added(pool.add_task(f.fail, "boom"))
            elif name == "async_ok":
                added(pool.add_task(f.async_identity, len(tasks)))
            elif name in ("gated", "gated_timeout"):
                tag = f"g{len(gated)}"
                gated.append(tag)
                timeout = 0.01 if name == "gated_timeout" else None
                added(pool.add_task(f.wait_gate, gate.path, tag, timeout=timeout))
            elif name == "release" and gated:
                gate.release(gated[op[1] % len(gated)], fail=op[2])
            elif name == "cancel" and tasks:
                t = tasks[op[1] % len(tasks)]
                was_done = t.done()
                assert t.cancel() is (not was_done)
                assert t.done()
            elif name == "await" and tasks:
                t = tasks[op[1] % len(tasks)]
                awaiters[asyncio.ensure_future(await_task(t))] = t
            elif name == "drop_awaiter" and awaiters:
                fut = list(awaiters)[op[1] % len(awaiters)]
                if fut.cancel():
                    dropped.add(fut)
            elif name == "bad_hook":
                hook = op[1]
                if hook == "done_callback":
                    if tasks:
                        tasks[-1].add_done_callback(fail_hook)
                else:
                    getattr(pool, hook)(fail_hook)
            elif name == "yield":
                for _ in range(op[1]):
                    await asyncio.sleep(0)
            check_books(pool, tasks)
        gate.open()
        async with asyncio.timeout(30):
            await pool.join()
            results = {fut: await fut for fut in awaiters if fut not in dropped}
        check_books(pool, tasks)

    # Every task reached exactly one final state, observed once by each mechanism.
    events = Counter([e.task_id async for e in terminal_events])
    for t in tasks:
        assert t.state in FINAL
        assert settled[t.id] == 1
        assert hooked[t.id] == 1
        assert events[t.id] == 1
        exc = t.exception()
        if t.state is TaskState.SUCCEEDED:
            assert exc is None
        elif t.state is TaskState.CANCELLED:
            assert isinstance(exc, TaskCancelled)
        else:
            assert exc is not None and not isinstance(exc, TaskCancelled)
    # Every awaiter got its task's outcome; dropping an awaiter never cancelled a task.
    for fut, (ok, value) in results.items():
        t = awaiters[fut]
        if ok:
            assert t.state is TaskState.SUCCEEDED and value == t.result()
        else:
            assert value is t.exception()
    assert pool.status("total") == len(tasks)
    assert pool.state == "closed"


def test_books_balance_and_every_task_settles_once(kind: str) -> None:
    @settings(max_examples=15 if caps(kind).isolated else 100, deadline=None)
    @given(program=ops)
    def run(program: list[tuple[Any, ...]]) -> None:
        asyncio.run(scenario(kind, program))

    run()
