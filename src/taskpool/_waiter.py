"""What ``await task`` waits on: a minimal future the pool resolves itself.

An asyncio ``Future`` hands its callbacks to ``loop.call_soon``: the awaiting coroutine
resumes one loop iteration after the result was read. A :class:`Waiter` speaks the
protocol an asyncio ``Task`` uses for what it awaits (``_asyncio_future_blocking``,
``add_done_callback(fn, context=)``, ``result()``, ``cancel(msg)``, ``get_loop()``),
so the pool can run the awaiting task's wake-up itself: in the same iteration, right after
a batch of answers from a worker was taken in and the books are straight (see
``PoolCore.batch_done``). Elsewhere (outside such a batch, inside another task, or on
another thread's loop) it wakes the task as a Future would.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Generator
from typing import Any

__all__ = ["Waiter", "run_wakeups"]

_PENDING = 0
_DONE = 1
_CANCELLED = 2

Wakeup = tuple[Callable[..., Any], "Waiter", contextvars.Context | None]


class Waiter:
    """One awaiter of one pool task (cancelling it cancels only the awaiter)."""

    __slots__ = ("_asyncio_future_blocking", "_callbacks", "_loop", "_message", "_state")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._state = _PENDING
        self._callbacks: list[tuple[Callable[..., Any], contextvars.Context | None]] = []
        self._message: Any = None
        self._asyncio_future_blocking = False

    # -- what an asyncio Task asks of what it awaits

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop of the awaiting task."""
        return self._loop

    def done(self) -> bool:
        """Resolved or cancelled."""
        return self._state != _PENDING

    def cancelled(self) -> bool:
        """The awaiter was cancelled."""
        return self._state == _CANCELLED

    def result(self) -> None:
        """None once resolved.

        Raises:
            asyncio.CancelledError: the awaiter was cancelled.
            asyncio.InvalidStateError: not resolved yet.
        """
        if self._state == _CANCELLED:
            raise asyncio.CancelledError(*(() if self._message is None else (self._message,)))
        if self._state == _PENDING:
            raise asyncio.InvalidStateError("the task has not settled yet")

    def exception(self) -> BaseException | None:
        """None (the awaited task's outcome is read from the task itself).

        Raises:
            asyncio.CancelledError: the awaiter was cancelled.
            asyncio.InvalidStateError: not resolved yet.
        """
        self.result()
        return None

    def add_done_callback(self, fn: Callable[..., Any], *, context: contextvars.Context | None = None) -> None:
        """Call ``fn(self)`` once resolved (soon, through the loop, if it is already)."""
        if self._state != _PENDING:
            self._loop.call_soon(fn, self, context=context)
        else:
            self._callbacks.append((fn, context))

    def remove_done_callback(self, fn: Callable[..., Any]) -> int:
        """Forget ``fn``; returns how many were removed."""
        before = len(self._callbacks)
        self._callbacks = [(f, c) for f, c in self._callbacks if f != fn]
        return before - len(self._callbacks)

    def cancel(self, msg: Any = None) -> bool:
        """Cancel the awaiter (its task is being cancelled): it wakes with CancelledError."""
        if self._state != _PENDING:
            return False
        self._state = _CANCELLED
        self._message = msg
        self._wake(None, True)  # (called on the awaiter's own loop)
        return True

    def __await__(self) -> Generator[Any, None, None]:
        if self._state == _PENDING:
            self._asyncio_future_blocking = True
            yield self
        self.result()

    __iter__ = __await__

    # -- the pool's side

    def resolve(self, direct: list[Wakeup] | None, loop: asyncio.AbstractEventLoop) -> None:
        """The task settled (on ``loop``): wake the awaiter. With ``direct`` (and the
        awaiter on ``loop``), its wake-up is added there for the pool to run once its
        batch is done; otherwise it is handed to the awaiter's loop."""
        if self._state == _PENDING:
            self._state = _DONE
            same = loop is self._loop
            self._wake(direct if same else None, same)

    def _wake(self, direct: list[Wakeup] | None, same_loop: bool) -> None:
        callbacks, self._callbacks = self._callbacks, []
        loop = self._loop
        for fn, context in callbacks:
            if direct is not None:
                direct.append((fn, self, context))
            elif same_loop:
                loop.call_soon(fn, self, context=context)
            else:  # the awaiter runs on another thread's loop
                loop.call_soon_threadsafe(fn, self, context=context)


def run_wakeups(loop: asyncio.AbstractEventLoop, wakeups: list[Wakeup]) -> None:
    """Resume the awaiting tasks now (no task may be running: the caller is a loop
    callback), each in its own context; an error is the loop's to report."""
    for fn, waiter, context in wakeups:
        try:
            if context is None:
                fn(waiter)
            else:
                context.run(fn, waiter)
        except BaseException as exc:  # a wake-up never raises; if it does, keep serving
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            loop.call_exception_handler({"message": "taskpool: resuming an awaiter failed", "exception": exc})
