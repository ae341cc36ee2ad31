"""The protocol between a pool and its workers, shared by every worker kind.

One module per kind (``_inline``, ``_thread``, ``_process``) implements :class:`Worker`;
the pool implements :class:`WorkerHost`. All of ``Worker``'s methods except ``run`` are
synchronous and non-blocking: the pool's bookkeeping never awaits a worker.

A worker reports back by calling the host's methods **on the pool's event loop**
(a thread or process worker forwards its reports there, in batches).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import msgspec

if TYPE_CHECKING:
    import asyncio
    import os

    from .._task import Task

__all__ = ["CancelResult", "Worker", "WorkerExit", "WorkerHost", "WorkerSpec"]


class CancelResult(enum.Enum):
    """What :meth:`Worker.cancel` could do about a task."""

    REMOVED = "removed"  # it had not started; the worker will never report it
    STOPPING = "stopping"  # it is being stopped; the worker reports it finished soon
    UNSTOPPABLE = "unstoppable"  # it cannot be interrupted: retire the worker


class WorkerExit(msgspec.Struct, frozen=True, kw_only=True):
    """How a worker ended: ``failed`` is False only for a requested, clean stop."""

    failed: bool
    reason: str
    exitcode: int | None = None
    signal: int | None = None


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Options a pool passes to each of its workers."""

    pool_name: str
    log_dir: str | None = None
    #: Seconds a cancelled async call has to stop before its worker is killed
    #: (None: the kind's default); a service sets it to its stop grace.
    cancel_grace: float | None = None
    concurrency: int = 1  # tasks one worker runs at once (coroutines interleave)


class WorkerHost(Protocol):
    """What a worker calls on its pool (always on the pool's event loop)."""

    loop: asyncio.AbstractEventLoop

    def task_started(self, worker: Worker, task: Task[Any]) -> None:
        """The worker began running ``task``."""

    def task_finished(self, worker: Worker, task: Task[Any], ok: bool, value: Any) -> None:
        """``task`` ended: ``value`` is its result (``ok``) or its exception."""

    def task_returned(self, worker: Worker, task: Task[Any]) -> None:
        """The worker hands back ``task`` unstarted (it is stopping); requeue it."""

    def batch_done(self) -> None:
        """A batch of reports was delivered: dispatch more work, check for drain."""

    def worker_publish(self, worker: Worker, topic: str, data: Any, task_id: int | None) -> None:
        """A task on the worker called ``taskpool.publish``."""

    def worker_log(self, worker: Worker, stream: str, line: str) -> None:
        """The worker wrote a line to its stdout or stderr."""


class Worker(abc.ABC):
    """One worker of a pool: runs the tasks handed to it, one at a time, in order.

    Attributes:
        kind: ``"inline"``, ``"thread"`` or ``"process"``.
        window: how many tasks the pool may hand over before the first finishes; more
            than one lets a worker start its next task without a round trip.
        adaptive_window: start at one and open up to ``window`` only while the worker's
            calls are short (a worker that cannot give back unstarted calls while it
            runs, like a process busy in sync code, should not hold any behind a long one).
        id: the worker's id in its pool (its slot: stable across restarts).
    """

    kind: ClassVar[str]
    window: ClassVar[int] = 1
    adaptive_window: ClassVar[bool] = False

    def __init__(self, host: WorkerHost, worker_id: int, spec: WorkerSpec) -> None:
        self.host = host
        self.id = worker_id
        self.spec = spec
        self.tasks_done = 0
        self.current: Task[Any] | None = None

    @property
    def pid(self) -> int | None:
        """The worker's process id (process workers), else ``None``."""
        return None

    @property
    def thread_name(self) -> str | None:
        """The worker's thread name (thread workers), else ``None``."""
        return None

    @abc.abstractmethod
    async def run(self, on_ready: Callable[[], None]) -> WorkerExit:
        """Start the worker, call ``on_ready()`` once it can take tasks, serve until it ends.

        Returns how it ended. Cancelling ``run`` stops the worker at once (killing it
        if need be) before re-raising.
        """

    @abc.abstractmethod
    def send(self, task: Task[Any]) -> None:
        """Hand ``task`` to the worker; it runs after the ones handed earlier."""

    @abc.abstractmethod
    def cancel(self, task: Task[Any]) -> CancelResult:
        """Stop ``task``'s work, whether it is waiting in the worker or running."""

    def reclaim(self, task: Task[Any]) -> bool:
        """Take back ``task`` if the worker has not started it; True when taken back."""
        return False

    @abc.abstractmethod
    def stop(self) -> None:
        """Finish the tasks already handed over, then end ``run`` cleanly."""

    @abc.abstractmethod
    def kill(self) -> None:
        """End now, abandoning running work; ``run`` returns soon after."""

    def abandon(self) -> None:
        """Detach from work that cannot be stopped: ``run`` returns now (the default kills)."""
        self.kill()

    def memory(self) -> int | None:
        """The worker's resident memory in bytes, where it has its own (process)."""
        return None


def log_path(log_dir: str | os.PathLike[str] | None, pool_name: str, worker_id: int) -> str | None:
    """The file a worker's output is copied to under ``log_dir``."""
    if log_dir is None:
        return None
    import os

    return os.path.join(os.fspath(log_dir), f"{pool_name}-worker-{worker_id}.log")
