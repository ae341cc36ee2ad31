"""The pool's own life: start -> running -> closing -> closed, every wait of it bounded.

:class:`Lifecycle` is the base of :class:`~taskpool._core.PoolCore` holding this part
(the core itself owns each task's life)::

    start() ── host task ── task group ─┬─ Supervisor.start_all: a worker per slot, answered
                                        ├─ async hooks, services
                                        └─ waits for the stop event
    aclose(cancel, grace)
      ├─ drain (at most `grace`), or cancel tasks and running hooks
      └─ stop event ─► workers asked to stop ─(limit)─► killed ─(KILL_WAIT)─► abandoned,
                       task group cancelled ─► the kind's pool_closed (STOP_WAIT)
                       ─► abandoned threads joined (grace) ─► closed

The host task owns the pool's task group, so ``start()`` and ``aclose()`` may be called
from different tasks, and nothing the pool runs is left behind.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc

from . import _context
from ._errors import PoolBroken, PoolClosed, TaskCancelled
from ._hooks import in_hook
from ._options import check_grace
from ._types import PoolEvent, PoolState, WorkerEvent, WorkerSnapshot

if TYPE_CHECKING:
    from ._events import EventBus
    from ._hooks import Hooks
    from ._log import Logger
    from ._options import PoolOptions
    from ._scheduler import Scheduler
    from ._supervisor import Supervisor
    from ._workers import Worker

__all__ = ["KILL_WAIT", "STOP_WAIT", "Extra", "Lifecycle"]

#: Seconds workers get to end after being killed before they are abandoned (closing).
KILL_WAIT = 1.0
_OPEN = (PoolState.NEW, PoolState.RUNNING)

#: Seconds a pool that was not given a ``grace`` waits for its workers to stop by themselves.
STOP_WAIT = 10.0


class Extra(Protocol):
    """Something tied to a pool's life (a persistent worker, a service)."""

    async def aclose(self) -> None:
        """Stop it (the pool is closing)."""

    def snapshot_workers(self) -> list[WorkerSnapshot]:
        """Its workers, for the pool's snapshot."""
        ...


class Lifecycle:
    """Start and close a pool; the attributes below are the core's."""

    name: str
    events: EventBus
    log: Logger
    sched: Scheduler
    sup: Supervisor
    hooks: Hooks
    extras: list[Extra]
    loop: asyncio.AbstractEventLoop
    room_waiters: collections.deque[asyncio.Future[None]]
    _state: PoolState
    _extra_runs: list[Callable[[], Coroutine[Any, Any, None]]]
    _loop_thread: int | None
    _host_task: asyncio.Task[None] | None
    _cleaning_up: bool
    _tg: anyio.abc.TaskGroup | None
    _stop_event: asyncio.Event | None
    _join_waiters: list[asyncio.Future[None]]
    _check_scheduled: bool
    _next_extra_id: int
    _broken: PoolBroken | None
    role: str
    worker_buses: list[EventBus]
    worker_listeners: list[Callable[[WorkerEvent], None]]
    options: PoolOptions

    # --- extras: persistent workers and services tied to this pool -------------------------

    def emit_worker(self, topic: str, worker: Worker, **fields: Any) -> None:
        """Publish a ``worker.*`` event to the worker listeners and buses that want it."""
        listeners = self.worker_listeners
        buses = [b for b in self.worker_buses if b.wants(topic)]
        if not buses and not listeners:
            return
        event = WorkerEvent(
            topic=topic,
            time=time.time(),
            worker_id=worker.id,
            worker_kind=worker.kind,
            pid=worker.pid,
            role=self.role,
            **fields,
        )
        for listener in listeners:
            listener(event)
        for bus in buses:
            bus.emit(event)

    def reserve_worker_ids(self, count: int) -> int:
        """Reserve ``count`` worker ids after the pool's own; returns the first."""
        first = self._next_extra_id
        self._next_extra_id += count
        return first

    def check_open(self) -> None:
        """Raise PoolClosed unless extras may still be tied to the pool."""
        if self._state not in _OPEN:
            raise PoolClosed(f"pool {self.name!r} is {self._state}")

    def attach(self, extra: Extra, run: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
        """Tie ``extra`` to the pool's life; ``run`` runs in the pool's task group."""
        self.extras.append(extra)
        if run is not None:
            if self._tg is not None:
                self._tg.start_soon(run)
            else:
                self._extra_runs.append(run)

    def detach(self, extra: Extra) -> None:
        """Untie ``extra`` from the pool's life (nothing if it was not tied)."""
        if extra in self.extras:
            self.extras.remove(extra)

    def _check_intake(self, state: PoolState) -> None:
        if state is PoolState.BROKEN:
            assert self._broken is not None
            raise self._broken
        if state is PoolState.CLOSING and (self.hooks.depth or in_hook.get() is self or self._in_own_task()):
            return  # follow-up work from the pool's own hooks and tasks while it drains
        raise PoolClosed(f"pool {self.name!r} is {state}; no more tasks can be added")

    def _in_own_task(self) -> bool:
        ctx = _context.current.get()
        return ctx is not None and ctx.owner is self

    def check_thread(self) -> None:
        """Raise RuntimeError when called off the pool's event loop thread."""
        if self._loop_thread is not None and threading.get_ident() != self._loop_thread:
            raise RuntimeError(f"pool {self.name!r} must be used from the thread running its event loop")

    def wake_room(self) -> None:
        """Give room in the queue to the first ``submit`` waiting for it."""
        while self.room_waiters:
            fut = self.room_waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def cancel_all(self, exc: TaskCancelled | PoolBroken) -> None:
        """Settle every task not settled yet with ``exc`` (the core implements it).

        Raises:
            NotImplementedError: always, here.
        """
        raise NotImplementedError

    def pump(self) -> None:
        """Hand queued tasks to workers with room (the core implements it).

        Raises:
            NotImplementedError: always, here.
        """
        raise NotImplementedError

    def schedule_check(self) -> None:
        """Check for drain once the current loop iteration ends (the core implements it).

        Raises:
            NotImplementedError: always, here.
        """
        raise NotImplementedError

    async def start(self) -> None:
        """Start the workers; return once every worker has answered.

        Raises:
            RuntimeError: the pool was already started.
            PoolBroken: the workers could not be started within the restart policy.
        """
        if self._state is not PoolState.NEW:
            raise RuntimeError(f"pool {self.name!r} was already started (state {self._state})")
        self._state = PoolState.RUNNING
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop_event = asyncio.Event()
        ready: asyncio.Future[None] = self.loop.create_future()
        # The host task owns the pool's task group, so start() and aclose() may be called
        # from different tasks; aclose() awaits it: nothing the pool runs is left behind.
        self._host_task = self.loop.create_task(self._host(ready), name=f"taskpool-{self.name}")
        try:
            await asyncio.shield(ready)
        except BaseException:
            if not ready.done() or ready.cancelled():  # we were cancelled while starting
                self._state = PoolState.CLOSING
                self.cancel_all(TaskCancelled("pool start was cancelled"))
                self._stop_event.set()
                with anyio.CancelScope(shield=True):
                    await self._stop_and_wait(None)
            else:
                with anyio.CancelScope(shield=True):
                    await self._wait_host(STOP_WAIT)
                self._finish_close()
            raise

    async def _host(self, ready: asyncio.Future[None]) -> None:
        assert self._stop_event is not None
        started = False
        opened = False
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    await self.sup.backend.pool_opened(self.sup.spec)  # what the kind's workers share
                    opened = True
                    await self.sup.start_all(tg, on_demand=self.options.start_workers == "on_demand")
                    self._check_not_broken()  # a crash may have broken it as it started ("break")
                except BaseException as exc:
                    if not ready.done():
                        err = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc
                        ready.set_exception(err)
                    raise
                if not ready.done():
                    ready.set_result(None)
                started = True
                self.hooks.bind(tg)
                for run in self._extra_runs:
                    tg.start_soon(run)
                self._extra_runs.clear()
                self.pump()
                self.schedule_check()
                await self._stop_event.wait()
                self.sup.stop_all()  # aclose has drained or cancelled the tasks by now
                for extra in list(self.extras):
                    tg.start_soon(extra.aclose)
        except BaseException as exc:
            if not ready.done():
                err = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc
                safe = isinstance(err, (Exception, asyncio.CancelledError))
                ready.set_exception(err if safe else PoolBroken(repr(err)))
            self.cancel_all(PoolBroken(f"pool {self.name!r} stopped unexpectedly: {exc!r}"))
            if not isinstance(exc, (asyncio.CancelledError, Exception)):
                raise
            if isinstance(exc, Exception) and started:  # a failed start is raised by start()
                self.log.exception("pool host failed", exc_info=exc)
        finally:
            self._tg = None
            self.hooks.unbind(f"pool {self._state}")
            if opened:
                self._cleaning_up = True
                with anyio.CancelScope(shield=True):
                    try:
                        await self.sup.backend.pool_closed(self.sup.spec)
                    except Exception as exc:
                        self.log.exception("worker kind failed to clean up", exc_info=exc)

    def _check_not_broken(self) -> None:
        if self._broken is not None:
            raise self._broken

    async def aclose(self, *, cancel: bool = False, grace: float | None = None) -> None:
        """Close: stop intake, settle every task, stop the workers (see FunctionPool.aclose).

        Every wait is bounded once tasks are cancelled: hooks still running are
        cancelled, workers that ignore the stop request are killed, and workers that do
        not report their end are abandoned.

        Raises:
            ValueError: ``grace`` is negative or not finite.
        """
        grace = check_grace("grace", grace)
        if self._state is PoolState.NEW:
            self._state = PoolState.CLOSING
            self.cancel_all(TaskCancelled("pool closed before it started"))
            with anyio.CancelScope(shield=True):
                for extra in list(self.extras):  # persistent workers run even before start
                    await extra.aclose()
            self._finish_close()
            return
        if self._state is PoolState.CLOSED:
            return
        if self._state is PoolState.RUNNING:
            self._state = PoolState.CLOSING
        try:
            if cancel:
                self._cancel_everything("pool closed with cancel=True")
            else:
                with anyio.move_on_after(grace):
                    await self.drained()
                if not self.sched.drained or self.hooks.running:
                    self._cancel_everything(f"pool closed: grace of {grace} s ran out")
        except BaseException:
            # Our caller is cancelled: close hard, but still close.
            self._cancel_everything("pool closed: the closing code was cancelled")
            with anyio.CancelScope(shield=True):
                await self._stop_and_wait(grace)
            raise
        with anyio.CancelScope(shield=True):
            await self._stop_and_wait(grace)

    def _cancel_everything(self, why: str) -> None:
        self.cancel_all(TaskCancelled(why))
        self.hooks.cancel_running(why)

    async def _stop_and_wait(self, grace: float | None) -> None:
        if self._stop_event is not None:
            self._stop_event.set()
        if not await self._wait_host(STOP_WAIT if grace is None else max(grace, 0.5)) and not self._cleaning_up:
            self.sup.kill_all()  # workers ignored the stop request
            if not await self._wait_host(KILL_WAIT) and not self._cleaning_up:
                # Workers that never report their end, hooks that swallow cancellation.
                self.sup.abandon_all()
                self._cancel_everything("pool closed: workers did not stop")
                if self._tg is not None:
                    self._tg.cancel_scope.cancel()
                if not await self._wait_host(KILL_WAIT):
                    self.log.error("pool host did not end; leaving it behind", host=repr(self._host_task))
        # Every worker ended: what is left is the kind's pool_closed (a private Ray takes
        # seconds to stop). Killing would not hasten it, so it gets a bound of its own.
        if self._cleaning_up and not await self._wait_host(STOP_WAIT):
            self.log.error("worker kind did not finish cleaning up; leaving it behind", host=repr(self._host_task))
        await self.sup.join_abandoned(0.0 if grace is None else grace)
        self._finish_close()

    async def _wait_host(self, limit: float) -> bool:
        host = self._host_task
        if host is None or host.done():
            return True
        with anyio.move_on_after(limit):
            try:
                await asyncio.shield(host)
            except BaseException:
                if not host.done():
                    raise
        return host.done()

    def _finish_close(self) -> None:
        if self._state is PoolState.CLOSED:
            return
        self.cancel_all(TaskCancelled("pool closed"))
        self._state = PoolState.CLOSED
        if self.events.wants("pool.closed"):
            self.events.emit(PoolEvent(topic="pool.closed", time=time.time(), pool=self.name))
        self.events.close()
        waiters, self._join_waiters = self._join_waiters, []
        while self.room_waiters:
            waiters.append(self.room_waiters.popleft())
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def drained(self) -> None:
        """Wait until nothing is queued, held by a worker, or running as an async hook.

        A pending drain check is waited for too, so the round's ``all_settled`` hooks
        and ``pool.drained`` have run by the time this returns.
        """
        own = 1 if in_hook.get() is self else 0  # awaited by an async hook: not itself
        while (
            not self.sched.drained or self.hooks.running > own or self._check_scheduled
        ) and self._state is not PoolState.CLOSED:
            fut = asyncio.get_running_loop().create_future()
            self._join_waiters.append(fut)
            try:
                await fut
            finally:
                if not fut.done():
                    fut.cancel()
