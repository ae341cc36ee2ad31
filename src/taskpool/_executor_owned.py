"""The pool a ``ThreadPoolExecutor`` / ``ProcessPoolExecutor`` owns, on a private loop thread.

::

    first submit / map ──► OwnedPool.ensure_started(): thread "<name>-loop" (daemon)
                               new event loop (uvloop) ─► PoolCore(options).start()
                               (workers on demand) ─► Bridge ─► serve until closing
    shutdown(wait, cancel_futures) ──► bridge closed (no new work)
                               [cancel_futures: withdraw every call not started]
                               loop: wait until the executor's work settled
                                     ─► core.aclose() (workers stopped and joined)
                                     ─► the loop thread ends  ◄── join() (wait=True)
    interpreter exit (threading's atexit, before ``atexit``): every live OwnedPool
    shut down, its work finished and its thread joined; submits raise from then on

Nothing here holds the executor object itself: dropping the executor's last reference
runs its ``weakref.finalize``, which shuts the pool down without waiting.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._core import PoolCore
from ._executor import Bridge, interpreter_shutting_down, mark_interpreter_shutdown, settle_workers
from ._log import get_logger
from ._loop import new_event_loop

if TYPE_CHECKING:
    from ._executor_errors import ErrorStyle
    from ._options import PoolOptions
    from ._types import WorkerEvent

__all__ = ["OwnedPool", "ProcessHandle"]


class ProcessHandle:
    """A worker process of a ``ProcessPoolExecutor``, with the face of the
    ``multiprocessing.Process`` objects in ``concurrent.futures``' ``_processes``.

    Attributes:
        pid: the process id.
        exitcode: None while it runs; its exit code, or ``-signal`` when a signal ended it.
    """

    def __init__(self, pid: int, send_signal: Callable[[int, int], None]) -> None:
        self.pid: int = pid
        self.exitcode: int | None = None
        self._send_signal = send_signal
        self._gone = threading.Event()

    def is_alive(self) -> bool:
        """True until the process has exited (and the pool saw it go)."""
        return not self._gone.is_set()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the process has exited, at most ``timeout`` seconds."""
        self._gone.wait(timeout)

    def terminate(self) -> None:
        """Send SIGTERM, as if from outside the pool (an unclean death: it breaks the pool)."""
        self._send_signal(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL, as :meth:`terminate`."""
        self._send_signal(self.pid, signal.SIGKILL)

    def exited(self, exitcode: int | None, sig: int | None) -> None:
        """The pool saw the process end (called on the pool's loop)."""
        self.exitcode = -sig if sig else exitcode
        self._gone.set()

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else f"exitcode={self.exitcode}"
        return f"<ProcessHandle pid={self.pid} {state}>"


class OwnedPool:
    """An executor's own pool, running on its own event-loop thread (started on first use).

    Args:
        options: the pool's options (checked).
        style: how the pool's failures look to ``concurrent.futures`` code.
        loop_name: the loop thread's name.
    """

    def __init__(self, options: PoolOptions, style: ErrorStyle, *, loop_name: str) -> None:
        self.options = options
        self.style = style
        self.loop_name = loop_name
        self.bridge: Bridge | None = None
        self.core: PoolCore | None = None
        self.thread: threading.Thread | None = None
        self.shutdown_called = False
        self.ended = False  # the loop thread has finished
        self._lock = threading.Lock()
        self._closing: asyncio.Event | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.worker_threads: set[threading.Thread] = set()  # every worker thread started
        self.handles: dict[int, ProcessHandle] = {}  # live worker processes by pid

    # --- any thread --------------------------------------------------------------------------

    def ensure_started(self) -> Bridge:
        """The bridge to the pool, starting the loop thread and the pool the first time.

        Raises:
            RuntimeError: the executor was shut down, or the interpreter is exiting.
            BaseException: what starting the pool raised.
        """
        bridge = self.bridge
        if bridge is not None:
            return bridge
        with self._lock:
            if self.bridge is None:
                if interpreter_shutting_down():
                    raise RuntimeError("cannot schedule new futures after interpreter shutdown")
                if self.shutdown_called:
                    raise RuntimeError("cannot schedule new futures after shutdown")
                self._start()
            assert self.bridge is not None
            return self.bridge

    def _start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []
        thread = threading.Thread(target=self._main, args=(ready, failure), name=self.loop_name, daemon=True)
        _live.add(self)
        try:
            thread.start()
        except BaseException:
            _live.discard(self)
            raise
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        self.thread = thread

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        """Accept no more work; finish (or with ``cancel_futures`` withdraw) what was sent,
        then close the pool and end the loop thread; with ``wait``, wait for that.

        Waiting is skipped where it could never end: on the loop thread itself, or in
        one of the pool's worker threads (a task shutting its own executor down).
        """
        with self._lock:
            self.shutdown_called = True
            bridge = self.bridge
        if bridge is None:
            return
        bridge.close()
        try:
            bridge.loop.call_soon_threadsafe(self._begin_close, cancel_futures)
        except RuntimeError:  # the loop is closed: everything has ended
            return
        if wait:
            self.join()

    def join(self) -> None:
        """Wait for the loop thread to end (unless that would never happen, see :meth:`shutdown`)."""
        thread = self.thread
        me = threading.current_thread()
        if thread is None or thread is me or me in self.worker_threads:
            return
        thread.join()

    def has_ended(self) -> bool:
        """Whether the loop thread has finished (the pool is closed)."""
        return self.ended

    def threads(self) -> set[threading.Thread]:
        """Every worker thread started so far, once the workers on their way are up."""
        self._catch_up()
        return set(self.worker_threads)

    def processes(self) -> dict[int, ProcessHandle]:
        """The live worker processes by pid, once the workers on their way are up."""
        self._catch_up()
        return dict(self.handles)

    def _catch_up(self) -> None:
        bridge = self.bridge
        if bridge is None or self.ended or bridge.on_loop():
            return
        try:
            bridge.call(self._settle(bridge))
        except RuntimeError:  # the loop ended meanwhile
            pass

    def send_signal(self, pid: int, sig: int) -> None:
        """Signal worker process ``pid`` if it still runs (checked on the loop: no pid reuse)."""
        bridge = self.bridge
        if bridge is None:
            return
        if bridge.on_loop():
            self._signal_now(pid, sig)
            return
        try:
            bridge.call(self._signal(pid, sig))
        except RuntimeError:  # the loop ended: so did the process
            pass

    # --- the loop thread ---------------------------------------------------------------------

    def _main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = new_event_loop()
        try:
            loop.run_until_complete(self._serve(loop, ready, failure))
        except BaseException as exc:
            if not ready.is_set():
                failure.append(exc)
            else:  # a bug of ours: the calls in flight stay pending, so say it loudly
                get_logger(executor=self.loop_name).error("executor loop failed", exc_info=exc)
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self.ended = True
                core = self.core
                if core is not None and self._on_worker_event in core.worker_listeners:
                    core.worker_listeners.remove(self._on_worker_event)  # no cycle left behind
                for handle in list(self.handles.values()):
                    handle.exited(None, None)  # the pool waited for every one of them
                self.handles.clear()
                _live.discard(self)
                ready.set()

    async def _serve(
        self, loop: asyncio.AbstractEventLoop, ready: threading.Event, failure: list[BaseException]
    ) -> None:
        core = self.core = PoolCore(self.options)
        core.worker_listeners.append(self._on_worker_event)
        try:
            await core.start()
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        self._closing = asyncio.Event()
        self.bridge = Bridge(core, loop, self.style, loop_thread=threading.get_ident())
        ready.set()
        await self._closing.wait()
        await self.bridge.wait_idle()
        await core.aclose()

    def _begin_close(self, cancel_futures: bool) -> None:
        assert self._closing is not None
        if cancel_futures and self.bridge is not None:
            task = asyncio.get_running_loop().create_task(self._cancel_then_close(self.bridge))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        else:
            self._closing.set()

    async def _cancel_then_close(self, bridge: Bridge) -> None:
        assert self._closing is not None
        try:
            await bridge.cancel_unstarted(settle=True)
        finally:
            self._closing.set()

    async def _settle(self, bridge: Bridge) -> None:
        bridge._drain()
        await settle_workers(bridge.core, until_running=False)

    async def _signal(self, pid: int, sig: int) -> None:
        self._signal_now(pid, sig)

    def _signal_now(self, pid: int, sig: int) -> None:
        if pid in self.handles:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _on_worker_event(self, event: WorkerEvent) -> None:
        if event.topic == "worker.started":
            core = self.core
            for slot in core.sched.slots if core is not None else ():
                if slot.id == event.worker_id:
                    thread = getattr(slot.worker, "thread", None)
                    if isinstance(thread, threading.Thread):
                        self.worker_threads.add(thread)
            if event.pid is not None:
                self.handles[event.pid] = ProcessHandle(event.pid, self.send_signal)
        elif event.topic == "worker.exited" and event.pid is not None:
            handle = self.handles.pop(event.pid, None)
            if handle is not None:
                handle.exited(event.exitcode, event.signal)


# --------------------------------------------------------------------------- interpreter exit

#: Owned pools whose loop thread runs (they are shut down and joined at exit).
_live: set[OwnedPool] = set()


def _python_exit() -> None:
    """At interpreter exit, as ``concurrent.futures`` does: no more submits, every
    executor's work finished, its workers and loop thread joined."""
    mark_interpreter_shutdown()
    pools = list(_live)
    for pool in pools:
        pool.shutdown(wait=False, cancel_futures=False)
    for pool in pools:
        pool.join()


# threading's own exit hooks run before ``atexit``'s, while threads may still be joined.
getattr(threading, "_register_atexit")(_python_exit)  # noqa: B009 - private to CPython, not in typeshed
