"""How a pool's failures look to ``concurrent.futures`` code.

One :class:`ErrorStyle` per executor kind turns what a task failed with into what a
``concurrent.futures`` future raises::

    PoolBroken, WorkerCrashed (a crash breaks the pool)  ─► BrokenProcessPool / BrokenThreadPool
    SerializationError: pickling raised X                ─► X (as concurrent.futures raises it)
    SerializationError: the other side could not rebuild ─► BrokenProcessPool (cf loses a thread)
    TaskFailed("SystemExit" / "KeyboardInterrupt")       ─► SystemExit / KeyboardInterrupt
    the worker's RemoteTraceback as __cause__            ─► concurrent.futures' own, per style
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import BrokenExecutor, CancelledError

from ._errors import PoolBroken, RemoteTraceback, SerializationError, TaskFailed, WorkerCrashed
from ._wire import LOAD_NOTE
from ._workers._base import INIT_FAILED

__all__ = ["ErrorStyle", "cancelled_error"]


class ErrorStyle:
    """How a pool's failures look to ``concurrent.futures`` code, for one executor kind.

    Args:
        broken: the ``BrokenExecutor`` subclass for a broken pool (``BrokenProcessPool``,
            ``BrokenThreadPool``).
        what: ``"process"`` or ``"thread"`` (or another kind: generic messages).
        crash_breaks: a :class:`WorkerCrashed` also reads as broken (``on_worker_crash="break"``).
        remote: the class a worker's traceback is re-wrapped in as ``__cause__``
            (``concurrent.futures.process._RemoteTraceback``), or None to keep taskpool's.
    """

    def __init__(
        self,
        broken: type[BrokenExecutor],
        what: str,
        *,
        crash_breaks: bool,
        remote: Callable[[str], BaseException] | None = None,
    ) -> None:
        self.broken_cls = broken
        self.what = what
        self.crash_breaks = crash_breaks
        self.remote = remote

    def broken_message(self, exc: BaseException | None) -> str:
        """The ``_broken`` text ``concurrent.futures`` shows for a pool broken by ``exc``."""
        init = exc is not None and INIT_FAILED in str(exc)
        if self.what == "thread":
            if init:
                return "A thread initializer failed, the thread pool is not usable anymore"
            return "A worker thread ended abruptly, the thread pool is not usable anymore"
        if self.what == "process":
            if init:
                return "A process initializer failed, the process pool is not usable anymore"
            return "A child process terminated abruptly, the process pool is not usable anymore"
        return f"the pool is not usable anymore: {exc}"

    def broken(self, exc: BaseException) -> BrokenExecutor:
        """A ``BrokenExecutor`` for a task the broken pool failed, ``exc`` as its cause."""
        if self.what == "process" and INIT_FAILED not in str(exc):
            message = "A process in the process pool was terminated abruptly while the future was running or pending."
        else:
            message = self.broken_message(exc)
        err = self.broken_cls(message)
        err.__cause__ = exc
        return err

    def translate(self, exc: BaseException) -> BaseException:
        """What a ``concurrent.futures`` future raises for a task that failed with ``exc``.

        ``PoolBroken`` (and ``WorkerCrashed`` when a crash breaks the pool) becomes the
        kind's ``BrokenExecutor``; a ``SerializationError`` the exception pickling raised
        (as ``concurrent.futures`` raises it), or ``BrokenExecutor`` when the call or its
        result could not be rebuilt on the other side (``concurrent.futures`` loses its
        worker or result thread then); a task's ``SystemExit`` / ``KeyboardInterrupt``
        (reported as ``TaskFailed``) is rebuilt as itself; the worker's traceback stays
        the ``__cause__``.
        """
        if isinstance(exc, PoolBroken) or (self.crash_breaks and isinstance(exc, WorkerCrashed)):
            return self.broken(exc)
        if LOAD_NOTE in getattr(exc, "__notes__", ()):
            # The worker could not load the call: concurrent.futures loses that worker.
            err = self.broken_cls(f"a call could not be loaded in its worker: {exc!r}")
            err.__cause__ = exc
            return err
        if isinstance(exc, SerializationError):
            exc = self._unwrap(exc)
        elif isinstance(exc, TaskFailed):
            exc = _rebuild_base_exception(exc)
        cause = exc.__cause__
        if self.remote is not None and isinstance(cause, RemoteTraceback):
            exc.__cause__ = self.remote(f'\n"""\n{cause.traceback}"""')
        return exc

    def _unwrap(self, exc: SerializationError) -> BaseException:
        text = str(exc)
        if text.startswith(_UNRECEIVABLE):
            err = self.broken_cls(f"a call or its result could not cross between the pool and its worker: {text}")
            err.__cause__ = exc
            return err
        cause = exc.__cause__
        if isinstance(cause, BaseException) and not isinstance(cause, RemoteTraceback):
            if self.remote is not None and isinstance(cause.__cause__, RemoteTraceback):
                tb = cause.__cause__.traceback
                cause.__cause__ = self.remote(f'\n"""\n{tb}"""')
            return cause
        return exc


#: A SerializationError whose message starts so means the other side could not rebuild
#: what was sent (the worker its call, the pool a result): ``concurrent.futures`` breaks
#: its pool there, so its callers expect ``BrokenExecutor``.
_UNRECEIVABLE = ("cannot receive",)


def _rebuild_base_exception(exc: TaskFailed) -> BaseException:
    if exc.type_name == "SystemExit":
        new: BaseException = SystemExit(_exit_code(exc.message)) if exc.message else SystemExit()
    elif exc.type_name == "KeyboardInterrupt":
        new = KeyboardInterrupt(exc.message) if exc.message else KeyboardInterrupt()
    else:
        return exc
    new.__cause__ = exc.__cause__
    return new


def _exit_code(message: str) -> int | str:
    try:
        return int(message)
    except ValueError:
        return message


def cancelled_error() -> CancelledError:
    """What a ``map`` result raises for an item cancelled by ``shutdown(cancel_futures=True)``."""
    return CancelledError()
