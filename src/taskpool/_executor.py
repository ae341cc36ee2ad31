"""The bridge between synchronous callers on any thread and a pool on its event loop.

Every executor (:mod:`taskpool.executor`) talks to its pool through one :class:`Bridge`::

    caller threads                                  the pool's event loop
    --------------                                  ---------------------
    submit(fn, *args) ─► ExecutorFuture
       lock: pending.append((fut, fn, args)) ─(one call_soon_threadsafe per batch)─► _drain()
                                                      core.add(fn, args) -> Task
    fut.result() ◄──── fut.set_result / set_exception ◄── done callback (errors translated)
    fut.running() ───────────── round trip ───────► task.started_at (read off the worker)
    fut.cancel(): still in the pending batch ─► dropped here, no round trip
                  else ───────────── round trip ───────► core.withdraw_wait(task)
    map(fn, items) ─► MapJob (taskpool._executor_map), through the same pending batches

A caller on the loop's own thread (``run_in_executor`` with ``pool.executor()``) adds its task
directly and cancels with the synchronous ``core.withdraw``: it never waits on the loop it runs
on. ``running()`` asks the pool, as ``cancel()`` does (pushing each start to its future would
make every call's worker report it: a process worker, a frame more). The futures are real
:class:`concurrent.futures.Future` objects, so ``wait`` and ``as_completed`` work on them;
they settle on the loop's thread, where their done callbacks run.

:class:`~taskpool._executor_errors.ErrorStyle` turns the pool's failures into what
``concurrent.futures`` code expects (``BrokenProcessPool``, the task's own exception,
``SystemExit``).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._errors import QueueFull, TaskCancelled
from ._executor_errors import ErrorStyle
from ._executor_future import DROPPED, SETTLED, ExecutorFuture, cancel_future
from ._loop import in_asyncio, out_of_asyncio
from ._types import PoolState, TaskState, WorkerState

if TYPE_CHECKING:
    from ._core import PoolCore
    from ._task import Task

__all__ = [
    "Bridge",
    "ExecutorFuture",
    "Job",
    "interpreter_shutting_down",
    "mark_interpreter_shutdown",
    "settle_workers",
    "withdraw_all",
]

T = TypeVar("T")

#: Seconds between checks that the loop still runs, while a caller waits on it.
LIVENESS_POLL = 0.5
#: Seconds :func:`settle_workers` waits for workers coming up, at most.
SETTLE_LIMIT = 10.0
SETTLE_POLL = 0.002

_QUEUED = TaskState.QUEUED
_RUNNING_TASK = TaskState.RUNNING
_DONE_STATES = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)
_OPEN = (PoolState.NEW, PoolState.RUNNING)


_interpreter_shutdown = False


def mark_interpreter_shutdown() -> None:
    """The interpreter is exiting: from now on no executor accepts work (as ``concurrent.futures``)."""
    global _interpreter_shutdown
    _interpreter_shutdown = True


def interpreter_shutting_down() -> bool:
    """Whether :func:`mark_interpreter_shutdown` was called."""
    return _interpreter_shutdown


class Job(Protocol):
    """Work that enters a pool through a bridge's batches (a ``map``)."""

    def start(self) -> None:
        """Begin, on the pool's loop (called once, in submission order)."""

    def stop(self) -> list[Task[Any]]:
        """Submit nothing more (the executor shuts down cancelling); its unsettled tasks."""
        ...


# --------------------------------------------------------------------------- the bridge


class Bridge:
    """Carries calls from any thread into ``core`` on ``loop``, and their outcomes back.

    Args:
        core: the pool (running, on ``loop``).
        loop: the pool's event loop.
        style: how failures are translated.
        submit_wait: waits for room and adds a task (``await pool.submit``), for pools
            with ``max_queue``; None when the pool has no bound.
    """

    def __init__(
        self,
        core: PoolCore,
        loop: asyncio.AbstractEventLoop,
        style: ErrorStyle,
        *,
        loop_thread: int,
        submit_wait: Callable[[Callable[..., Any], tuple[Any, ...]], Coroutine[Any, Any, Task[Any]]] | None = None,
    ) -> None:
        self.core = core
        self.loop = loop
        self.style = style
        self.loop_thread = loop_thread
        self._submit_wait = submit_wait
        self.lock = threading.Lock()
        self.closed = False  # shutdown() was called: no new work
        self._pending: list[Any] = []  # (fut, fn, args) tuples and jobs, in order
        self._scheduled = False  # a _drain is on its way to the loop
        # Loop side only, from here on.
        self._tasks: dict[Task[Any], ExecutorFuture] = {}
        self._jobs: set[Job] = set()
        self._backlog: collections.deque[tuple[ExecutorFuture, Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._feeding = False
        self._idle_waiters: list[asyncio.Future[None]] = []

    # --- any thread ------------------------------------------------------------------------

    def on_loop(self) -> bool:
        """Whether the caller runs on the pool's loop thread."""
        return threading.get_ident() == self.loop_thread

    def check_open(self) -> None:
        """Raise what ``submit`` raises when no work is accepted any more.

        Raises:
            RuntimeError: the executor was shut down, or the interpreter is exiting.
            BrokenExecutor: the pool is broken (the kind's subclass).
            PoolClosed: the pool is closing or closed (``pool.executor()``).
        """
        if _interpreter_shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self.closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        core = self.core
        state = core.state
        if state not in _OPEN:
            if state is PoolState.BROKEN:
                raise self.style.broken_cls(self.style.broken_message(core._broken))
            core.check_open()  # PoolClosed, naming the pool

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> ExecutorFuture:
        """Send ``fn(*args)`` to the pool; its future (never blocks).

        Raises:
            RuntimeError, BrokenExecutor, PoolClosed: see :meth:`check_open`; also
                RuntimeError when the pool's loop is closed.
        """
        fut = ExecutorFuture(self)
        if threading.get_ident() == self.loop_thread:
            self.check_open()
            self._add(fut, fn, args)
            return fut
        with self.lock:
            self.check_open()
            pending = self._pending
            pending.append((fut, fn, args))
            fut._tp_batch = pending
            wake = not self._scheduled
            self._scheduled = True
        if wake:
            self._wake()
        return fut

    def start_job(self, job: Job) -> None:
        """Send ``job`` to the pool, after the work submitted before it.

        Raises:
            RuntimeError, BrokenExecutor, PoolClosed: as :meth:`submit`.
        """
        if threading.get_ident() == self.loop_thread:
            self.check_open()
            self._drain()  # (work other threads sent first goes first)
            self._jobs.add(job)
            job.start()
            return
        with self.lock:
            self.check_open()
            self._pending.append(job)
            wake = not self._scheduled
            self._scheduled = True
        if wake:
            self._wake()

    def _wake(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: take back what we just queued
            with self.lock:
                dropped, self._pending = self._pending, []
                self._scheduled = False
            for entry in dropped:
                if type(entry) is tuple:
                    cancel_future(entry[0])
            raise RuntimeError("cannot schedule new futures: the pool's event loop is closed") from None

    def cancel(self, fut: ExecutorFuture) -> bool:
        """``fut.cancel()``: True when its call will never run."""
        with self.lock:
            dropped = fut._tp_task is None and fut._tp_batch is self._pending
            if dropped:
                fut._tp_task = DROPPED
        if dropped:
            cancel_future(fut)
            return True
        if threading.get_ident() == self.loop_thread:
            return self._withdraw_now(fut)
        try:
            return self.call(self._withdraw(fut))
        except RuntimeError:  # the loop is gone: whatever happened to the call happened
            return fut.cancelled()

    def running(self, fut: ExecutorFuture) -> bool:
        """``fut.running()``: whether its call started and has not settled."""
        task = fut._tp_task
        if task is None or task is DROPPED or task is SETTLED:
            return fut._state == RUNNING  # not in the pool (on its way, waiting for room), or done
        if threading.get_ident() == self.loop_thread:
            return self._started_now(fut)
        try:
            return self.call(self._started_async(fut))
        except RuntimeError:  # the loop is gone: nothing runs any more
            return False

    async def _started_async(self, fut: ExecutorFuture) -> bool:
        return self._started_now(fut)

    def _started_now(self, fut: ExecutorFuture) -> bool:
        task = fut._tp_task
        if task is None or task is DROPPED or task is SETTLED or fut._state != PENDING:
            return fut._state == RUNNING
        if task.started_at is None:  # (read off the worker: a start not reported yet counts)
            return False
        fut.set_running_or_notify_cancel()
        return True

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its outcome (from another thread).

        Raises:
            RuntimeError: the loop is closed, or stopped before running it.
            BaseException: what ``coro`` raised.
        """
        try:
            cfut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:
            coro.close()
            raise
        while True:
            try:
                return cfut.result(LIVENESS_POLL)
            except TimeoutError:
                if cfut.done():
                    raise  # the coroutine's own TimeoutError
                if not self.loop.is_running():
                    cfut.cancel()
                    raise RuntimeError("the pool's event loop stopped") from None

    def close(self) -> None:
        """Accept no more work (``shutdown``). What was sent still goes to the pool: the
        loop finishes it (:meth:`wait_idle`) or withdraws what has not started
        (:meth:`cancel_unstarted`), so calls a worker takes as it comes up still run, as
        in ``concurrent.futures``."""
        with self.lock:
            self.closed = True

    # --- the loop ----------------------------------------------------------------------------

    def _drain(self) -> None:
        with self.lock:
            batch = self._pending
            if not batch:
                self._scheduled = False
                return
            self._pending = []
            self._scheduled = False
        token = in_asyncio()
        try:
            add = self._add
            for entry in batch:
                if type(entry) is tuple:
                    fut, fn, args = entry
                    if fut._tp_task is None:
                        add(fut, fn, args)
                else:
                    self._jobs.add(entry)
                    entry.start()
        finally:
            out_of_asyncio(token)
        batch.clear()  # the futures keep this list (_tp_batch): let go of the calls in it

    def _add(self, fut: ExecutorFuture, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if self._backlog:
            self._backlog.append((fut, fn, args))  # (behind those waiting for room)
            return
        try:
            task = self.core.add(fn, args, None, None)
        except QueueFull:
            self._backlog.append((fut, fn, args))
            self._feed()
            return
        except BaseException as exc:
            fut._tp_task = SETTLED
            fut.set_exception(self.style.translate(exc))
            fut._tp_bridge = None
            return
        self._track(fut, task)

    def _track(self, fut: ExecutorFuture, task: Task[Any]) -> None:
        fut._tp_task = task
        self._tasks[task] = fut
        # (Bound per task, not once on self: a bridge referring to itself would only be
        # freed by the cyclic GC, and with it the pool's workers and their threads.)
        task.add_done_callback(self._settled)

    def _feed(self) -> None:
        """Add the calls that found the queue full, waiting for room (``max_queue``)."""
        if self._feeding:
            return
        self._feeding = True
        self.loop.create_task(self._feed_backlog())

    async def _feed_backlog(self) -> None:
        backlog = self._backlog
        try:
            while backlog:
                fut, fn, args = backlog[0]
                if fut._tp_task is not None:  # cancelled while it waited
                    backlog.popleft()
                    continue
                try:
                    if self._submit_wait is None:
                        raise QueueFull("the pool's queue is full")  # noqa: TRY301
                    task = await self._submit_wait(fn, args)
                except BaseException as exc:
                    backlog.popleft()
                    if fut._tp_task is None:
                        fut._tp_task = SETTLED
                        fut.set_exception(self.style.translate(exc))
                        fut._tp_bridge = None
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                backlog.popleft()
                if fut.cancelled():
                    task.cancel()  # cancelled while we waited for room
                else:
                    self._track(fut, task)
        finally:
            self._feeding = False
            self._maybe_idle()

    def _settled(self, task: Task[Any]) -> None:
        fut = self._tasks.pop(task, None)
        if fut is None:
            return
        fut._tp_task = SETTLED
        if self._idle_waiters and not self._tasks:
            self._maybe_idle()
        if fut._state not in _DONE_STATES:
            exc = task.exception()
            if exc is None:
                fut.set_result(task.result())
            elif isinstance(exc, TaskCancelled):
                if task.started_at is not None:
                    fut.set_exception(exc)  # stopped while it ran (the pool closed cancelling)
                else:
                    cancel_future(fut)
            else:
                fut.set_exception(self.style.translate(exc))
        # Done: let go of the bridge, so futures kept after the executor is gone keep no
        # pool alive (cancel() reads the state first: a done future never needs it).
        fut._tp_bridge = None

    def _withdraw_now(self, fut: ExecutorFuture) -> bool:
        task = fut._tp_task
        if task is None:  # waiting for room in the pool's queue (or on its way: drain it)
            self._drain()
            task = fut._tp_task
            if task is None:
                fut._tp_task = DROPPED
                cancel_future(fut)
                return True
        if task is DROPPED or task is SETTLED:
            return fut.cancelled()
        token = in_asyncio()  # (asyncio cancels a wrapped future from a loop callback)
        try:
            self.core.withdraw(task)
        finally:
            out_of_asyncio(token)
        return fut.cancelled()

    async def _withdraw(self, fut: ExecutorFuture) -> bool:
        if self._withdraw_now(fut):
            return True
        task = fut._tp_task
        if task is DROPPED or task is SETTLED or fut._state in _DONE_STATES:
            return fut.cancelled()
        await self.core.withdraw_wait(task)  # a process worker answers later
        return fut.cancelled()

    async def cancel_unstarted(self, *, settle: bool) -> None:
        """Withdraw every call of this bridge that has not started (``cancel_futures``).

        With ``settle``, first let workers coming up take their first call, as
        ``concurrent.futures`` workers take theirs the moment they start.
        """
        self._drain()
        for fut, _, _ in self._backlog:
            if fut._tp_task is None:
                fut._tp_task = DROPPED
                cancel_future(fut)
        if settle:
            await settle_workers(self.core, until_running=True)
        tasks = list(self._tasks)
        for job in list(self._jobs):
            tasks.extend(job.stop())
        await withdraw_all(self.core, tasks)

    def job_ended(self, job: Job) -> None:
        """``job`` has nothing in the pool any more."""
        self._jobs.discard(job)
        self._maybe_idle()

    def busy(self) -> bool:
        """Whether calls or jobs of this bridge have not settled (loop side)."""
        return bool(self._tasks or self._jobs or self._backlog or self._pending)

    def _maybe_idle(self) -> None:
        if self._idle_waiters and not self.busy():
            waiters, self._idle_waiters = self._idle_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def wait_idle(self) -> None:
        """Wait until every call and job of this bridge settled."""
        self._drain()
        while self.busy():
            waiter = self.loop.create_future()
            self._idle_waiters.append(waiter)
            await waiter
            self._drain()


async def withdraw_all(core: PoolCore, tasks: list[Task[Any]]) -> None:
    """Withdraw each of ``tasks`` that has not started; process windows answer later."""
    waiting = [t for t in tasks if not core.withdraw(t) and not t.done() and t.state is _QUEUED]
    if waiting:
        await asyncio.gather(*(core.withdraw_wait(t) for t in waiting))


async def settle_workers(core: PoolCore, *, until_running: bool, limit: float = SETTLE_LIMIT) -> None:
    """Wait (on the loop, at most ``limit`` s) until no worker of ``core`` is coming up;
    with ``until_running``, also until each worker holding calls runs one.

    What a ``concurrent.futures`` executor shows synchronously (its threads start in
    ``submit``) a pool does on its loop: this lets the loop catch up.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    await asyncio.sleep(0)
    # Polled: a worker's coming up and its first start have no event of their own to await.
    while not _settled(core, until_running) and loop.time() < end:  # noqa: ASYNC110
        await asyncio.sleep(SETTLE_POLL)


def _settled(core: PoolCore, until_running: bool) -> bool:
    for slot in core.sched.slots:
        if slot.state is WorkerState.STARTING:
            return False
        if (
            until_running
            and slot.inflight
            and slot.worker is not None
            and not any(t.state is _RUNNING_TASK for t in slot.inflight)
        ):
            return False
    return True
