"""What runs inside a Ray worker actor (one actor per pool slot).

An async actor: its methods run on one event loop in the actor process. The pool talks
to it through four methods::

    pool                                               actor (its own loop + a call thread)
    start(init, logger) ─────────────────────────────► initializer; node, pid
    run([(cid, blob, report), ...]) ─────────────────► inbox ─► runners (concurrency)
      ◄────── [(cid, code, payload, at, started), ...]   answers of that batch, one reply
    cancel(cid) ─────────────────────────────────────► unstarted: answered "returned";
                                                       async: cancelled; sync: ("u", cid)
    poll() (always one outstanding) ◄───────────────── [("s", cid, at) | ("p", ...) |
                                                        ("o", stream, line) | ("u", cid) |
                                                        ("a", answer): one run's reply left]

Plain functions run on one thread of their own ("call thread"), so the loop keeps
serving ``poll`` and ``cancel`` while a blocking call runs: output and ``publish`` reach
the pool during the call, and a cancelled blocking call is reported unstoppable (the
pool kills the actor). A start is told through ``poll`` at once when the pool asked
(``report``), else only if the call still runs after :data:`START_REPORT_DELAY` (a short
call's start travels with its answer: no extra message).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import io
import logging
import os
import pickle
import socket
import sys
import threading
import time
from typing import Any

from ._answers import error_messages, sendable_chunk, unsendable_messages
from ._context import TaskContext, attach_trace, current, detach_trace
from ._control import HELD, ControlBlock
from ._events import resolve
from ._functions import is_async_callable
from ._wire import ERR_LOAD, ERR_RAISED

__all__ = [
    "A_CANCELLED",
    "A_ERROR",
    "A_PICKLED",
    "A_RETURNED",
    "A_VALUE",
    "REPLY_WAIT",
    "START_REPORT_DELAY",
    "SlotActor",
]

#: Answer codes: the value itself (plain types), the value pickled, an ``Error``, the call
#: cancelled while it ran, the call handed back unstarted.
A_VALUE, A_PICKLED, A_ERROR, A_CANCELLED, A_RETURNED = range(5)
#: Seconds a call runs before its start is told through ``poll`` when the pool did not
#: ask for it at once (0: every start is told as it happens; a burst's starts share one
#: poll reply). Status stays truthful only with 0: a remote start cannot be read in place.
START_REPORT_DELAY = 0.0
#: Seconds ``run`` waits for the next answer of its batch before it replies with those it
#: has (the others follow through ``poll``).
REPLY_WAIT = 0.002
_PLAIN = (type(None), bool, int, float, str, bytes)
_STOP = object()
_NOT_RUN = object()


class _Job:
    __slots__ = ("blob", "cid", "fut", "is_async", "number", "report", "trace")

    def __init__(self, call: tuple[Any, ...], fut: asyncio.Future[Any]) -> None:
        self.cid, self.number, self.blob, self.report, self.is_async, self.trace = call
        self.fut = fut


class _LineWriter(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` in the actor: whole lines go to the pool."""

    def __init__(self, actor: SlotActor, stream: str) -> None:
        super().__init__()
        self._actor, self._stream = actor, stream
        self._buf = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        with self._lock:
            text = self._buf + s
            *lines, self._buf = text.split("\n")
        for line in lines:
            self._actor.emit(("o", self._stream, line))
        return len(s)

    def flush(self) -> None:
        return


class SlotActor:
    """One pool slot's worker, made a Ray actor by the pool (``ray.remote(SlotActor)``)."""

    def __init__(self, worker_id: int, concurrency: int) -> None:
        self._id = worker_id
        self._concurrency = max(1, concurrency)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._inbox: collections.deque[Any] = collections.deque()
        self._outbox: list[tuple[Any, ...]] = []
        self._outlock = threading.Lock()
        self._wake_pending = False
        # (Events bind to the running loop when first waited on: made here, used there.)
        self._poll_wake = asyncio.Event()
        self._work = asyncio.Event()
        self._running: dict[int, asyncio.Task[Any]] = {}  # async calls
        self._sync_cid: int | None = None  # the blocking call running on the call thread
        self._sync_waiting: set[int] = set()  # blocking calls handed to the call thread
        self._stopped: set[int] = set()  # cancel asked before the call started
        self._reported: set[int] = set()  # calls whose start went through poll
        self._runners: list[asyncio.Task[None]] = []
        self._calls: collections.deque[Any] = collections.deque()  # to the call thread
        self._times: dict[asyncio.Future[Any], tuple[float, float]] = {}  # a call's own start, end
        self._call_wake = threading.Semaphore(0)
        self._call_thread: threading.Thread | None = None
        self._async_fns: dict[Any, bool] = {}
        self._block: ControlBlock | None = None  # shared with the pool (same machine only)
        self._controls = 0  # cancel / shutdown calls received (see taskpool._control)
        self._control_wake = asyncio.Event()

    # --- methods the pool calls ----------------------------------------------------------

    async def start(
        self, init: bytes | None, init_logger: str, shared: tuple[Any, ...] | None = None
    ) -> tuple[str | None, str, int, bool]:
        """Set up the worker and run the pool's initializer (pickled ``(fn, args)``).

        ``shared`` names the pool's control block (see :func:`open_block`).
        Returns ``(failure, node, pid, shared)``: ``failure`` is None, or ``"Type: message"``
        when the initializer raised (logged at CRITICAL on ``init_logger`` first); ``shared``
        whether the control block could be opened (the actor runs on the pool's machine).
        """
        self._block = open_block(shared)
        loop = self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        sys.stdout = _LineWriter(self, "stdout")
        sys.stderr = _LineWriter(self, "stderr")
        self._call_thread = threading.Thread(target=self._call_main, name="taskpool-call", daemon=True)
        self._call_thread.start()
        failure = None
        if init is not None:
            try:
                fn, args = pickle.loads(init)  # noqa: S301 - sent by our own pool
                call = self._in_call_thread(fn, args)
                try:
                    result = await call
                finally:
                    self._times.pop(call, None)
                if inspect.isawaitable(result):
                    await result
            except BaseException as exc:
                if isinstance(exc, _Escaped):
                    exc = exc.original
                logging.getLogger(init_logger).critical("Exception in initializer:", exc_info=exc)
                failure = f"{type(exc).__name__}: {exc}"
        self._runners = [loop.create_task(self._runner(i)) for i in range(self._concurrency)]
        return failure, socket.gethostname(), os.getpid(), self._block is not None

    async def run(self, calls: list[tuple[Any, ...]]) -> tuple[int, list[tuple[Any, ...]]]:
        """Run a batch of calls ``(cid, number, blob, report, is_async, trace)`` (after
        those handed earlier): this process's resident memory then, and the calls'
        answers, in order."""
        loop = self._loop
        assert loop is not None
        futs = []
        for call in calls:
            fut: asyncio.Future[Any] = loop.create_future()
            self._inbox.append(_Job(call, fut))
            futs.append(fut)
        self._work.set()
        # The answers ready together travel in this reply; one still running
        # REPLY_WAIT after the last answer goes through ``poll`` ("a"): a long call never
        # holds back the answers (or the calls handed back) of its batch.
        answers: list[tuple[Any, ...]] = []
        waiting: list[asyncio.Future[Any]] = futs
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        while True:
            answers.extend(f.result() for f in waiting if f.done())
            waiting = [f for f in waiting if not f.done()]
            if not waiting:
                break
            done, _ = await asyncio.wait(waiting, timeout=REPLY_WAIT, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
        for f in waiting:
            f.add_done_callback(self._late_answer)
        return self.memory(), answers

    def _late_answer(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled():
            self.emit(("a", fut.result()))

    async def cancel(self, cid: int, queued_only: bool = False) -> None:
        """Stop call ``cid``: unstarted, it is answered ``A_RETURNED`` (never runs); an
        async call is cancelled; a blocking one is told unstoppable through ``poll``."""
        self._control_arrived()
        for job in self._inbox:
            if job is not _STOP and job.cid == cid:
                self._inbox.remove(job)
                job.fut.set_result((cid, A_RETURNED, None, time.time(), 0.0))
                return
        if queued_only:
            return
        task = self._running.get(cid)
        if task is not None:
            task.cancel()
        elif self._sync_cid == cid:
            self.emit(("u", cid))
        elif cid in self._sync_waiting:
            self._stopped.add(cid)  # the call thread skips it
        else:
            self._stopped.add(cid)  # on its way to the call thread, or answered

    async def want_start(self, cid: int) -> None:
        """Report call ``cid``'s start as it happens (or now, if it is running)."""
        if cid in self._running or self._sync_cid == cid:
            if cid not in self._reported:
                self._reported.add(cid)
                self.emit(("s", cid, time.time()))
            return
        for job in self._inbox:
            if job is not _STOP and job.cid == cid:
                job.report = True

    async def shutdown(self) -> list[int]:
        """Hand back every unstarted call (answered ``A_RETURNED``); their ids."""
        self._control_arrived()
        back = []
        while self._inbox:
            job = self._inbox.popleft()
            if job is not _STOP:
                job.fut.set_result((job.cid, A_RETURNED, None, time.time(), 0.0))
                back.append(job.cid)
        return back

    async def poll(self) -> list[tuple[Any, ...]]:
        """Wait for events (starts, published data, output lines); take them all."""
        wake = self._poll_wake
        if self._loop is None:  # (before start: output of the start itself)
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
        while True:
            with self._outlock:
                if self._outbox:
                    out, self._outbox = self._outbox, []
                    self._wake_pending = False
                    return out
                wake.clear()
            await wake.wait()
            await asyncio.sleep(0)  # let a burst gather: one reply for all of it

    async def drain(self) -> list[tuple[Any, ...]]:
        """Take the events ``poll`` has not taken yet (without waiting)."""
        with self._outlock:
            out, self._outbox = self._outbox, []
            self._wake_pending = False
        return out

    def memory(self) -> int:
        """This actor process's resident memory, in bytes."""
        try:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    # --- inside ----------------------------------------------------------------------------

    def _control_arrived(self) -> None:
        self._controls += 1
        self._control_wake.set()

    def _controls_behind(self) -> bool:
        """Whether the pool sent a cancel or shutdown that has not arrived yet (it may be
        about the next call: wait for it before starting one)."""
        block = self._block
        return block is not None and block.read() > self._controls

    def emit(self, event: tuple[Any, ...]) -> None:
        """Queue an event for ``poll`` (from any thread)."""
        with self._outlock:
            self._outbox.append(event)
            if self._wake_pending:
                return
            self._wake_pending = True
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._set_wake()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._set_wake)

    def _set_wake(self) -> None:
        self._poll_wake.set()

    def _publish(self, topic: str, data: Any, task_id: int | None) -> None:
        try:
            blob = _dumps(data)
        except BaseException as exc:
            blob = _dumps(f"<undecodable: {type(exc).__name__}: {exc}>")
        self.emit(("p", task_id, topic, blob))

    async def _runner(self, slot: int) -> None:
        """Run calls from the inbox one at a time; ``slot``: this runner's control block
        slot (see ControlBlock.hold), held while a call runs."""
        work = self._work
        inbox = self._inbox
        while True:
            if not inbox:
                work.clear()
                await work.wait()
                continue
            if self._controls_behind():
                self._control_wake.clear()
                await self._control_wake.wait()
                continue
            job = inbox.popleft()
            try:
                answer = await self._run_job(job, slot)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # a bug of ours: the call fails, the worker lives
                answer = _error(job.cid, ERR_RAISED, exc, time.time(), 0.0)
            if not job.fut.done():
                job.fut.set_result(answer)

    async def _run_job(self, job: _Job, slot: int) -> tuple[Any, ...]:
        cid = job.cid
        if cid in self._stopped:
            self._stopped.discard(cid)
            return (cid, A_RETURNED, None, time.time(), 0.0)
        block = self._block
        held = block is not None and slot < HELD
        if block is not None:  # begun (before loading: that may run user code)
            if held:
                block.hold(slot, job.number)  # until its answer is made: see ControlBlock.ended
            block.begin(job.number, time.time(), not job.is_async)
        timer = None
        try:
            try:
                fn, args = pickle.loads(job.blob)  # noqa: S301 - sent by our own pool
            except BaseException as exc:
                now = time.time()
                return _error(cid, ERR_LOAD, exc, now, now)
            job.blob = b""
            started = time.time()  # after loading: the run time is the call's own
            if job.report or (block is None and not START_REPORT_DELAY):
                self._reported.add(cid)
                self.emit(("s", cid, started))
            elif block is None:
                assert self._loop is not None
                timer = self._loop.call_later(START_REPORT_DELAY, self._late_start, cid, started)
            is_async = self._async_fns.get(fn) if _hashable(fn) else None
            if is_async is None:
                is_async = is_async_callable(fn)
                if _hashable(fn) and len(self._async_fns) < 4096:
                    self._async_fns[fn] = is_async
            ctx = TaskContext(self._publish, self._id, None, cid)
            if is_async:
                token = current.set(ctx)
                trace = None if job.trace is None else attach_trace(job.trace)
                try:
                    coro = fn(*args)
                    # (The task copies this context: the trace stays current in it.)
                    return await self._await(cid, coro, started, ctx, fn)
                finally:
                    if trace is not None:
                        detach_trace(trace)
                    current.reset(token)
            self._sync_waiting.add(cid)
            call = self._in_call_thread(fn, args, ctx, job.trace)
            try:
                value = await call
            except BaseException as exc:
                began, ended = self._times.pop(call, (started, time.time()))
                return _error(cid, ERR_RAISED, exc, ended, began)
            finally:
                self._sync_waiting.discard(cid)
                if block is not None:
                    block.end()
            if value is _NOT_RUN:
                self._stopped.discard(cid)
                return (cid, A_RETURNED, None, time.time(), 0.0)
            began, ended = self._times.pop(call, (started, time.time()))
            if value is not None and inspect.isawaitable(value):
                return await self._await(cid, value, began, ctx, fn)
            return _answer(cid, value, ended, began, fn)
        finally:
            if timer is not None:
                timer.cancel()
            self._reported.discard(cid)
            if held:
                block.release(slot)  # type: ignore[union-attr]

    async def _await(
        self, cid: int, awaitable: Any, started: float, ctx: TaskContext, fn: Any = None
    ) -> tuple[Any, ...]:
        assert self._loop is not None
        task = self._loop.create_task(_awaited(awaitable, ctx))
        self._running[cid] = task
        try:
            value = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():  # cancelled by the pool (cancel)
                return (cid, A_CANCELLED, None, time.time(), started)
            raise  # the runner itself is being cancelled
        except BaseException as exc:
            return _error(cid, ERR_RAISED, exc, time.time(), started)
        finally:
            self._running.pop(cid, None)
        return _answer(cid, value, time.time(), started, fn)

    def _late_start(self, cid: int, started: float) -> None:
        if cid not in self._reported:
            self._reported.add(cid)
            self.emit(("s", cid, started))

    def _in_call_thread(
        self, fn: Any, args: tuple[Any, ...], ctx: TaskContext | None = None, trace: dict[str, str] | None = None
    ) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` on the call thread (in ``ctx``, and ``trace``'s span context
        if traced); its outcome, on our loop."""
        loop = self._loop
        assert loop is not None
        fut: asyncio.Future[Any] = loop.create_future()
        self._calls.append((fn, args, ctx, trace, fut))
        self._call_wake.release()
        return fut

    def _call_main(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            self._call_wake.acquire()
            fn, args, ctx, trace, fut = self._calls.popleft()
            if ctx is not None:
                if ctx.task_id in self._stopped:  # cancelled before it began: never runs
                    loop.call_soon_threadsafe(resolve, fut, True, _NOT_RUN)
                    continue
                self._sync_cid = ctx.task_id
                current.set(ctx)
            token = None if trace is None else attach_trace(trace)
            began = time.time()
            try:
                value, ok = fn(*args), True
            except BaseException as exc:
                # Wrapped: a GeneratorExit thrown through the awaiting coroutines would
                # close them instead of reaching their handlers.
                value, ok = _Escaped(exc), False
            # Taken here, not on the actor's loop: the hand-offs to and from this thread
            # (a busy machine: milliseconds) are not the call's run time.
            self._times[fut] = (began, time.time())
            if token is not None:
                detach_trace(token)
            self._sync_cid = None
            current.set(None)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(resolve, fut, ok, value)
            del fn, args, value


async def _awaited(awaitable: Any, ctx: TaskContext) -> Any:
    current.set(ctx)
    try:
        return await awaitable
    except (SystemExit, KeyboardInterrupt, GeneratorExit) as exc:  # the task's, not the actor's
        raise _Escaped(exc) from None
    except asyncio.CancelledError as exc:
        me = asyncio.current_task()
        if me is not None and not me.cancelling():  # raised by the call itself: it failed
            raise _Escaped(exc) from None
        raise


class _Escaped(Exception):
    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


def block_name(block: ControlBlock) -> tuple[Any, ...] | None:
    """How an actor on this machine finds the pool's control block ``block`` (its memfd,
    through ``/proc``): ``(pid, fd, inode, boot id)``; None if it has no fd."""
    if block.fd is None:
        return None
    return (os.getpid(), block.fd, os.fstat(block.fd).st_ino, _boot_id())


def open_block(name: tuple[Any, ...] | None) -> ControlBlock | None:
    """The pool's control block named by :func:`block_name`, or None when it cannot be
    opened: the actor runs on another machine (another boot id, or the inode differs),
    or ``/proc`` does not let us. The pool then counts on messages alone."""
    if name is None:
        return None
    pid, fd, inode, boot = name
    if boot is None or boot != _boot_id():
        return None
    try:
        own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(own).st_ino != inode:
            os.close(own)
            return None
        block = ControlBlock(own)
    except OSError:
        os.close(own)
        return None
    block.close_fd()  # the mapping stays
    return block


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _hashable(fn: Any) -> bool:
    try:
        hash(fn)
    except TypeError:
        return False
    return True


def _dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, 5)
    except Exception:
        import cloudpickle

        return cloudpickle.dumps(value, 5)  # type: ignore[no-any-return]


def _answer(cid: int, value: Any, at: float, started: float, fn: Any = None) -> tuple[Any, ...]:
    if type(value) in _PLAIN:
        return (cid, A_VALUE, value, at, started)
    try:
        return (cid, A_PICKLED, _dumps(value), at, started)
    except BaseException as exc:
        fixed = sendable_chunk(fn, value, _dumps)  # a chunk of map: each result in its own place
        if fixed is not None:
            with contextlib.suppress(BaseException):
                return (cid, A_PICKLED, _dumps(fixed), at, started)
        err, _ = unsendable_messages(cid, value, exc, at, started, __file__)
        return (cid, A_ERROR, err, at, started)


def _error(cid: int, kind: int, exc: BaseException, at: float, started: float) -> tuple[Any, ...]:
    if isinstance(exc, _Escaped):
        exc = exc.original
    err, clipped = error_messages(cid, kind, exc, at, __file__, started=started)
    try:
        pickle.dumps(err, 5)
    except BaseException:
        err = clipped
    return (cid, A_ERROR, err, at, started)
