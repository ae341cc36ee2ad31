"""A unit of work added to a pool, and the handle its caller awaits.

A task talks to its pool only through :class:`TaskOwner`, the interface the pool's core
declares for it (so this module imports nothing of the pool).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from typing import Any, Generic, Protocol, TypeVar

from ._errors import TaskCancelled
from ._types import TaskRecord, TaskState
from ._waiter import Waiter

__all__ = ["Retry", "Task", "TaskOwner", "describe_error"]

T = TypeVar("T")

_QUEUED = TaskState.QUEUED
_RUNNING = TaskState.RUNNING
_FINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


class Retry:
    """A task's retry budget: ``left`` more runs after a failure matching ``on``.

    ``attempts`` counts the runs begun so far; ``waiting`` holds the failure of a run
    whose worker has not let go of the task yet (a timed-out call being stopped): the
    task goes back to the queue only once its worker reported it, so a late answer of
    the old run can never be taken for the new one's.
    """

    __slots__ = ("attempts", "left", "on", "waiting")

    def __init__(self, left: int, on: tuple[type[BaseException], ...]) -> None:
        self.left: int = left
        self.on: tuple[type[BaseException], ...] = on
        self.attempts: int = 1
        self.waiting: BaseException | None = None


class TaskOwner(Protocol):
    """What a :class:`Task` asks of the pool that owns it."""

    def cancel_task(self, task: Task[Any], exc: BaseException) -> bool:
        """Cancel (or time out) ``task`` with ``exc``; False if it had already settled."""
        ...

    def run_callback(self, kind: str, cb: Callable[..., Any], args: tuple[Any, ...], task: Task[Any] | None) -> None:
        """Call a user callback; never let it raise into the caller."""


def describe_error(exc: BaseException | None) -> str | None:
    """``"TypeName: message"`` for records and events."""
    if exc is None:
        return None
    try:
        msg = str(exc)
    except Exception:
        msg = "<unprintable>"
    name = getattr(exc, "type_name", None) or type(exc).__name__
    return f"{name}: {msg}" if msg else name


class Task(Generic[T]):
    """A function call added to a pool: awaitable, cancellable, inspectable.

    ``await task`` returns the function's result or raises its exception. Awaiting does
    not own the task: cancelling the awaiting code leaves the task running (use
    :meth:`cancel` to cancel it). A task is created by the pool, never directly.

    Attributes:
        id: unique within its pool, increasing in the order tasks were added.
        meta: the ``meta`` given to ``add_task`` (anything; shown in records and events).
        worker_id: the worker that ran (or runs) it, else ``None``.
        queued_at: when it was added (epoch seconds).
        dispatched_at: when it was handed to a worker, else ``None``.
        started_at: when its worker started it (taken in the worker), else ``None``.
        finished_at: when it settled (taken in the worker when it ran), else ``None``.
        priority: the ``priority`` it was added with (higher starts first).
    """

    # Slots only: a queued task must stay small (1M queued tasks are a benchmark).
    __slots__ = (
        "__weakref__",
        "_callbacks",
        "_exc",
        "_held",
        "_owner",
        "_result",
        "_retry",
        "_start_callbacks",
        "_started_at",
        "_state",
        "_timer",
        "_trace",
        "_worker_id",
        "args",
        "dispatched_at",
        "finished_at",
        "fn",
        "id",
        "meta",
        "priority",
        "queued_at",
        "slot",
        "timeout",
    )

    def __init__(
        self,
        owner: TaskOwner,
        task_id: int,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        meta: Any,
        timeout: float | None,
        queued_at: float,
    ) -> None:
        self._owner = owner
        self.id: int = task_id
        self.fn: Callable[..., Any] = fn
        self.args: tuple[Any, ...] = args
        self.meta: Any = meta
        self.timeout: float | None = timeout
        self.queued_at: float = queued_at
        self.dispatched_at: float | None = None
        self._started_at: float | None = None
        self.finished_at: float | None = None
        self._worker_id: int | None = None
        self._state = _QUEUED
        self._result: Any = None
        self._exc: BaseException | None = None
        # Done-callbacks and awaiters' futures; None until the first one (saves memory).
        self._callbacks: list[Any] | None = None
        self._start_callbacks: list[Callable[[Task[T]], Any]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._held = False  # handed to a worker and not settled: counted as active
        self.slot: Any = None  # the pool-internal Slot holding it, if any
        self.priority: int = 0  # higher starts first among tasks not started yet
        self._retry: Retry | None = None  # set for tasks added with retries > 0
        # The W3C trace context of its submit span, carried to the worker: set only while
        # the pool is instrumented (taskpool.otel), so a worker pays one None check.
        self._trace: dict[str, str] | None = None

    # --- state -------------------------------------------------------------------------

    def _sync(self) -> None:
        """Held by a worker, not known to have started: take in a start the worker has not
        reported yet (process workers tell starts through shared memory; see
        ``taskpool._control``), so what is read here is true now."""
        slot = self.slot
        if self._state is _QUEUED and slot is not None and slot.worker is not None:
            slot.worker.sync_starts()

    @property
    def state(self) -> TaskState:
        """The task's :class:`TaskState` (``QUEUED`` until its worker starts it)."""
        if self._state is _QUEUED:
            self._sync()
        return self._state

    @property
    def started_at(self) -> float | None:
        """When its worker started it (epoch seconds, taken in the worker), else ``None``."""
        if self._started_at is None:
            self._sync()
        return self._started_at

    @started_at.setter
    def started_at(self, value: float | None) -> None:
        self._started_at = value

    @property
    def worker_id(self) -> int | None:
        """The worker that ran (or runs) it, else ``None``."""
        if self._worker_id is None:
            self._sync()
        return self._worker_id

    @worker_id.setter
    def worker_id(self, value: int | None) -> None:
        self._worker_id = value

    def done(self) -> bool:
        """True once the task succeeded, failed or was cancelled."""
        return self._state in _FINAL

    def cancelled(self) -> bool:
        """True if the task was cancelled."""
        return self._state is TaskState.CANCELLED

    def result(self) -> T:
        """The task's result.

        Raises:
            asyncio.InvalidStateError: the task has not settled yet.
            BaseException: the task's exception if it failed or was cancelled
                (``TaskCancelled``, ``TaskTimeout``, ``WorkerCrashed``, or what it raised).
        """
        if self._state not in _FINAL:
            raise asyncio.InvalidStateError(f"task {self.id} has not settled yet ({self._state})")
        if self._exc is not None:
            raise self._exc
        return self._result  # type: ignore[no-any-return]

    def exception(self) -> BaseException | None:
        """The task's exception (``TaskCancelled`` for a cancelled task), or ``None``.

        Raises:
            asyncio.InvalidStateError: the task has not settled yet.
        """
        if self._state not in _FINAL:
            raise asyncio.InvalidStateError(f"task {self.id} has not settled yet ({self._state})")
        return self._exc

    def cancel(self) -> bool:
        """Cancel the task. Returns False if it had already settled.

        A task its worker has not started yet (in the pool's queue, or waiting in a
        worker's window) is taken back and never runs. A running one is stopped in its
        worker (a worker whose work cannot be interrupted, such as blocking code in a
        thread, is retired and replaced). The task settles at once as ``CANCELLED`` and
        awaiting it raises :class:`TaskCancelled`.
        """
        if self._state in _FINAL:
            return False
        return self._owner.cancel_task(self, TaskCancelled(f"task {self.id} was cancelled"))

    @property
    def attempts(self) -> int:
        """How many times its call was started or tried (1 unless it was retried)."""
        return 1 if self._retry is None else self._retry.attempts

    @property
    def record(self) -> TaskRecord:
        """An immutable :class:`TaskRecord` of the task as it is now (no result in it)."""
        if self._state is _QUEUED:
            self._sync()
        return TaskRecord(
            id=self.id,
            meta=self.meta,
            state=self._state,
            worker_id=self._worker_id,
            queued_at=self.queued_at,
            started_at=self._started_at,
            finished_at=self.finished_at,
            error=describe_error(self._exc),
            dispatched_at=self.dispatched_at,
            attempts=1 if self._retry is None else self._retry.attempts,
        )

    # --- callbacks and awaiting --------------------------------------------------------

    def add_done_callback(self, cb: Callable[[Task[T]], Any]) -> None:
        """Call ``cb(task)`` once the task settles, or at once (before returning) if it already has.

        A callback that raises is logged and published as ``pool.hook_error``; an async
        callback's coroutine is run by the pool.

        Raises:
            TypeError: ``cb`` is not callable.
        """
        if not callable(cb):
            raise TypeError(f"add_done_callback() needs a callable, got {type(cb).__name__}")
        if self._state in _FINAL:
            self._owner.run_callback("done_callback", cb, (self,), self)
            return
        if self._callbacks is None:
            self._callbacks = [cb]
        else:
            self._callbacks.append(cb)

    def add_start_callback(self, cb: Callable[[Task[T]], Any]) -> None:
        """Call ``cb(task)`` once, in the pool's loop, when the task's worker starts it.

        It runs before any done callback, and never for a task that settled without
        starting (cancelled before its worker started it, for one). Added after the
        task started, it is called at once. A callback that raises is logged and published as ``pool.hook_error``.

        Raises:
            TypeError: ``cb`` is not callable.
        """
        if not callable(cb):
            raise TypeError(f"add_start_callback() needs a callable, got {type(cb).__name__}")
        if self.started_at is not None:  # (synced: a start not yet reported counts)
            self._owner.run_callback("start_callback", cb, (self,), self)
            return
        if self._state in _FINAL:
            return  # settled without ever starting: never called
        if self._start_callbacks is None:
            self._start_callbacks = [cb]
            slot = self.slot
            if slot is not None and slot.worker is not None:
                slot.worker.want_start(self)  # handed over already, maybe not told to report it
        else:
            self._start_callbacks.append(cb)

    def __await__(self) -> Generator[Any, None, T]:
        if self._state not in _FINAL:
            # A waiter of this awaiter's own: cancelling the awaiter cancels only it.
            waiter = Waiter(asyncio.get_running_loop())
            if self._callbacks is None:
                self._callbacks = [waiter]
            else:
                self._callbacks.append(waiter)
            try:
                yield from waiter.__await__()
            finally:
                if not waiter.done() or waiter.cancelled():
                    # Cancelled awaiter: forget its waiter (the list is rebuilt at settle).
                    try:
                        if self._callbacks is not None:
                            self._callbacks.remove(waiter)
                    except ValueError:
                        pass
        return self.result()

    def _settle(self, state: TaskState, result: Any, exc: BaseException | None) -> None:
        """Record the final state (pool-internal; the pool runs callbacks after).

        ``finished_at`` keeps the worker's time when it reported one, else it is now.
        """
        self._state = state
        self._result = result
        self._exc = exc
        if self.finished_at is None:
            self.finished_at = time.time()
        self.fn = _settled_fn  # drop references to the callable and its arguments
        self.args = ()
        self._start_callbacks = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __repr__(self) -> str:
        meta = f" meta={self.meta!r}" if self.meta is not None else ""
        return f"<Task {self.id} {self._state.value}{meta}>"


def _settled_fn(*args: Any) -> None:  # placeholder keeping Task.fn's type non-optional
    return None
