"""The futures an executor hands out: real :class:`concurrent.futures.Future` objects whose
``cancel()`` and ``running()`` ask the pool through their :class:`~taskpool._executor.Bridge`,
and whose waiters refuse to block the pool's own loop thread.
"""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import Any, Protocol

__all__ = ["DROPPED", "SETTLED", "Bridge", "ExecutorFuture", "cancel_future"]

_DONE_STATES = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)


class Bridge(Protocol):
    """What a future needs of its :class:`taskpool._executor.Bridge`."""

    loop_thread: int

    def on_loop(self) -> bool:
        """Whether the caller runs on the pool's loop thread."""
        ...

    def cancel(self, fut: ExecutorFuture) -> bool:
        """``fut.cancel()``: True when its call will never run."""
        ...

    def running(self, fut: ExecutorFuture) -> bool:
        """``fut.running()``: whether its call started and has not settled."""
        ...


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: ``ExecutorFuture._tp_task`` when the call was dropped before it became a task.
DROPPED: Any = _Marker("DROPPED")
#: ``ExecutorFuture._tp_task`` once its task settled (or could not be added).
SETTLED: Any = _Marker("SETTLED")


class ExecutorFuture(Future[Any]):
    """A :class:`concurrent.futures.Future` whose :meth:`cancel` and :meth:`running` ask the pool.

    ``cancel()`` is True only when the call is certain never to run: still on its way
    to the pool, in the pool's queue, or taken back unstarted from a worker's window.
    ``running()`` is True once the call started in its worker, until it settles.
    """

    def __init__(self, bridge: Bridge) -> None:
        super().__init__()
        self._waiters: list[Any] = _Waiters(weakref.ref(self), bridge.loop_thread)
        self._tp_bridge: Bridge | None = bridge
        self._tp_task: Any = None  # the Task once added; DROPPED / SETTLED markers
        self._tp_batch: list[Any] | None = None  # the pending batch it was put in

    def cancel(self) -> bool:
        """Cancel the call if it will never run; True when it will not (or was cancelled).

        From a thread other than the pool's loop this is a round trip to the loop,
        unless the call had not reached the pool yet. On the loop's own thread it cannot
        wait for a process worker to answer, and says False for a call held in a
        process worker's window.
        """
        with self._condition:
            state = self._state
        if state in (RUNNING, FINISHED):
            return False
        if state in (CANCELLED, CANCELLED_AND_NOTIFIED):
            return True
        bridge = self._tp_bridge
        if bridge is None:
            return super().cancel()
        return bridge.cancel(self)

    def running(self) -> bool:
        """True when the call started in its worker and has not settled yet.

        The future is not told of the start as it happens: this asks the pool (from a
        thread other than the pool's loop, a round trip to the loop). Once it said True,
        the future stays RUNNING until it settles.
        """
        with self._condition:
            state = self._state
        if state == RUNNING:
            return True
        if state != PENDING:
            return False
        bridge = self._tp_bridge
        if bridge is None:
            return False
        return bridge.running(self)

    def result(self, timeout: float | None = None) -> Any:
        """As :meth:`concurrent.futures.Future.result`.

        Raises:
            RuntimeError: called on the pool's loop thread before the future is done:
                the loop settles it, so waiting there would block it for good (await
                ``asyncio.wrap_future(future)`` instead).
        """
        self._check_wait()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As :meth:`concurrent.futures.Future.exception` (and :meth:`result`'s RuntimeError)."""
        self._check_wait()
        return super().exception(timeout)

    def _check_wait(self) -> None:
        bridge = self._tp_bridge
        if bridge is not None and self._state not in _DONE_STATES and bridge.on_loop():
            raise RuntimeError(
                "waiting for an executor's future on its pool's own loop thread would block that loop "
                "for good: await asyncio.wrap_future(future) instead"
            )


class _Waiters(list[Any]):
    """A future's waiters, where ``concurrent.futures.wait`` and ``as_completed`` put theirs.

    One put there on the pool's loop thread while the future is pending gets an event
    that refuses to block that thread: the loop settles the future, so waiting on it there
    would hang the pool for good (the ``RuntimeError`` of ``result()``, for ``wait``).
    """

    __slots__ = ("_fut", "_thread")

    def __init__(self, fut: weakref.ref[ExecutorFuture], thread: int) -> None:
        super().__init__()
        self._fut = fut  # (weakly: the future holds this list)
        self._thread = thread

    def append(self, waiter: Any) -> None:
        fut = self._fut()
        if (
            threading.get_ident() == self._thread
            and fut is not None
            and fut._state not in _DONE_STATES
            and type(waiter.event) is threading.Event
        ):
            waiter.event = _LoopEvent(self._thread)  # (installed under every future's lock: not set yet)
        super().append(waiter)


class _LoopEvent(threading.Event):
    def __init__(self, thread: int) -> None:
        super().__init__()
        self._tp_thread = thread

    def wait(self, timeout: float | None = None) -> bool:
        if (timeout is None or timeout > 0) and threading.get_ident() == self._tp_thread and not self.is_set():
            raise RuntimeError(
                "waiting (concurrent.futures.wait or as_completed) for an executor's future on its pool's "
                "own loop thread would block that loop for good: await asyncio.wrap_future(future) instead"
            )
        return super().wait(timeout)


def cancel_future(fut: ExecutorFuture) -> None:
    """Cancel a pending future and tell its waiters at once (``wait``, ``as_completed``)."""
    if Future.cancel(fut):
        fut.set_running_or_notify_cancel()
    fut._tp_bridge = None  # (done: see Bridge._settled)
