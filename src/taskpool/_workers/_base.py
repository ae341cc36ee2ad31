"""The protocol between a pool and its workers, shared by every worker kind.

One module per kind (``_inline``, ``_thread``, ``_process``; a third-party kind registers
itself, see :mod:`taskpool._workers`) implements :class:`Worker`; the pool's core
implements :class:`WorkerHost`. All of ``Worker``'s methods except ``run`` and
``join_abandoned`` are synchronous and non-blocking: the pool's bookkeeping never awaits
a worker.

A kind says what it can do in its :class:`Capabilities`; the core asks those, never a
kind's name. A worker reports back by calling the host's methods **on the pool's event
loop** (a thread or process worker forwards its reports there, in batches), with the
times it took *in the worker* (``time.time()``, the parent's clock).
"""

from __future__ import annotations

import abc
import enum
import os
import re
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import msgspec

from .._options import WorkerOutput

if TYPE_CHECKING:
    import asyncio

    from .._task import Task

__all__ = [
    "INIT_FAILED",
    "Capabilities",
    "CancelResult",
    "Worker",
    "WorkerExit",
    "WorkerHost",
    "WorkerSpec",
    "log_path",
    "own_traceback",
]


class CancelResult(enum.Enum):
    """What :meth:`Worker.cancel` could do about a task."""

    REMOVED = "removed"  # it had not started; the worker will never report it
    STOPPING = "stopping"  # it is being stopped (or never started); the worker may still report it
    UNSTOPPABLE = "unstoppable"  # it cannot be interrupted: retire the worker


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker kind can do; the core decides by these, never by the kind's name.

    Attributes:
        isolated: each worker is an interpreter of its own (modules, globals and memory
            are its own): a persistent worker imports the real module there instead of a
            private copy, and tasks can be stopped by ending the worker.
        window: how many calls the pool may hand a worker beyond those it runs at once;
            more than one lets it start its next call without a round trip.
        adaptive_window: open the window only while the worker's calls are short (a
            worker that cannot give back unstarted calls while it runs should not hold
            any behind a long one).
        reclaims_unstarted: ``reclaim`` can take back a call the worker has not started
            (answered later through ``task_returned``), so idle workers steal work.
        keeps_order: calls handed to one worker start in the order they were handed.
        has_pid: workers are OS processes with a pid and an exit code.
        reports_memory: ``memory()`` gives the worker's own resident memory, so
            ``max_memory_per_worker`` can recycle it.
        remote: workers may run on another machine (``node`` names it).
    """

    isolated: bool
    window: int = 1
    adaptive_window: bool = False
    reclaims_unstarted: bool = False
    keeps_order: bool = True
    has_pid: bool = False
    reports_memory: bool = False
    remote: bool = False


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
    #: Largest message (a frame, or one out-of-band segment) a worker may send, in bytes:
    #: a bigger one is a broken or hostile worker, killed before anything is allocated.
    max_message_size: int = 2**30
    #: Where the worker's stdout/stderr go: ``"log"`` (``host.worker_log``: the logger and
    #: ``worker.log`` events), ``"events"`` (``host.worker_log``: events only) or
    #: ``"inherit"`` (written through to the parent's ``sys.stdout`` / ``sys.stderr``);
    #: ``log_dir`` gets a copy in every mode. Kinds whose workers share the parent's
    #: stdout (inline, thread) have nothing to route.
    worker_output: WorkerOutput = "log"
    #: Run ``initializer(*initargs)`` (plain or async) in each worker before its first
    #: task. A worker whose initializer raises logs the traceback on the logger named
    #: ``init_logger`` (in the worker, at CRITICAL, as ``"Exception in initializer:"``)
    #: and ends before it is ready: ``run`` returns ``WorkerExit(failed=True,
    #: reason="initializer failed: <Type>: <message>")`` without calling ``on_ready``.
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()
    init_logger: str = "taskpool"
    #: Thread workers' names: ``f"{prefix}_{worker_id}"`` (None: the kind's default).
    thread_name_prefix: str | None = None
    #: The kind's own settings when the pool was given an object as ``worker=`` (for
    #: example ``taskpool.ray.RayWorkers``), else None.
    kind_options: Any = None


#: The reason a worker whose initializer raised ends with starts with this.
INIT_FAILED = "initializer failed"


class WorkerHost(Protocol):
    """What a worker calls on its pool (always on the pool's event loop).

    ``at`` is a ``time.time()`` taken in the worker when the event happened there.
    """

    loop: asyncio.AbstractEventLoop

    def task_started(self, worker: Worker, task: Task[Any], at: float) -> None:
        """The worker began running ``task``."""

    def start_wanted(self, task: Task[Any]) -> bool:
        """Whether ``task``'s start must be reported as it happens (start callbacks, a
        timeout, ``task.started`` subscribers); a kind that tells starts more cheaply
        otherwise (see :meth:`Worker.sync_starts`) reports the others with their answer."""

    def task_finished(
        self, worker: Worker, task: Task[Any], ok: bool, value: Any, at: float, started: float = 0.0
    ) -> None:
        """``task`` ended: ``value`` is its result (``ok``) or its exception. ``started``:
        when it began, if ``task_started`` did not say so (0.0: it did, or it never began)."""

    def task_returned(self, worker: Worker, task: Task[Any]) -> None:
        """The worker hands back ``task`` unstarted (it is stopping, or it was reclaimed)."""

    def batch_begin(self) -> None:
        """A batch of reports begins (called from a loop callback, never from a task):
        awaiters of the tasks it settles resume when it is done, in the same iteration.
        Optional: a kind that does not call it has them resumed through the loop."""

    def batch_done(self) -> None:
        """A batch of reports was delivered: dispatch more work, check for drain."""

    def worker_publish(self, worker: Worker, topic: str, data: Any, task_id: int | None) -> None:
        """A task on the worker called ``taskpool.publish``."""

    def worker_log(self, worker: Worker, stream: str, line: str) -> None:
        """The worker wrote a line to its stdout or stderr (``"stdout"`` / ``"stderr"``);
        the host routes it per ``spec.worker_output``."""


class Worker(abc.ABC):
    """One worker of a pool: runs the tasks handed to it, in order, ``concurrency`` at once.

    Attributes:
        kind: the name the kind is registered under.
        capabilities: what the kind can do (see :class:`Capabilities`).
        id: the worker's id in its pool (its slot: stable across restarts).
    """

    kind: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def __init__(self, host: WorkerHost, worker_id: int, spec: WorkerSpec) -> None:
        self.host: WorkerHost = host
        self.id: int = worker_id
        self.spec: WorkerSpec = spec

    @classmethod
    async def pool_opened(cls, spec: WorkerSpec) -> None:
        """A pool of this kind starts (before its first worker): set up what its workers
        share (a cluster connection, say). The default does nothing.

        Raises:
            Exception: the pool cannot start (``start()`` raises it).
        """
        return

    @classmethod
    async def pool_closed(cls, spec: WorkerSpec) -> None:
        """A pool of this kind closed (its workers have ended, or were abandoned): release
        what :meth:`pool_opened` set up. Called once per ``pool_opened``, also when the
        start failed. The default does nothing; an exception is logged, not raised."""
        return

    @property
    def pid(self) -> int | None:
        """The worker's process id (kinds with ``has_pid``), else ``None``."""
        return None

    @property
    def thread_name(self) -> str | None:
        """The worker's thread name (thread workers), else ``None``."""
        return None

    @property
    def node(self) -> str | None:
        """The host name the worker runs on (remote kinds), else ``None``."""
        return None

    @abc.abstractmethod
    async def run(self, on_ready: Callable[[], None]) -> WorkerExit:
        """Start the worker, call ``on_ready()`` once it can take tasks, serve until it ends.

        Returns how it ended. Cancelling ``run`` stops the worker at once (killing it
        if need be) before re-raising. Once :meth:`abandon` was called, ``run`` returns
        soon whatever the worker does.
        """

    @abc.abstractmethod
    def send(self, task: Task[Any]) -> None:
        """Hand ``task`` to the worker; it runs after the ones handed earlier."""

    @abc.abstractmethod
    def cancel(self, task: Task[Any]) -> CancelResult:
        """Stop ``task``'s work, whether it is waiting in the worker or running."""

    def reclaim(self, task: Task[Any]) -> bool:
        """Take back ``task`` if the worker has not started it; True when taken back now.

        A kind that can only answer later returns False and reports
        ``task_returned`` when the worker gave it back.
        """
        return False

    @abc.abstractmethod
    def stop(self) -> None:
        """Finish the tasks already started, hand back the rest, then end ``run`` cleanly."""

    @abc.abstractmethod
    def kill(self) -> None:
        """End now, abandoning running work; ``run`` returns soon after."""

    def abandon(self) -> None:
        """Detach from work that cannot be stopped: ``run`` returns now (the default kills)."""
        self.kill()

    async def join_abandoned(self, timeout: float) -> bool:
        """After :meth:`abandon`: wait up to ``timeout`` s for what still runs to end.

        True once nothing of the worker is left running (a thread blocked in a call
        ends when the call returns).
        """
        return True

    def want_start(self, task: Task[Any]) -> None:
        """``task``, held by this worker, got a start callback: report its start as it
        happens from now on. Kinds that report every start need nothing here (the default)."""
        return

    def sync_starts(self) -> None:
        """Report (``task_started``) every start that happened but was not reported yet.

        Called before status is read. Kinds that report every start as it happens need
        nothing here (the default).
        """
        return

    def memory(self) -> int | None:
        """The worker's resident memory in bytes (kinds with ``reports_memory``)."""
        return None


def own_traceback(exc: BaseException, runner: types.CodeType) -> BaseException:
    """Start ``exc``'s traceback at the task's own function, dropping the ``runner``'s
    frame: code that clears a traceback's frames (``traceback.clear_frames``, as
    unittest's ``assertRaises`` does) can then never finalize a worker's runner."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code is runner:
        exc.__traceback__ = tb.tb_next
    return exc


_UNSAFE = re.compile(r"[^\w.:#@+,=-]+")


def log_path(log_dir: str | os.PathLike[str] | None, pool_name: str, worker_id: int) -> str | None:
    """The file a worker's output is copied to under ``log_dir``.

    The pool's name is made safe for a file name first (path separators, control
    characters and other punctuation become ``_``, leading dots are dropped), so the
    file is always inside ``log_dir``, whatever the name.
    """
    if log_dir is None:
        return None
    safe = _UNSAFE.sub("_", pool_name).lstrip(".") or "pool"
    return os.path.join(os.fspath(log_dir), f"{safe}-worker-{worker_id}.log")
