"""multiprocessing objects as a process task's arguments and results, and faithful errors.

What travels by name (locks, semaphores, events made with the ``spawn`` context) and
``Manager()`` proxies cross to and from running workers; what needs a file descriptor
(a ``Queue``, a ``Pipe`` connection, a shared ``Value``) or was made with the ``fork``
context cannot, and fails with a SerializationError saying what to do instead. Errors
while (un)pickling a call keep the exception that was raised (CPython's
``ExecutorDeadlockTest`` cases, with objects of our own), and a task's SystemExit keeps
its code.
"""

from __future__ import annotations

import functools
import multiprocessing
import pickle
from collections.abc import Iterator
from multiprocessing import resource_tracker
from typing import Any

import pytest
import pytest_asyncio

from taskpool import FunctionPool, RemoteTraceback, SerializationError, TaskFailed

from . import _funcs as f
from . import _mp_funcs as m
from .conftest import KINDS

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif("process" not in KINDS, reason="needs process workers"),
]

SPAWN = multiprocessing.get_context("spawn")
FORK = multiprocessing.get_context("fork")


@pytest.fixture(autouse=True, scope="module")
def _resource_tracker() -> Iterator[None]:
    """Spawn-context locks start multiprocessing's resource tracker, a process that lives
    as long as this one: start it before any test counts child processes."""
    resource_tracker.ensure_running()
    yield


@pytest_asyncio.fixture
async def pool() -> Any:
    async with FunctionPool(1, worker="process") as p:
        yield p


# --- what crosses -------------------------------------------------------------------------------


async def test_workers_have_the_pools_authentication_key(pool: FunctionPool) -> None:
    assert await pool.add_task(m.worker_authkey) == bytes(multiprocessing.current_process().authkey)


async def test_a_manager_proxy_crosses_both_ways() -> None:
    with SPAWN.Manager() as manager:
        shared = manager.dict()
        async with FunctionPool(1, worker="process") as pool:
            await pool.add_task(m.set_item, shared, "written", 42)
            back = await pool.add_task(f.identity, shared)
        assert shared["written"] == 42
        back["again"] = 1  # the proxy that came back works here too
        assert dict(shared) == {"written": 42, "again": 1}


async def test_a_spawn_lock_crosses_both_ways_and_stays_the_same_lock(pool: FunctionPool) -> None:
    lock = SPAWN.Lock()
    assert await pool.add_task(m.try_acquire, lock)
    with lock:
        assert not await pool.add_task(m.try_acquire, lock)
    back = await pool.add_task(f.identity, lock)
    assert back.acquire(block=False)
    try:
        assert not lock.acquire(block=False)  # one semaphore, wherever it went
    finally:
        back.release()


async def test_spawn_events_and_semaphores_as_arguments(pool: FunctionPool) -> None:
    event, semaphore = SPAWN.Event(), SPAWN.Semaphore(0)
    assert await pool.add_task(m.set_event, event)
    assert event.is_set()
    await pool.add_task(m.release, semaphore)
    assert semaphore.acquire(block=False)


async def test_a_lock_in_keyword_arguments_crosses_too(pool: FunctionPool) -> None:
    lock = SPAWN.Lock()
    with lock:
        assert not await pool.add_task(functools.partial(m.try_acquire, lock=lock))


# --- what does not, and says what to do instead --------------------------------------------------


async def test_a_fork_context_lock_is_refused_with_advice(pool: FunctionPool) -> None:
    for bad in (FORK.Lock(), FORK.Event()):
        with pytest.raises(SerializationError, match=r"'fork' start method.*get_context\('spawn'\)") as info:
            await pool.add_task(f.identity, bad)
        assert isinstance(info.value, TypeError)
        assert "args[0]" in str(info.value)
    with pytest.raises(SerializationError, match=r"'fork' start method"):  # made in the worker
        await pool.add_task(m.fork_lock)
    assert await pool.add_task(f.add, 1, 2) == 3


@pytest.mark.parametrize("make", [SPAWN.Queue, lambda: SPAWN.Pipe()[0], lambda: SPAWN.Value("i", 0)])
async def test_what_needs_a_file_descriptor_is_refused_with_advice(pool: FunctionPool, make: Any) -> None:
    bad = make()
    with pytest.raises(SerializationError, match=r"file descriptor.*initargs.*Manager\(\)") as info:
        await pool.add_task(f.identity, bad)
    assert "args[0]" in str(info.value)
    assert await pool.add_task(f.add, 1, 2) == 3


async def test_a_queue_made_in_the_worker_cannot_come_back(pool: FunctionPool) -> None:
    with pytest.raises(SerializationError, match=r"cannot be sent back") as info:
        await pool.add_task(m.new_queue)
    assert "file descriptor" in str(info.value.__cause__)


# --- errors while (un)pickling keep what was raised -------------------------------------------------


async def test_an_argument_that_cannot_be_pickled_keeps_its_exception(pool: FunctionPool) -> None:
    with pytest.raises(SerializationError, match=r"args\[0\].*ReduceError: refused in __reduce__") as info:
        await pool.add_task(f.identity, m.RefusesPickle())
    assert type(info.value.__cause__) is m.ReduceError


async def test_an_argument_that_fails_to_load_in_the_worker_keeps_its_exception(pool: FunctionPool) -> None:
    with pytest.raises(m.LoadError, match="cannot load this") as info:
        await pool.add_task(f.identity, m.FailsToLoad())
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "_fail_loading" in info.value.__cause__.traceback


async def test_a_result_that_cannot_be_pickled_keeps_its_exception(pool: FunctionPool) -> None:
    with pytest.raises(SerializationError, match=r"RefusesPickle\) cannot be sent back") as info:
        await pool.add_task(m.give, "refuses")
    cause = info.value.__cause__
    assert type(cause) is m.ReduceError
    assert str(cause) == "refused in __reduce__"
    assert isinstance(cause.__cause__, RemoteTraceback)  # where it was raised, in the worker


async def test_a_result_that_fails_to_load_here_keeps_its_exception(pool: FunctionPool) -> None:
    with pytest.raises(SerializationError, match="cannot receive the result") as info:
        await pool.add_task(m.give, "fails")
    assert type(info.value.__cause__) is m.LoadError


async def test_a_pickling_error_in_the_worker_keeps_its_type(pool: FunctionPool) -> None:
    with pytest.raises(SerializationError) as info:
        await pool.add_task(m.give, "pickling")
    assert type(info.value.__cause__) is pickle.PicklingError
    assert str(info.value.__cause__) == "Error in pickle"


# --- SystemExit keeps its code -----------------------------------------------------------------------


@pytest.mark.parametrize("fn", [m.exit_with, m.async_exit_with])
@pytest.mark.parametrize(("code", "message"), [(3, "3"), ("bye", "bye"), (None, "")])
async def test_a_tasks_system_exit_is_task_failed_with_its_code(
    pool: FunctionPool, fn: Any, code: Any, message: str
) -> None:
    with pytest.raises(TaskFailed) as info:
        await pool.add_task(fn, code)
    assert (info.value.type_name, info.value.message) == ("SystemExit", message)
    assert await pool.add_task(f.add, 1, 2) == 3  # the worker keeps serving
