"""Drop-in ``concurrent.futures`` executors running on taskpool.

* :class:`ThreadPoolExecutor` and :class:`ProcessPoolExecutor` take the arguments of
  their ``concurrent.futures`` namesakes and behave like them where code can tell: real
  :class:`concurrent.futures.Future` objects (``wait``, ``as_completed`` and
  ``asyncio.wrap_future`` work on them), ``running()`` exactly while the call runs,
  ``cancel()`` True only for a call that will never run, ``BrokenThreadPool`` /
  ``BrokenProcessPool`` when a worker dies or an initializer fails, the task's own
  exception with the worker's traceback as ``__cause__``, workers started on demand up
  to ``max_workers`` and reused when idle, and the same interpreter-exit behaviour.
  Each runs a :class:`~taskpool.FunctionPool`'s machinery on a private event-loop
  thread; extra keyword arguments (``**pool_options``) go to that pool, e.g.
  ``on_worker_crash="isolate"`` to keep taskpool's crash isolation.
* :class:`PoolExecutor` (``pool.executor()``) submits to a running async pool, from any
  thread or from the pool's own loop (``loop.run_in_executor``); shutting it down
  closes only its own intake.

The module also re-exports ``concurrent.futures``' own names (``wait``,
``as_completed``, ``Future``, the exceptions), so ``import taskpool.executor as
futures`` can stand in for ``import concurrent.futures as futures``.
See docs/executors.md for what differs from ``concurrent.futures`` and why.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    BrokenExecutor,
    CancelledError,
    Executor,
    Future,
    InvalidStateError,
    as_completed,
    wait,
)
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from concurrent.futures.process import ProcessPoolExecutor as _CfProcessPoolExecutor
from concurrent.futures.thread import BrokenThreadPool
from concurrent.futures.thread import ThreadPoolExecutor as _CfThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from . import _status
from ._executor import Bridge
from ._executor_errors import ErrorStyle
from ._executor_map import MapJob, empty, iterate
from ._executor_owned import OwnedPool, ProcessHandle
from ._options import MAX_WORKERS, PoolOptions, check_name
from ._types import PoolSnapshot, PoolState, StatusType

if TYPE_CHECKING:
    import threading
    from multiprocessing.context import BaseContext

    from ._core import PoolCore
    from ._task import Task

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "BrokenExecutor",
    "BrokenProcessPool",
    "BrokenThreadPool",
    "CancelledError",
    "Executor",
    "Future",
    "InvalidStateError",
    "PoolExecutor",
    "ProcessHandle",
    "ProcessPoolExecutor",
    "ThreadPoolExecutor",
    "as_completed",
    "wait",
]

P = ParamSpec("P")
T = TypeVar("T")

_counter = itertools.count()

#: ``pool_options`` an executor passes on to its pool (the others are its own arguments).
POOL_OPTIONS = frozenset(
    {
        "task_timeout",
        "max_tasks_per_worker",
        "max_memory_per_worker",
        "restart",
        "log_dir",
        "keep_records",
        "name",
        "concurrency",
        "max_message_size",
        "worker_output",
        "on_worker_crash",
        "start_workers",
    }
)


def _pool_options(
    owner: str,
    *,
    worker: str,
    max_workers: int,
    name: str,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    thread_name_prefix: str | None,
    max_tasks: int | None,
    extra: dict[str, Any],
) -> PoolOptions:
    """The pool's options: ``concurrent.futures``' behaviour, then ``extra`` over it."""
    for key in extra:
        if key == "max_queue":
            raise TypeError(f"{owner}() does not take max_queue: submit() never blocks, as in concurrent.futures")
        if key not in POOL_OPTIONS:
            raise TypeError(f"{owner}() got an unexpected keyword argument {key!r}")
    if max_tasks is not None and "max_tasks_per_worker" in extra:
        raise TypeError(f"{owner}() takes max_tasks_per_child or max_tasks_per_worker, not both")
    options: dict[str, Any] = {
        "task_timeout": None,
        "max_tasks_per_worker": max_tasks,
        "max_memory_per_worker": None,
        "restart": None,
        "log_dir": None,
        "keep_records": 10_000,
        "name": name,
        "concurrency": 1,
        "worker_output": "inherit",  # worker output written through, as cf's children do
        "on_worker_crash": "break",  # a dead worker breaks the pool, as in cf
        "start_workers": "on_demand",  # up to max_workers, reusing idle ones, as in cf
    }
    options.update(extra)
    check_name("name", options["name"])
    return PoolOptions.checked(
        pool_size=max_workers,
        worker=worker,
        max_queue=None,
        initializer=initializer,
        initargs=initargs,
        init_logger="concurrent.futures",  # a failed initializer is logged where cf logs it
        thread_name_prefix=thread_name_prefix,
        prefetch=worker != "process",  # a call must not wait behind a blocking one (see PoolOptions)
        **options,
    )


def _remote_traceback(text: str) -> BaseException:
    """The worker's traceback as ``concurrent.futures`` attaches it (``cause.tb``)."""
    return _RemoteTraceback(text)  # type: ignore[arg-type]  # (typeshed: a traceback; cf passes str)


def _check_max_workers(max_workers: int) -> int:
    if max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    if max_workers > MAX_WORKERS:
        raise ValueError(f"max_workers must be <= {MAX_WORKERS}")
    return max_workers


def _check_initializer(initializer: Callable[..., Any] | None) -> None:
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")


def _map(
    bridge_of: Callable[[], Bridge],
    fn: Callable[..., T],
    iterables: tuple[Iterable[Any], ...],
    timeout: float | None,
    chunksize: int,
    window: int,
) -> Iterator[T]:
    """``Executor.map`` over a bridge: every item taken now, results in order."""
    if chunksize < 1:
        raise ValueError("chunksize must be >= 1.")
    deadline = None if timeout is None else timeout + time.monotonic()  # counted from the call
    items = list(iterables[0]) if len(iterables) == 1 else list(zip(*iterables, strict=False))
    if not items:
        return empty()
    bridge = bridge_of()
    job = MapJob(bridge, fn, items, star=len(iterables) != 1, chunksize=chunksize, window=window)
    bridge.start_job(job)
    return iterate(job, deadline)


class _OwnedExecutor(Executor):
    """What the two executors owning a pool share."""

    _owned: OwnedPool
    _max_workers: int
    _window: int

    def _own(self, options: PoolOptions, style: ErrorStyle, max_workers: int) -> None:
        self._max_workers = max_workers
        self._window = max(4, 2 * max_workers)
        self._owned = owned = OwnedPool(options, style, loop_name=f"{options.name}-loop")
        # Dropping the executor shuts its pool down (the pool never refers back to it).
        finalizer = weakref.finalize(self, owned.shutdown, False, False)
        finalizer.atexit = False  # interpreter exit is _executor_owned._python_exit's

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` in a worker; its :class:`concurrent.futures.Future`.

        Never blocks (the first call starts the executor's loop thread).

        Raises:
            RuntimeError: the executor was shut down, or the interpreter is exiting.
            BrokenExecutor: the pool is broken (``BrokenThreadPool`` /
                ``BrokenProcessPool``): a worker died or an initializer failed.
        """
        call: Callable[..., Any] = functools.partial(fn, **kwargs) if kwargs else fn
        return self._owned.ensure_started().submit(call, args)

    def map(
        self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[T]:
        """``fn`` over the items of ``iterables`` (in parallel), results in input order.

        As ``concurrent.futures``: every item is taken (and the work begun) at the call,
        whether the results are read or not; reading raises a call's exception at its
        position, ``TimeoutError`` when a result is not there ``timeout`` seconds after
        the call; closing the iterator early withdraws the calls not started. Items go
        to workers in chunks (one task each): ``chunksize`` is the chunk size, or with 1
        (the default) a hint, chunks being sized by measuring the calls.

        Raises:
            ValueError: ``chunksize`` < 1.
            RuntimeError, BrokenExecutor: as :meth:`submit`.
        """
        return _map(self._owned.ensure_started, fn, iterables, timeout, chunksize, self._window)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more work, finish what was submitted, then stop the workers.

        ``cancel_futures=True`` cancels every call that has not started (calls a worker
        started, or is starting as it comes up, finish). ``wait=True`` returns once the
        workers and the executor's loop thread have ended (not when called from one of
        its own worker threads, or its loop thread: that would never end). Safe to call
        more than once.
        """
        self._owned.shutdown(wait, cancel_futures)

    @property
    def _broken(self) -> str | bool:
        """False, or why the pool is not usable any more (``concurrent.futures``' attribute)."""
        core = self._owned.core
        if core is not None and core.state is PoolState.BROKEN:
            return self._owned.style.broken_message(core._broken)
        return False

    @property
    def _shutdown_thread(self) -> bool:
        """Whether :meth:`shutdown` was called (``concurrent.futures``' attribute)."""
        return self._owned.shutdown_called

    @property
    def _executor_manager_thread(self) -> threading.Thread | None:
        """The thread running the executor's event loop, once started (ends after shutdown)."""
        return self._owned.thread

    def snapshot(self) -> PoolSnapshot:
        """The pool's :class:`~taskpool.PoolSnapshot` (read on its loop: a round trip; after
        shutdown, as the pool ended).

        Raises:
            RuntimeError: the executor never ran anything.
        """
        return self._read(_status.snapshot)

    def status(self, field: str = "*", kind: StatusType | str = StatusType.COUNT) -> Any:
        """The pool's task counts, as :meth:`taskpool.FunctionPool.status` (read as
        :meth:`snapshot`).

        Raises:
            ValueError: unknown ``field`` or ``kind``.
            RuntimeError: the executor never ran anything.
        """
        return self._read(lambda core: _status.status(core, field, kind))

    def _read(self, read: Callable[[PoolCore], T]) -> T:
        owned = self._owned
        core, bridge = owned.core, owned.bridge
        if core is None or bridge is None:
            raise RuntimeError("the executor has no pool yet: nothing was submitted to it")
        if owned.ended or bridge.on_loop():
            return read(core)  # (ended: nothing else touches the pool any more)

        async def on_loop() -> T:
            return read(core)

        try:
            return bridge.call(on_loop())
        except RuntimeError:
            if owned.has_ended():  # it ended meanwhile
                return read(core)
            raise

    def __repr__(self) -> str:
        core = self._owned.core
        state = "unstarted" if core is None else str(core.state)
        return f"<{type(self).__name__} max_workers={self._max_workers} {state}>"


# Each executor is also an instance of its concurrent.futures namesake (none of whose
# code runs: every method code calls is overridden), for code that checks: asyncio's
# set_default_executor accepts only a ThreadPoolExecutor, libraries test for a
# ProcessPoolExecutor before pickling. The compat attributes are properties here, where
# typeshed declares plain attributes: hence the ignores.


class ThreadPoolExecutor(_OwnedExecutor, _CfThreadPoolExecutor):  # type: ignore[misc]
    """A ``concurrent.futures.ThreadPoolExecutor`` on taskpool's thread workers.

    Args:
        max_workers: the most worker threads (default ``min(32, os.cpu_count() + 4)``),
            started as calls wait and no started thread is idle.
        thread_name_prefix: worker threads are named ``f"{prefix}_{n}"`` (default
            ``"ThreadPoolExecutor-<k>"``).
        initializer: called with ``initargs`` in each worker thread before its first
            call; if it raises, the pool breaks (``BrokenThreadPool``) and the error is
            logged on the ``"concurrent.futures"`` logger, as ``concurrent.futures`` does.
        initargs: the initializer's arguments.
        **pool_options: passed to the pool: ``on_worker_crash``, ``task_timeout``,
            ``max_tasks_per_worker``, ``restart``, ``name``, ``keep_records``,
            ``concurrency``, ``log_dir``, ``worker_output``, ``start_workers``, ...

    Raises:
        ValueError: ``max_workers`` < 1 (or over 1024), or a bad pool option.
        TypeError: ``initializer`` is not callable, or an unknown or conflicting option.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        **pool_options: Any,
    ) -> None:
        if max_workers is None:
            max_workers = min(32, (os.cpu_count() or 1) + 4)
        _check_max_workers(max_workers)
        _check_initializer(initializer)
        prefix = thread_name_prefix or f"ThreadPoolExecutor-{next(_counter)}"
        options = _pool_options(
            "ThreadPoolExecutor",
            worker="thread",
            max_workers=max_workers,
            name=prefix,
            initializer=initializer,
            initargs=initargs,
            thread_name_prefix=prefix,
            max_tasks=None,
            extra=pool_options,
        )
        style = ErrorStyle(BrokenThreadPool, "thread", crash_breaks=options.on_worker_crash == "break")
        self._own(options, style, max_workers)
        self._thread_name_prefix = prefix
        self._initializer = initializer
        self._initargs = initargs

    @property
    def _threads(self) -> set[threading.Thread]:  # type: ignore[override]
        """The worker threads started so far (``concurrent.futures``' attribute): joinable,
        they end after :meth:`shutdown`. Reading it lets workers on their way come up."""
        return self._owned.threads()


class ProcessPoolExecutor(_OwnedExecutor, _CfProcessPoolExecutor):  # type: ignore[misc,override]
    """A ``concurrent.futures.ProcessPoolExecutor`` on taskpool's process workers.

    Args:
        max_workers: the most worker processes (default ``os.cpu_count()``), started as
            calls wait and no started worker is idle.
        mp_context: accepted and ignored: workers are always fresh interpreters
            (spawned, never forked). ``_mp_context`` is a spawn context.
        initializer: called with ``initargs`` in each worker before its first call; if it
            raises, the pool breaks (``BrokenProcessPool``); the worker logs the error on
            its ``"concurrent.futures"`` logger.
        initargs: the initializer's arguments (pickled; ``multiprocessing`` queues, locks
            and events cross).
        max_tasks_per_child: a worker is replaced after running this many calls.
        **pool_options: passed to the pool, as for :class:`ThreadPoolExecutor` (and
            ``max_memory_per_worker``).

    Raises:
        ValueError: ``max_workers`` or ``max_tasks_per_child`` < 1, or a bad pool option.
        TypeError: ``initializer`` is not callable, ``max_tasks_per_child`` not an int,
            or an unknown or conflicting option.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: BaseContext | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        **pool_options: Any,
    ) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        _check_max_workers(max_workers)
        if sys.platform == "win32" and max_workers > 61:  # pragma: no cover - as cf
            raise ValueError("max_workers must be <= 61")
        _check_initializer(initializer)
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int) or isinstance(max_tasks_per_child, bool):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        options = _pool_options(
            "ProcessPoolExecutor",
            worker="process",
            max_workers=max_workers,
            name=f"ProcessPoolExecutor-{next(_counter)}",
            initializer=initializer,
            initargs=initargs,
            thread_name_prefix=None,
            max_tasks=max_tasks_per_child,
            extra=pool_options,
        )
        style = ErrorStyle(
            BrokenProcessPool, "process", crash_breaks=options.on_worker_crash == "break", remote=_remote_traceback
        )
        self._own(options, style, max_workers)
        self._mp_context = multiprocessing.get_context("spawn")
        self._max_tasks_per_child = max_tasks_per_child
        self._initializer = initializer
        self._initargs = initargs

    @property
    def _call_queue(self) -> _CallQueue:
        """``concurrent.futures``' call queue, for code that joins its feeder thread: calls
        travel through the executor's loop thread here, and ``join_thread`` joins it."""
        return _CallQueue(self._owned)

    @property
    def _processes(self) -> dict[int, ProcessHandle]:  # type: ignore[override]
        """The live worker processes by pid (``concurrent.futures``' attribute), as
        :class:`ProcessHandle` s. Reading it lets workers on their way come up."""
        return self._owned.processes()


class _CallQueue:
    """What code reads of ``concurrent.futures``' call queue: ``join_thread()``."""

    def __init__(self, owned: OwnedPool) -> None:
        self._owned = owned

    def join_thread(self) -> None:
        """Wait for the executor's loop thread, once the executor was shut down."""
        if self._owned.shutdown_called:
            self._owned.join()


# --------------------------------------------------------------------------- pool.executor()


class _PoolLike(Protocol):
    """What :class:`PoolExecutor` needs of a ``FunctionPool``."""

    _core: PoolCore


async def _submit_waiting(pool: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> Task[Any]:
    task: Task[Any] = await pool.submit(fn, *args)
    return task


class PoolExecutor(_CfThreadPoolExecutor):
    """A :class:`concurrent.futures.Executor` submitting to a running
    :class:`~taskpool.FunctionPool`: what ``pool.executor()`` returns.

    Use it from any thread, and from the pool's own loop (``await
    loop.run_in_executor(pool.executor(), fn, *args)`` never blocks the loop;
    ``loop.set_default_executor(pool.executor())`` works). Its calls are the pool's
    tasks (status, events and hooks see them). A pool with ``max_queue`` makes calls
    wait for room on the loop, never the submitting thread.

    Args:
        pool: a running ``FunctionPool``.

    Raises:
        RuntimeError: the pool was not started.
        PoolClosed: the pool is closing, closed or broken.
    """

    def __init__(self, pool: _PoolLike) -> None:
        core = pool._core
        loop_thread = core._loop_thread
        if core.state is PoolState.NEW or loop_thread is None:
            raise RuntimeError(f"pool {core.name!r} is not started: pool.executor() needs a running pool")
        core.check_open()  # PoolClosed once closing (or broken)
        kind = core.options.worker
        broken: type[BrokenExecutor] = (
            BrokenProcessPool if kind == "process" else BrokenThreadPool if kind == "thread" else BrokenExecutor
        )
        style = ErrorStyle(broken, kind, crash_breaks=core.options.on_worker_crash == "break")
        wait_for_room = functools.partial(_submit_waiting, pool) if core.options.max_queue is not None else None
        self._pool = pool
        self._bridge = Bridge(core, core.loop, style, loop_thread=loop_thread, submit_wait=wait_for_room)
        self._max_workers = core.options.pool_size
        self._window = max(4, 2 * core.options.pool_size)

    @property
    def pool(self) -> Any:
        """The pool it submits to."""
        return self._pool

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Add ``fn(*args, **kwargs)`` to the pool; its :class:`concurrent.futures.Future`.

        Never blocks. Cancelling the future withdraws the task if it has not started.

        Raises:
            RuntimeError: this executor was shut down, or the pool's loop is closed.
            PoolClosed: the pool is closing or closed.
            BrokenExecutor: the pool is broken.
        """
        call: Callable[..., Any] = functools.partial(fn, **kwargs) if kwargs else fn
        return self._bridge.submit(call, args)

    def map(
        self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[T]:
        """As :meth:`ThreadPoolExecutor.map`, on the pool (never from the pool's loop
        thread: reading the results there would wait on the loop itself).

        Raises:
            ValueError: ``chunksize`` < 1.
            RuntimeError, PoolClosed, BrokenExecutor: as :meth:`submit`.
        """
        return _map(lambda: self._bridge, fn, iterables, timeout, chunksize, self._window)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop this executor's intake (the pool keeps running).

        ``cancel_futures=True`` withdraws this executor's calls that have not started.
        ``wait=True`` waits until its calls settled, except on the pool's loop thread,
        where waiting would block the loop that settles them: there it returns at once.
        """
        bridge = self._bridge
        bridge.close()
        if bridge.on_loop():
            if cancel_futures:
                task = bridge.loop.create_task(bridge.cancel_unstarted(settle=True))
                task.add_done_callback(_background.discard)
                _background.add(task)
            return
        try:
            if cancel_futures:
                bridge.call(bridge.cancel_unstarted(settle=True))
            if wait:
                bridge.call(bridge.wait_idle())
        except RuntimeError:  # the pool's loop has ended: nothing is left to wait for
            pass

    @property
    def _broken(self) -> str | bool:  # type: ignore[override]
        """False, or why the pool is not usable any more."""
        core = self._bridge.core
        if core.state is PoolState.BROKEN:
            return self._bridge.style.broken_message(core._broken)
        return False

    def __repr__(self) -> str:
        return f"<PoolExecutor of pool {self._bridge.core.name!r}{' (shut down)' if self._bridge.closed else ''}>"


_background: set[Any] = set()  # tasks started by shutdown() on the loop: kept until done
