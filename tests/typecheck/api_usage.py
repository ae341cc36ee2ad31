"""Typed usage of the public API: checked by ``mypy --strict`` in tests/test_typing.py, and
by ``pyright`` (strict, below) in the ``typing-pyright`` nox session.

Not run by pytest (no test functions); every ``assert_type`` is a claim about what a
user's type checker sees. Every ``# type: ignore[code]`` is a claim too: that line *must*
be an error (a call a user's checker has to reject). Both checkers fail on an ignore that
suppresses nothing: mypy through ``--strict`` (``warn_unused_ignores``), pyright through
the ``reportUnnecessaryTypeIgnoreComment`` setting below.
"""

# pyright: strict
# pyright: reportUnnecessaryTypeIgnoreComment=true

from __future__ import annotations

import functools
import types
from collections.abc import Sequence
from typing import assert_type

import msgspec

import taskpool
from taskpool import (
    FunctionPool,
    PersistentWorker,
    PoolSnapshot,
    Progress,
    RestartPolicy,
    Service,
    StatusType,
    Task,
    TaskRecord,
    TaskState,
    import_persistent_worker,
)
from taskpool.examples import math
from taskpool.metrics import PoolCollector, collector
from taskpool.testing import Gate, block_gate, wait_gate
from taskpool.web import StatusApp, StatusServer, status_app


async def add(a: int, b: int) -> int:
    return a + b


def mul(a: int, b: int) -> int:
    return a * b


async def usage() -> None:
    async with FunctionPool(2, worker="thread", restart=RestartPolicy(limit=3)) as pool:
        assert_type(pool, FunctionPool)
        t1 = pool.add_task(add, 1, 2)
        assert_type(t1, Task[int])
        assert_type(await t1, int)
        t2 = pool.add_task(mul, 2, 3, meta="m", timeout=1.0)
        assert_type(t2, Task[int])
        t3 = await pool.submit(functools.partial(mul, b=2), 5)
        assert_type(t3.result(), int)
        # fn, *args are checked against each other: a str where `add` takes two ints (and one
        # argument missing) must be rejected here, not only fail later in a worker.
        pool.add_task(add, "x")  # type: ignore[arg-type]
        await pool.submit(mul, "y")  # type: ignore[arg-type]
        assert_type(t1.state, TaskState)
        assert_type(t1.record, TaskRecord)
        assert_type(t1.cancel(), bool)
        assert_type(pool.then(lambda r, t: None).catch(lambda e, t: None), FunctionPool)
        assert_type(pool.status(), dict[str, int])
        assert_type(pool.status("completed"), int)
        assert_type(pool.status("completed", StatusType.PERCENT), float)
        assert_type(pool.status("completed", StatusType.RAW), list[TaskRecord])
        assert_type(pool.snapshot(), PoolSnapshot)
        assert_type(pool.has_available_worker(), bool)
        msgspec.json.encode(pool.snapshot())
        async with pool.events.subscribe("task.*") as sub:
            async for event in sub:
                assert_type(event.topic, str)
                break
        svc = pool.keep_alive(add, 1, 2, name="svc", worker="thread")
        assert_type(svc, Service)
        await svc.stop()

    proxy = await import_persistent_worker(math, worker="thread")
    # The typed way: call() checks arguments against the function's signature.
    assert_type(await proxy.call(math.add, 1, 2), int)
    assert_type(await proxy.call(math.slow_add, 1, 2), int)
    await proxy.terminate()
    taskpool.publish("topic", {"x": 1})


async def pool_bound() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        async with pool.import_persistent_worker("taskpool.examples.math", worker="thread") as proxy:
            assert_type(await proxy.call(math.fib, 10), int)


async def module_object(module: types.ModuleType) -> None:
    # A module object gives a proxy typed by it. (Passed `math` itself, pyright keeps the
    # module's own type, PersistentWorker[Module("taskpool.examples.math")], where mypy
    # widens to ModuleType: hence a parameter typed ModuleType here.)
    proxy = await import_persistent_worker(module, worker="thread")
    assert_type(proxy, PersistentWorker[types.ModuleType])
    await proxy.terminate()


async def gate_usage() -> None:
    async with FunctionPool(1, worker="thread") as pool, Gate(timeout=5.0) as gate:
        assert_type(gate, Gate)
        assert_type(gate.path, str)
        assert_type(gate.timeout, float)
        held = pool.add_task(wait_gate, gate.path, "held")
        assert_type(held, Task[str])
        assert_type(pool.add_task(wait_gate, gate.path, "held", 42), Task[int])
        assert_type(pool.add_task(block_gate, gate.path, "held"), Task[str])
        await gate.arrived("held")
        assert_type(gate.arrivals, Sequence[str])
        assert_type(gate.hangups, Sequence[str])
        gate.release("held", fail=False)
        await held
        assert_type(await wait_gate(gate.path, "tag"), str)
        assert_type(await wait_gate(gate.path, "tag", 42), int)
        assert_type(block_gate(gate.path, "tag"), str)
        assert_type(block_gate(gate.path, "tag", b"result"), bytes)
        await gate.until(lambda: len(gate.arrivals) > 1, "two arrivals")
        gate.open()


async def observability_usage() -> None:
    async with FunctionPool(2, worker="thread", worker_output="inherit") as pool:
        server = await pool.serve_status(port=0, token="t", title="usage", announce=False)
        assert_type(server, StatusServer)
        assert_type(server.url, str)
        assert_type(server.token, str | None)
        app = status_app(pool, token="t")
        assert_type(app, StatusApp)
        app.close()
        assert_type(collector(pool), PoolCollector)
        with Progress(total=3, label="usage") as progress:
            progress.track([pool.add_task(mul, 2, 3)])
            assert_type(progress.done, int)
        async for value in pool.map(functools.partial(mul, 2), [1, 2], progress=True):
            assert_type(value, int)
        async for settled in pool.map(functools.partial(mul, 2), [1, 2], return_exceptions=True):
            assert_type(settled, int | BaseException)
        retried = pool.add_task(mul, 2, 3, priority=5, retries=2, retry_on=(ValueError,))
        assert_type(retried, Task[int])
        assert_type(retried.attempts, int)
        assert_type(await pool.submit(mul, 1, 1, priority=-1, retries=1), Task[int])
        await server.aclose()
