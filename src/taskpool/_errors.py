"""The exceptions taskpool raises.

Every exception is a :class:`TaskpoolError`, and each also subclasses the builtin it
semantically is, so callers can catch at the level they care about::

    TaskpoolError (Exception)
    ├── TaskFailed                 the task raised and its exception could not be rebuilt
    ├── WorkerCrashed              the worker died while running the task
    ├── TaskTimeout (TimeoutError) the task overran its timeout; its work was stopped
    ├── TaskCancelled              task.cancel(), or cancelled by shutdown
    ├── SerializationError (TypeError)
    │                              the function, an argument or the result could not cross
    ├── PoolClosed (RuntimeError)  work added after closing began
    ├── QueueFull                  ``max_queue`` reached (``add_task``)
    └── PoolBroken (RuntimeError)  no worker can be started any more

    RemoteTraceback (Exception)    the worker's formatted traceback, set as ``__cause__``
"""

from __future__ import annotations

import traceback as _traceback

__all__ = [
    "PoolBroken",
    "PoolClosed",
    "QueueFull",
    "RemoteTraceback",
    "SerializationError",
    "TaskCancelled",
    "TaskFailed",
    "TaskTimeout",
    "TaskpoolError",
    "WorkerCrashed",
    "as_task_failed",
]


class TaskpoolError(Exception):
    """Base class of every exception raised by taskpool itself."""


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker.

    Attached as ``__cause__`` of the exception rebuilt in the parent, so the worker's
    frames show in the parent's traceback ("The above exception was the direct cause").
    """

    def __init__(self, traceback: str) -> None:
        super().__init__(traceback)
        self.traceback = traceback

    def __str__(self) -> str:
        return f'\n"""\n{self.traceback.rstrip()}\n"""'


class TaskFailed(TaskpoolError):
    """A task raised an exception that could not be rebuilt in the parent.

    Attributes:
        type_name: qualified name of the original exception type.
        message: ``str()`` of the original exception.
        traceback: the worker's formatted traceback.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self) -> tuple[type[TaskFailed], tuple[str, str, str]]:
        return (type(self), (self.type_name, self.message, self.traceback))


class WorkerCrashed(TaskpoolError):
    """The worker running a task died before the task settled.

    Attributes:
        worker_id: the worker's id in its pool.
        exitcode: the process exit code when it exited, else ``None``.
        signal: the signal number that killed it, else ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        worker_id: int | None = None,
        exitcode: int | None = None,
        signal: int | None = None,
    ) -> None:
        super().__init__(message)
        self.worker_id = worker_id
        self.exitcode = exitcode
        self.signal = signal

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_crashed,
            (str(self), self.worker_id, self.exitcode, self.signal),
        )


def _rebuild_crashed(message: str, worker_id: int | None, exitcode: int | None, signal: int | None) -> WorkerCrashed:
    return WorkerCrashed(message, worker_id=worker_id, exitcode=exitcode, signal=signal)


class TaskTimeout(TaskpoolError, TimeoutError):
    """A task overran its timeout, and its work was stopped."""


class TaskCancelled(TaskpoolError):
    """A task was cancelled, by ``task.cancel()`` or by the pool shutting down.

    Deliberately not an :class:`asyncio.CancelledError`: awaiting a cancelled task must
    not look like the awaiting code itself being cancelled.
    """


class SerializationError(TaskpoolError, TypeError):
    """The function, an argument or the result could not cross to or from a worker."""


class PoolClosed(TaskpoolError, RuntimeError):
    """Work was added to a pool that is closing or closed."""


class QueueFull(TaskpoolError):
    """``add_task`` found the queue at ``max_queue``; use ``await pool.submit()`` to wait."""


class PoolBroken(TaskpoolError, RuntimeError):
    """No worker can be started any more: the restart policy's limit is spent."""


def as_task_failed(exc: BaseException, tb: str | None = None) -> TaskFailed:
    """A task's ``SystemExit``, ``KeyboardInterrupt`` or own ``CancelledError``, made safe.

    Re-raising those in the awaiting code would stop the program or look like the
    awaiter itself being cancelled, so every worker kind reports them as a
    :class:`TaskFailed` carrying the type's name (module-qualified unless a builtin, as a
    process worker reports it), message and traceback text (``tb``, or
    ``exc``'s own), with a :class:`RemoteTraceback` as ``__cause__``.
    """
    if tb is None:
        tb = "".join(_traceback.format_exception(exc))
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {type(exc).__name__}>"
    t = type(exc)
    name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    failed = TaskFailed(name, message, tb)
    failed.__cause__ = RemoteTraceback(tb)
    return failed
