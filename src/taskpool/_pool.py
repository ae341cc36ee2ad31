"""FunctionPool: the public face of a pool.

A thin layer over :class:`~taskpool._core.PoolCore` (tasks and the pool's life), its
:class:`~taskpool._hooks.Hooks`, the read-only views in :mod:`taskpool._status`, and
:func:`~taskpool._map.map_tasks`; persistent workers and services tied to the pool stand
on the core's declared interfaces. See docs/architecture.md for how they fit.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, TypeVarTuple, overload

import anyio

from . import _status
from ._attached import PoolAttachments
from ._core import PoolCore
from ._errors import QueueFull
from ._map import start_map
from ._options import (
    DEFAULT_MAX_MESSAGE,
    KindSettings,
    PoolOptions,
    check_name,
)
from ._policies import make_retry
from ._progress import Progress
from ._restart import RestartPolicy
from ._types import PoolSnapshot, PoolState, StatusType, TaskRecord

if TYPE_CHECKING:
    from ._events import EventBus
    from ._task import Task

__all__ = ["FunctionPool"]

T = TypeVar("T")
R = TypeVar("R")
Ts = TypeVarTuple("Ts")
PoolT = TypeVar("PoolT", bound="FunctionPool")

_pool_numbers = itertools.count(1)


class FunctionPool(PoolAttachments):
    """A pool of workers running function calls, with hooks, status and an event bus.

    Args:
        pool_size: how many workers (1 to 1024); ``None`` means ``$TASKPOOL_WORKERS``
            if set, else the CPUs this process may use.
        worker: the worker kind: ``"process"`` (fresh interpreters), ``"thread"``
            (threads with their own event loops), ``"inline"`` (the pool's own event
            loop), or a kind a package registered (entry point group ``taskpool.workers``).
        max_queue: bound on tasks not started yet (in the pool's queue or waiting in a
            worker's window); ``None`` for no bound.
        task_timeout: default per-task timeout in seconds, counted from the task's start.
        max_tasks_per_worker: replace a worker after it ran this many tasks.
        max_memory_per_worker: replace a worker whose RSS exceeds this (bytes); kinds
            whose workers have memory of their own only (process).
        restart: how a crashed worker is replaced (default ``RestartPolicy()``:
            on failure, 0.1 s delay doubling up to 30 s, no limit).
        log_dir: also write each worker's stdout/stderr to a file of its own there.
        keep_records: completed :class:`TaskRecord` s kept for ``status(..., RAW)``.
        name: the pool's name in logs, events and snapshots.
        concurrency: how many tasks each worker runs at once (default 1). Above 1,
            coroutine tasks interleave on the worker's event loop (I/O-bound work);
            a plain function still holds its worker's loop while it runs.
        max_message_size: the largest message (bytes) a worker may send the pool: one
            frame, or one out-of-band buffer of a result (default 1 GiB; 64 KiB to
            4 GiB - 1). A worker that sends a bigger one, or garbage, is killed and its
            tasks fail with ``WorkerCrashed``: nothing is allocated for it first.
        worker_output: where what process workers print (stdout/stderr) goes:
            ``"log"`` (default: each line logged on the ``taskpool.worker`` logger, stderr
            as warnings, and published as a ``worker.log`` event), ``"inherit"`` (written
            through to this process's own ``sys.stdout`` / ``sys.stderr`` as it arrives,
            as ``ProcessPoolExecutor``'s children do; no log, no events) or ``"events"``
            (``worker.log`` events only). ``log_dir`` gets a copy in every mode. Thread and
            inline workers write to this process's stdout themselves: nothing to route.
        initializer: run ``initializer(*initargs)`` (plain or async) once in each worker
            before its first task, restarted and recycled workers included (process
            workers: in the worker process; thread workers: in the worker's thread;
            inline workers: on the pool's loop, once per worker slot). A worker whose
            initializer raises fails to start: with ``on_worker_crash="isolate"`` it is
            started again, and the third failure in a row breaks the pool
            (:class:`PoolBroken`); with ``"break"`` the first one does.
        initargs: the initializer's arguments (they cross to process workers with pickle,
            in a spawning context: ``multiprocessing`` queues, locks and events work).
        on_worker_crash: ``"isolate"`` (default: a worker's unclean death fails only the
            tasks it held, and it is replaced) or ``"break"`` (it fails every queued and
            running task with :class:`PoolBroken` and breaks the pool, as
            ``concurrent.futures`` does).
        start_workers: ``"eager"`` (default: every worker starts with the pool, and
            ``start()`` returns once they are ready) or ``"on_demand"`` (none at first; a
            worker starts whenever a task waits and no started worker is idle, up to
            ``pool_size``, as ``concurrent.futures`` executors do).
        thread_name_prefix: thread workers' thread names are ``f"{prefix}_{worker_id}"``
            (default ``f"taskpool-{name}-worker"``-like names of the kind's own).

    Raises:
        ValueError: an argument is out of range (the message names it and what is accepted).
        TypeError: an argument has the wrong type.
    """

    def __init__(
        self,
        pool_size: int | None = None,
        *,
        worker: str | KindSettings = "process",
        max_queue: int | None = None,
        task_timeout: float | None = None,
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
        restart: RestartPolicy | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        keep_records: int = 10_000,
        name: str | None = None,
        concurrency: int = 1,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        worker_output: Literal["log", "inherit", "events"] = "log",
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        on_worker_crash: Literal["isolate", "break"] = "isolate",
        start_workers: Literal["eager", "on_demand"] = "eager",
        thread_name_prefix: str | None = None,
    ) -> None:
        check_name("name", name)
        options = PoolOptions.checked(
            pool_size=pool_size,
            worker=worker,
            max_queue=max_queue,
            task_timeout=task_timeout,
            max_tasks_per_worker=max_tasks_per_worker,
            max_memory_per_worker=max_memory_per_worker,
            restart=restart,
            log_dir=log_dir,
            keep_records=keep_records,
            name=name or f"pool-{next(_pool_numbers)}",
            concurrency=concurrency,
            max_message_size=max_message_size,
            worker_output=worker_output,
            initializer=initializer,
            initargs=initargs,
            on_worker_crash=on_worker_crash,
            start_workers=start_workers,
            thread_name_prefix=thread_name_prefix,
        )
        self._setup(options)

    @classmethod
    def _from_options(cls, options: PoolOptions) -> FunctionPool:
        """A pool built from checked options (the executors' way in: they set options
        ``FunctionPool`` does not take, such as ``init_logger``)."""
        pool = cls.__new__(cls)
        pool._setup(options)
        return pool

    def _setup(self, options: PoolOptions) -> None:
        self._core = core = PoolCore(options)
        self.name: str = options.name
        self.pool_size: int = options.pool_size
        self.worker_kind: str = options.worker
        self.restart: RestartPolicy = options.restart
        self.log_dir: str | None = options.log_dir
        self.concurrency: int = options.concurrency
        self.worker_output: Literal["log", "inherit", "events"] = options.worker_output
        self.events: EventBus = core.events

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def state(self) -> PoolState:
        """The pool's :class:`PoolState` (a ``str``: ``"new"``, ``"running"``, ``"closing"``,
        ``"closed"`` or ``"broken"``)."""
        return self._core.state

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the pool runs on (once started)."""
        return self._core.loop

    async def start(self: PoolT) -> PoolT:
        """Start the workers; return once every worker has answered (is ready).

        Raises:
            RuntimeError: the pool was already started.
            PoolBroken: the workers could not be started within the restart policy.
        """
        await self._core.start()
        return self

    async def aclose(self, *, cancel: bool = False, grace: float | None = None) -> None:
        """Close the pool: stop intake, settle every task, stop the workers.

        With ``cancel=False`` it waits for every task added to settle and every async
        hook to finish (at most ``grace`` seconds when given, then cancels the rest);
        with ``cancel=True`` queued and running tasks and running async hooks are
        cancelled at once. Workers that do not stop are killed, and those that never
        report their end are abandoned, so closing ends within about ``grace`` + 1 s of
        the cancellation. Safe to call more than once, and on a pool never started.

        Raises:
            ValueError: ``grace`` is negative or not finite.
            TypeError: ``grace`` is not a number.
        """
        await self._core.aclose(cancel=cancel, grace=grace)

    async def __aenter__(self: PoolT) -> PoolT:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            with anyio.CancelScope(shield=True):
                await self.aclose(cancel=True)
        else:
            await self.aclose()

    async def join(self) -> None:
        """Wait until the pool is drained: nothing queued, nothing running.

        Raises:
            RuntimeError: the pool has queued tasks but was never started (would wait forever).
        """
        core = self._core
        if core.state is PoolState.NEW and not core.sched.drained:
            raise RuntimeError(f"pool {self.name!r} has queued tasks but was not started")
        await core.drained()

    # --- adding work ---------------------------------------------------------------------

    # Overloads, not one union: with `Callable[..., Awaitable[T]] | Callable[..., T]` mypy
    # infers T = Never for a coroutine function and rejects the call.
    @overload
    def add_task(
        self,
        fn: Callable[[*Ts], Awaitable[T]],
        /,
        *args: *Ts,
        meta: Any = None,
        timeout: float | None = None,
        priority: int = 0,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] | type[BaseException] | None = None,
    ) -> Task[T]: ...
    @overload
    def add_task(
        self,
        fn: Callable[[*Ts], T],
        /,
        *args: *Ts,
        meta: Any = None,
        timeout: float | None = None,
        priority: int = 0,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] | type[BaseException] | None = None,
    ) -> Task[T]: ...

    def add_task(
        self,
        fn: Callable[[*Ts], Any],
        /,
        *args: *Ts,
        meta: Any = None,
        timeout: float | None = None,
        priority: int = 0,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] | type[BaseException] | None = None,
    ) -> Task[Any]:
        """Add ``fn(*args)`` to the pool and return its :class:`Task`; never blocks.

        ``fn`` may be a coroutine function or a plain function; pass keyword arguments
        with ``functools.partial``. ``timeout`` (seconds, counted from the task's start)
        overrides the pool's ``task_timeout``.

        ``priority``: among tasks not started yet, wherever they wait (the pool's queue or
        a worker's window), higher priorities start first; FIFO within one priority. A
        task of higher priority than some waiting in a worker's window takes their place
        there when no worker has room (kinds that can take back unstarted calls: process,
        thread, inline).

        ``retries``: a run failing with an exception matching ``retry_on`` (default
        ``(WorkerCrashed, TaskTimeout)``: runs lost to the worker, not to the function's
        own errors) runs again, up to ``retries`` more times, each time publishing a
        ``task.retried`` event; the task settles once, with the last run's outcome, and
        counts once. ``TaskCancelled`` and ``PoolBroken`` are never retried.

        Raises:
            TypeError: ``fn`` is not callable; ``priority`` or ``retries`` is not an
                int; ``retry_on`` is not an exception class or a tuple of them.
            ValueError: ``timeout`` is not a positive number; ``retries`` < 0.
            QueueFull: ``max_queue`` tasks are already queued.
            PoolClosed: the pool is closing or closed.
            PoolBroken: the pool is broken (no worker can be started any more).
            RuntimeError: called from a thread other than the pool's event loop's.
        """
        retry = make_retry(retries, retry_on) if retries or retry_on is not None else None
        return self._core.add(fn, args, meta, timeout, priority, retry)

    @overload
    async def submit(
        self,
        fn: Callable[[*Ts], Awaitable[T]],
        /,
        *args: *Ts,
        meta: Any = None,
        timeout: float | None = None,
        priority: int = 0,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] | type[BaseException] | None = None,
    ) -> Task[T]: ...
    @overload
    async def submit(
        self,
        fn: Callable[[*Ts], T],
        /,
        *args: *Ts,
        meta: Any = None,
        timeout: float | None = None,
        priority: int = 0,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] | type[BaseException] | None = None,
    ) -> Task[T]: ...

    async def submit(
        self,
        fn: Callable[[*Ts], Any],
        /,
        *args: *Ts,
        meta: Any = None,
        timeout: float | None = None,
        priority: int = 0,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] | type[BaseException] | None = None,
    ) -> Task[Any]:
        """Like :meth:`add_task`, but wait for room in the queue instead of raising ``QueueFull``.

        Waiters get room in the order they asked; cancelling the wait adds nothing.

        Raises:
            TypeError, ValueError, PoolClosed, PoolBroken: as :meth:`add_task`.
        """
        core = self._core
        waiters = core.room_waiters
        max_queue = core.options.max_queue
        retry = make_retry(retries, retry_on) if retries or retry_on is not None else None
        while True:
            if not waiters or max_queue is None:
                try:
                    return core.add(fn, args, meta, timeout, priority, retry)
                except QueueFull:
                    pass
            fut = asyncio.get_running_loop().create_future()
            waiters.append(fut)
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    core.wake_room()  # we were given room but leave: pass it on
                else:
                    try:
                        waiters.remove(fut)
                    except ValueError:
                        pass
                raise
            try:
                return core.add(fn, args, meta, timeout, priority, retry)
            except QueueFull:
                continue
            finally:
                if waiters and (max_queue is None or core.sched.n_waiting < max_queue):
                    core.wake_room()

    @overload
    def map(
        self,
        fn: Callable[[Any], Awaitable[R]] | Callable[[Any], R],
        iterable: Iterable[Any] | AsyncIterable[Any],
        /,
        *,
        ordered: bool = ...,
        window: int | None = ...,
        chunksize: int | Literal["auto"] = ...,
        return_exceptions: Literal[False] = ...,
        progress: bool | Progress = ...,
    ) -> AsyncIterator[R]: ...
    @overload
    def map(
        self,
        fn: Callable[[Any], Awaitable[R]] | Callable[[Any], R],
        iterable: Iterable[Any] | AsyncIterable[Any],
        /,
        *,
        ordered: bool = ...,
        window: int | None = ...,
        chunksize: int | Literal["auto"] = ...,
        return_exceptions: Literal[True],
        progress: bool | Progress = ...,
    ) -> AsyncIterator[R | BaseException]: ...
    @overload
    def map(
        self,
        fn: Callable[[Any], Awaitable[R]] | Callable[[Any], R],
        iterable: Iterable[Any] | AsyncIterable[Any],
        /,
        *,
        ordered: bool = ...,
        window: int | None = ...,
        chunksize: int | Literal["auto"] = ...,
        return_exceptions: bool,
        progress: bool | Progress = ...,
    ) -> AsyncIterator[R | BaseException]: ...
    def map(
        self,
        fn: Callable[[Any], Awaitable[R]] | Callable[[Any], R],
        iterable: Iterable[Any] | AsyncIterable[Any],
        /,
        *,
        ordered: bool = True,
        window: int | None = None,
        chunksize: int | Literal["auto"] = "auto",
        return_exceptions: bool = False,
        progress: bool | Progress = False,
    ) -> AsyncIterator[Any]:
        """Run ``fn(item)`` for each item, yielding results in input order (or as they finish).

        The input (sync or async iterable) is consumed lazily, with at most ``window``
        tasks in flight (default: twice the pool size). A failure raises from the
        iterator as soon as it happens (in ordered mode too, ahead of earlier items still
        running) and cancels the tasks still in flight; so does closing the iterator
        early (use ``contextlib.aclosing`` when you may break out of the loop).

        ``chunksize`` items travel in one task (one frame to a process worker), the task's
        result being their list. ``"auto"`` (the default) sends one item per task, until a
        plain function's calls are measured to be tiny (under 0.1 ms in the worker: a
        task's own cost dominates them); then as many per task as run about 5 ms (at most
        1024). Coroutine functions are chunked only when asked (their calls wait on I/O;
        a chunk awaits its items one after the other), and nothing is chunked by "auto" in
        a pool with ``max_tasks_per_worker``, which counts tasks. Hooks and status see a
        chunk as one task; ``window`` counts tasks.

        ``return_exceptions=True``: a failure is yielded as its exception object, in its
        place, instead of ending the map (a chunk runs every one of its items; one that
        could not be sent goes again an item per task; a chunk lost as a whole, to a
        crashed worker say, yields its exception for each item).

        ``progress=True`` draws a :class:`Progress` line on stderr when it is a terminal
        (nothing otherwise), labelled with ``fn``'s name and closed when the map ends. It
        counts items, not chunks, as their tasks settle; its total is ``len(iterable)``
        when the input has one (else it shows the count and rate, without an ETA). Pass a
        ``Progress`` of your own to choose its file or label, or to share it between maps:
        the map then adds ``len(iterable)`` (when known) to its total and leaves it open.

        Raises:
            TypeError: ``fn`` is not callable, ``iterable`` is not iterable, or
                ``progress`` is neither a bool nor a ``Progress``.
            ValueError: ``window`` < 1, or ``chunksize`` neither ``"auto"`` nor an int >= 1.
        """
        return start_map(
            self._submit_one,
            fn,
            iterable,
            pool_size=self.pool_size,
            recycles_by_count=self._core.options.max_tasks_per_worker is not None,
            ordered=ordered,
            window=window,
            chunksize=chunksize,
            return_exceptions=return_exceptions,
            progress=progress,
        )

    async def _submit_one(self, fn: Callable[..., Any], item: Any) -> Task[Any]:
        return await self.submit(fn, item)

    # --- hooks ---------------------------------------------------------------------------

    def then(self: PoolT, cb: Callable[[Any, Task[Any]], Any]) -> PoolT:
        """Call ``cb(result, task)`` for every task that succeeds; returns the pool.

        Raises:
            TypeError: ``cb`` is not callable.
        """
        self._core.hooks.add("then", cb)
        return self

    def catch(self: PoolT, cb: Callable[[BaseException, Task[Any]], Any]) -> PoolT:
        """Call ``cb(exception, task)`` for every task that fails or is cancelled; returns the pool.

        Raises:
            TypeError: ``cb`` is not callable.
        """
        self._core.hooks.add("catch", cb)
        return self

    def race(self: PoolT, cb: Callable[[Any, Task[Any]], Any]) -> PoolT:
        """Call ``cb(result_or_exception, task)`` for the first task to settle in each round.

        A round runs from the first task added to an idle pool until it drains again.

        Raises:
            TypeError: ``cb`` is not callable.
        """
        self._core.hooks.add("race", cb)
        return self

    def all_settled(self: PoolT, cb: Callable[[list[Task[Any]]], Any]) -> PoolT:
        """Call ``cb(tasks)`` each time the pool drains, with the round's tasks in settling order.

        The list holds the tasks settled since the hook was added (tasks are only
        remembered for a round while an ``all_settled`` hook exists).

        Raises:
            TypeError: ``cb`` is not callable.
        """
        self._core.hooks.add("all_settled", cb)
        return self

    # --- status --------------------------------------------------------------------------

    @overload  # "*" is also a str: the dict overload must win, as in typeshed's own overlaps
    def status(  # type: ignore[overload-overlap]
        self, field: Literal["*"] = ..., kind: Literal[StatusType.COUNT] = ...
    ) -> dict[str, int]: ...
    @overload
    def status(self, field: str, kind: Literal[StatusType.COUNT] = ...) -> int: ...
    @overload
    def status(self, field: str, kind: Literal[StatusType.PERCENT]) -> float: ...
    @overload
    def status(self, field: str, kind: Literal[StatusType.RAW]) -> list[TaskRecord]: ...
    @overload
    def status(self, field: str = ..., kind: StatusType | str = ...) -> Any: ...

    def status(self, field: str = "*", kind: StatusType | str = StatusType.COUNT) -> Any:
        """Counts, percentages or records of the pool's tasks.

        ``field`` is one of ``"queued"`` (in the pool's queue), ``"active"`` (held by a
        worker: running, or waiting in that worker's window), ``"completed"``
        (succeeded + failed + cancelled), ``"succeeded"``, ``"failed"``,
        ``"cancelled"``, ``"remaining"`` (queued + active), ``"started"``, ``"total"``,
        or ``"*"`` for a ``dict`` of all of them. ``COUNT`` gives an ``int`` (O(1),
        cumulative over the pool's life), ``PERCENT`` a ``float`` in 0-100 of ``total``
        (0.0 when nothing was added), ``RAW`` a ``list[TaskRecord]`` (completed ones: the
        last ``keep_records``).

        Raises:
            ValueError: unknown ``field`` or ``kind``.
        """
        return _status.status(self._core, field, kind)

    def has_available_worker(self) -> bool:
        """True when a task added now would start at once (an idle worker, nothing queued)."""
        return _status.has_available_worker(self._core)

    has_available_thread = has_available_worker

    def snapshot(self) -> PoolSnapshot:
        """A :class:`PoolSnapshot` for dashboards (``msgspec.json.encode`` works on it)."""
        return _status.snapshot(self._core)

    def __repr__(self) -> str:
        s = self._core.sched
        return (
            f"<FunctionPool {self.name!r} {self.worker_kind}x{self.pool_size} {self.state} "
            f"queued={s.n_queued} active={s.n_active} completed={s.n_completed}>"
        )
