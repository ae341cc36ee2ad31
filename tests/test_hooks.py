"""Hooks: then / catch / race / all_settled, rounds, async hooks, hooks that fail or stall."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from taskpool import FunctionPool, Task, TaskCancelled, TaskTimeout

from . import _funcs as f
from ._support import Gate, collect

pytestmark = pytest.mark.asyncio


@pytest.mark.uvloop
async def test_hook_order_and_arguments(kind: str) -> None:
    log: list[tuple[str, Any, Any]] = []
    async with FunctionPool(3, worker=kind) as pool, Gate() as gate:
        chained = (
            pool.race(lambda out, t: log.append(("race", out, t)))
            .then(lambda res, t: log.append(("then", res, t)))
            .catch(lambda exc, t: log.append(("catch", exc, t)))
            .all_settled(lambda tasks: log.append(("all_settled", list(tasks), None)))
        )
        assert chained is pool
        a, b, c = (pool.add_task(f.wait_gate, gate.path, tag) for tag in ("a", "b", "c"))
        await gate.arrived("a", "b", "c")
        gate.release("b", fail=True)
        with pytest.raises(ValueError):
            await b
        gate.release("c")
        await c
        gate.release("a")
        await a
        await pool.join()
    kinds = [entry[0] for entry in log]
    assert kinds == ["race", "catch", "then", "then", "all_settled"]
    race, catch, then_c, then_a, settled = log
    assert race[2] is b and isinstance(race[1], ValueError)  # the first to settle, failed or not
    assert catch[2] is b and catch[1] is b.exception()
    assert then_c[1:] == ("c", c)
    assert then_a[1:] == ("a", a)
    assert settled[1] == [b, c, a]  # in the order they settled


async def test_several_hooks_of_a_kind_run_in_registration_order(kind: str) -> None:
    calls: list[str] = []
    async with FunctionPool(1, worker=kind) as pool:
        pool.then(lambda r, t: calls.append("first")).then(lambda r, t: calls.append("second"))
        await pool.add_task(f.add, 1, 1)
    assert calls == ["first", "second"]


async def test_hooks_reject_non_callables(kind: str) -> None:
    pool = FunctionPool(1, worker=kind)
    for hook in (pool.then, pool.catch, pool.race, pool.all_settled):
        with pytest.raises(TypeError, match="callable"):
            hook(42)  # type: ignore[arg-type]
    await pool.aclose()


@pytest.mark.uvloop
async def test_each_round_has_its_race_and_all_settled(kind: str) -> None:
    races: list[Task[Any]] = []
    rounds: list[list[Task[Any]]] = []
    async with FunctionPool(2, worker=kind) as pool, Gate() as gate:
        pool.race(lambda out, t: races.append(t)).all_settled(lambda ts: rounds.append(list(ts)))
        async with pool.events.subscribe("pool.drained") as drained:
            x = pool.add_task(f.wait_gate, gate.path, "x")
            y = pool.add_task(f.wait_gate, gate.path, "y")
            await gate.arrived("x", "y")
            gate.release("y")
            await y
            assert rounds == []  # x still runs: the round is open
            gate.release("x")
            await x
            [first] = await collect(drained, 1)
            assert rounds == [[y, x]]
            z = pool.add_task(f.wait_gate, gate.path, "z")  # the pool was idle: a new round
            w = pool.add_task(f.wait_gate, gate.path, "w")
            await gate.arrived("z", "w")
            gate.release("z", fail=True)
            with pytest.raises(ValueError):
                await z
            gate.release("w")
            await pool.join()
            [second] = await collect(drained, 1)
    assert races == [y, z]
    assert rounds == [[y, x], [z, w]]
    assert (first.round, first.settled) == (1, 2)
    assert (second.round, second.settled) == (2, 2)


async def test_catch_sees_timeouts_and_cancellations(kind: str) -> None:
    caught: list[tuple[type, int]] = []
    async with FunctionPool(2, worker=kind) as pool, Gate() as gate:
        pool.catch(lambda exc, t: caught.append((type(exc), t.id)))
        slow = pool.add_task(f.wait_gate, gate.path, "slow", timeout=0.05)
        victim = pool.add_task(f.wait_gate, gate.path, "victim")
        await gate.arrived("victim")
        victim.cancel()
        with pytest.raises(TaskTimeout):
            await slow
    assert sorted(caught, key=lambda c: c[1]) == [(TaskTimeout, slow.id), (TaskCancelled, victim.id)]


@pytest.mark.uvloop
async def test_async_hooks_are_awaited(kind: str) -> None:
    log: list[tuple[str, Any]] = []

    async def record(name: str, value: Any) -> None:
        await asyncio.sleep(0)
        log.append((name, value))

    async with FunctionPool(2, worker=kind) as pool:
        pool.then(lambda r, t: record("then", r))  # a plain function returning a coroutine
        pool.catch(lambda e, t: record("catch", type(e)))

        async def race(out: Any, t: Task[Any]) -> None:
            await record("race", t.id)

        async def all_settled(tasks: list[Task[Any]]) -> None:
            await record("all_settled", [t.id for t in tasks])

        pool.race(race).all_settled(all_settled)
        ok = pool.add_task(f.add, 2, 3)
        await ok
        bad = pool.add_task(f.fail, "x")
        await pool.join()  # waits for the async hooks too
    assert ("then", 5) in log
    assert ("catch", ValueError) in log
    assert ("race", ok.id) in log
    assert [v for k, v in log if k == "all_settled"] in ([[ok.id, bad.id]], [[ok.id], [bad.id]])


async def test_a_hook_that_raises_is_logged_and_published_and_changes_nothing(kind: str) -> None:
    seen: list[str] = []

    def bad_then(result: Any, task: Task[Any]) -> None:
        raise RuntimeError("then hook broke")

    async def bad_async_catch(exc: BaseException, task: Task[Any]) -> None:
        await asyncio.sleep(0)
        raise KeyError("async catch broke")

    def bad_race(out: Any, task: Task[Any]) -> None:
        raise RuntimeError("race hook broke")

    def bad_all_settled(tasks: list[Task[Any]]) -> None:
        raise RuntimeError("all_settled hook broke")

    with capture_logs() as logs:
        pool = FunctionPool(1, worker=kind)
        sub = pool.events.subscribe("pool.hook_error")
        async with pool:
            pool.then(bad_then).then(lambda r, t: seen.append(f"then {r}"))
            pool.catch(bad_async_catch).catch(lambda e, t: seen.append(f"catch {e}"))
            pool.race(bad_race).all_settled(bad_all_settled)
            ok = pool.add_task(f.add, 1, 2)
            assert await ok == 3
            bad = pool.add_task(f.fail, "task failed")
            with pytest.raises(ValueError, match="task failed"):
                await bad
            ok.add_done_callback(lambda t: 1 / 0)
            await pool.join()
            # The pool still works, and the tasks' outcomes are untouched.
            assert await pool.add_task(f.add, 2, 2) == 4
            assert pool.status("succeeded") == 2
            assert pool.status("failed") == 1
            assert ok.result() == 3
            assert isinstance(bad.exception(), ValueError)
    errors = [e async for e in sub]  # every one, up to the pool's close
    assert seen == ["then 3", "catch task failed", "then 4"]
    by_hook: dict[str, Any] = {}
    for e in errors:
        by_hook.setdefault(e.hook, e)  # the first of each
    assert [e.task_id for e in errors if e.hook == "then"] == [ok.id, ok.id + 2]
    assert set(by_hook) == {"then", "catch", "race", "all_settled", "done_callback"}
    assert by_hook["then"].error == "RuntimeError: then hook broke"
    assert by_hook["then"].task_id == ok.id
    assert by_hook["catch"].error == "KeyError: 'async catch broke'"
    assert by_hook["catch"].task_id == bad.id
    assert by_hook["done_callback"].error.startswith("ZeroDivisionError")
    assert by_hook["all_settled"].task_id is None
    logged = [entry for entry in logs if entry["event"] == "hook raised"]
    assert {entry["hook"] for entry in logged} >= {"then", "catch", "race", "all_settled", "done_callback"}
    assert all(entry["log_level"] == "error" for entry in logged)
    assert any(
        entry["hook"] == "then" and entry["task_id"] == ok.id and isinstance(entry["exc_info"], RuntimeError)
        for entry in logged
    )


@pytest.mark.uvloop
async def test_a_stalled_async_hook_does_not_delay_other_tasks(kind: str) -> None:
    release_hook = asyncio.Event()
    third_hooked = asyncio.Event()
    finished: list[str] = []

    async def stall_on_first(result: str, task: Task[Any]) -> None:
        if result == "first":
            await release_hook.wait()
        finished.append(result)

    async with FunctionPool(1, worker=kind) as pool:
        pool.then(stall_on_first)
        pool.then(lambda r, t: r == "third" and third_hooked.set())
        try:
            assert await pool.add_task(f.identity, "first") == "first"
            # The one worker goes on with the next tasks, and their hooks run, meanwhile.
            results = [await pool.add_task(f.identity, name) for name in ("second", "third")]
            assert results == ["second", "third"]
            await asyncio.wait_for(third_hooked.wait(), 10)
            await asyncio.sleep(0)  # the async hook of "third" got its first step
            assert finished == ["second", "third"]
            assert pool.status("active") == 0
        finally:
            release_hook.set()
    assert finished == ["second", "third", "first"]
