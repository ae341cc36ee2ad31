"""One adapter per process-pool peer, all driven from asyncio the way its docs suggest.

Each adapter exposes the same four operations, so that every workload is written
once and runs identically on every peer:

- ``await peer.start()``: create the pool (``workers`` processes);
- ``await peer.call(fn, *args)``: run one task and return its result;
- ``await peer.batch(fn, arglists)``: submit every task at once, then wait for all;
- ``await peer.stop()``: shut the pool down and wait for its workers to exit.

Adapters import their library lazily, so a child process only ever imports the
peer it measures.
"""

from __future__ import annotations

import asyncio
import importlib
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from benchmarks import _workloads as wl

TaskFn = Callable[..., Any]


class Peer:
    """Base adapter: ``batch`` defaults to gathering ``call`` coroutines."""

    name: ClassVar[str]
    label: ClassVar[str]
    #: how workers are started: spawn, fork, or a fresh interpreter (exec)
    start_method: ClassVar[str]
    #: accepts coroutine functions as tasks (and runs them on an event loop in the worker)
    runs_coroutines: ClassVar[bool] = False
    #: only accepts coroutine functions (plain functions are swapped for their async twin)
    needs_coroutines: ClassVar[bool] = False
    notes: ClassVar[str] = ""

    def __init__(self, workers: int, **options: Any) -> None:
        self.workers = workers
        self.options = options

    def task(self, fn: TaskFn) -> TaskFn:
        """The function this peer runs for workload ``fn`` (its async twin if needed)."""
        return wl.ASYNC_TWIN.get(fn, fn) if self.needs_coroutines else fn

    async def start(self) -> None:
        raise NotImplementedError

    async def call(self, fn: TaskFn, *args: Any) -> Any:
        raise NotImplementedError

    async def batch(self, fn: TaskFn, arglists: Sequence[tuple[Any, ...]]) -> list[Any]:
        return list(await asyncio.gather(*(self.call(fn, *args) for args in arglists)))

    async def stop(self) -> None:
        raise NotImplementedError

    async def warm(self) -> int:
        """Make sure every worker is up and has run a task; returns the distinct workers seen.

        Every worker must hold one blocking barrier task at the same time, so this
        works whether the peer starts its workers eagerly or on demand.
        """
        with tempfile.TemporaryDirectory(prefix="taskpool-bench-warm-") as tmp:
            pids = await self.batch(self.task(wl.barrier_pid), [(tmp, self.workers, 5.0)] * self.workers)
        await self.batch(self.task(wl.noop), [()] * 100)
        return len(set(pids))


class TaskpoolPeer(Peer):
    name = "taskpool"
    label = "taskpool"
    start_method = "spawn"
    runs_coroutines = True
    notes = "FunctionPool(worker='process'); add_task all, then join()"
    kind: ClassVar[str] = "process"

    async def start(self) -> None:
        taskpool = importlib.import_module("taskpool")
        self.pool = taskpool.FunctionPool(pool_size=self.workers, worker=self.kind, **self.options)
        await self.pool.start()

    async def call(self, fn: TaskFn, *args: Any) -> Any:
        return await self.pool.add_task(fn, *args)

    async def batch(self, fn: TaskFn, arglists: Sequence[tuple[Any, ...]]) -> list[Any]:
        add = self.pool.add_task
        tasks = [add(fn, *args) for args in arglists]
        await self.pool.join()
        return [task.result() for task in tasks]

    async def stop(self) -> None:
        await self.pool.aclose()


class ExecutorPeer(Peer):
    """``concurrent.futures.ProcessPoolExecutor`` through ``loop.run_in_executor``."""

    method: ClassVar[str]
    notes = "loop.run_in_executor(ProcessPoolExecutor(...), fn, *args)"

    async def start(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(self.method))

    def _submit(self, fn: TaskFn, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def call(self, fn: TaskFn, *args: Any) -> Any:
        return await self._submit(fn, *args)

    async def batch(self, fn: TaskFn, arglists: Sequence[tuple[Any, ...]]) -> list[Any]:
        return list(await asyncio.gather(*(self._submit(fn, *args) for args in arglists)))

    async def stop(self) -> None:
        self.executor.shutdown(wait=True)


class ForkExecutorPeer(ExecutorPeer):
    name = "ppe-fork"
    label = "ProcessPoolExecutor"
    start_method = method = "fork"


class SpawnExecutorPeer(ExecutorPeer):
    name = "ppe-spawn"
    label = "ProcessPoolExecutor"
    start_method = method = "spawn"


class AnyioPeer(Peer):
    name = "anyio"
    label = "anyio.to_process"
    start_method = "exec"
    notes = (
        "to_process.run_sync(fn, *args, limiter=CapacityLimiter(n)); anyio has no pool "
        "object: its workers are killed when the event loop closes"
    )

    async def start(self) -> None:
        import anyio
        from anyio import to_process

        self.limiter = anyio.CapacityLimiter(self.workers)
        self.run_sync = to_process.run_sync

    async def call(self, fn: TaskFn, *args: Any) -> Any:
        return await self.run_sync(fn, *args, limiter=self.limiter)

    async def stop(self) -> None:
        """Nothing to do: anyio kills its workers at event-loop shutdown (checked after it)."""


class AiomultiprocessPeer(Peer):
    name = "aiomultiprocess"
    label = "aiomultiprocess"
    start_method = "spawn"
    runs_coroutines = needs_coroutines = True
    notes = (
        "tasks must be coroutines (the async twins of the workload functions); Pool.apply "
        "for one task, Pool.starmap for a batch; its result plumbing polls every 5 ms; "
        "stop() also shuts down its global SyncManager process"
    )

    async def start(self) -> None:
        from aiomultiprocess import Pool

        self.pool = Pool(processes=self.workers, **self.options)

    async def call(self, fn: TaskFn, *args: Any) -> Any:
        return await self.pool.apply(fn, args)

    async def batch(self, fn: TaskFn, arglists: Sequence[tuple[Any, ...]]) -> list[Any]:
        return list(await self.pool.starmap(fn, arglists))

    async def warm(self) -> int:
        # A worker takes up to `childconcurrency` tasks at once, so a barrier could all land
        # on one worker. Its workers start eagerly; enough short sleeps reach every one.
        per_worker = self.pool.childconcurrency
        sleeps = [(0.02,)] * (self.workers * per_worker * 2)
        await self.batch(wl.sleep_async, sleeps)
        await self.batch(wl.noop_async, [()] * 100)
        return len(set(await self.batch(wl.getpid_async, [()] * (self.workers * per_worker))))

    async def stop(self) -> None:
        self.pool.close()
        await self.pool.join()
        # Every aiomultiprocess process registers with one global SyncManager, which
        # otherwise lives on until the interpreter exits: stop it with the pool.
        from aiomultiprocess.core import get_manager

        get_manager().shutdown()


class LokyPeer(Peer):
    name = "loky"
    label = "loky"
    start_method = "exec"
    notes = "asyncio.wrap_future(get_reusable_executor(max_workers=n).submit(fn, *args))"

    async def start(self) -> None:
        from loky import get_reusable_executor

        self.executor = get_reusable_executor(max_workers=self.workers)

    def _submit(self, fn: TaskFn, *args: Any) -> asyncio.Future[Any]:
        return asyncio.wrap_future(self.executor.submit(fn, *args))

    async def call(self, fn: TaskFn, *args: Any) -> Any:
        return await self._submit(fn, *args)

    async def batch(self, fn: TaskFn, arglists: Sequence[tuple[Any, ...]]) -> list[Any]:
        return list(await asyncio.gather(*(self._submit(fn, *args) for args in arglists)))

    async def stop(self) -> None:
        self.executor.shutdown(wait=True)


class PebblePeer(Peer):
    name = "pebble"
    label = "pebble"
    start_method = "fork"
    notes = "asyncio.wrap_future(ProcessPool(max_workers=n).schedule(fn, args))"

    async def start(self) -> None:
        from pebble import ProcessPool

        self.pool: Any = ProcessPool(max_workers=self.workers)

    def _submit(self, fn: TaskFn, *args: Any) -> asyncio.Future[Any]:
        return asyncio.wrap_future(self.pool.schedule(fn, args=args))

    async def call(self, fn: TaskFn, *args: Any) -> Any:
        return await self._submit(fn, *args)

    async def batch(self, fn: TaskFn, arglists: Sequence[tuple[Any, ...]]) -> list[Any]:
        return list(await asyncio.gather(*(self._submit(fn, *args) for args in arglists)))

    async def stop(self) -> None:
        self.pool.close()
        self.pool.join()


PEERS: dict[str, type[Peer]] = {
    cls.name: cls
    for cls in (
        TaskpoolPeer,
        ForkExecutorPeer,
        SpawnExecutorPeer,
        AnyioPeer,
        AiomultiprocessPeer,
        LokyPeer,
        PebblePeer,
    )
}
