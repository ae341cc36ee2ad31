"""The worker process: a fresh interpreter serving calls over the framed channel.

Spawned by :mod:`taskpool._spawn` (the parent side: argv, environment, lifetime) through
:mod:`taskpool._worker_main` (the process entry point).

Serving: one event loop (uvloop when importable) runs a :class:`CallServer` on the
socket. Calls queue in arrival order (numbered 1, 2, ...) and run ``concurrency`` at once
(one by default). Each call's start is written to the control block shared with the pool
(:mod:`taskpool._control`: its number and time, before its arguments are loaded), and
announced by ``Started(id, at)`` only when the call asks for it (``report``); ``Loading``
comes first when its function must be loaded. It is answered by ``Result``/``Error``,
which carry its start time. Sync functions run on the main thread, blocking the loop
(outside the loop's "running" mark, so ``asyncio.run()`` works in them); coroutine
functions run as tasks on the loop and can be cancelled (``Cancel``).
Each call runs with :data:`taskpool._context.current` set to a fresh
:class:`~taskpool._context.TaskContext` whose ``task_id`` is the call's id, so
``taskpool.publish`` in it is tagged with that id.

Writing: the answers of a burst of calls go out in one write once nothing more is to
run. Before a call of a function known to be quick, the answers still waiting are copied
to the control block's journal instead (the pool reads them there if the worker dies);
before any other call they are written, so a long call never holds them back. A
``Cancel`` or ``Shutdown`` for a queued call wins over starting it: a frame already in
the socket is read before the next call starts, even one that arrived while a sync call
blocked the loop (the control block's count of control frames, or one non-blocking
``poll``, tells).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import os
import select
import threading
import time
from asyncio import events
from collections import deque
from collections.abc import Callable
from typing import Any

from taskpool._answers import (
    Escaped,
    cancelled_message,
    error_messages,
    result_message,
    run_awaitable,
    unsendable_messages,
)
from taskpool._channel import FrameProtocol
from taskpool._context import TaskContext, attach_trace, current, detach_trace
from taskpool._control import HELD, JOURNAL, ControlBlock
from taskpool._errors import SerializationError
from taskpool._frames import NO_LIMIT, FrameWriter, Message, WireError
from taskpool._functions import FnSlot
from taskpool._wire import (
    ANSWERS_HEAD,
    ERR_LOAD,
    ERR_RAISED,
    FMT_PICKLE,
    Call,
    Calls,
    Cancel,
    Error,
    Hello,
    InitFailed,
    Loading,
    Publish,
    Ready,
    Result,
    Started,
    ToChild,
    TracedCall,
    child_parser,
    dump_payload,
    load_payload,
)

__all__ = ["CallServer"]

# --------------------------------------------------------------------------- the worker


#: A function whose sync calls run under this many seconds on average (over at least
#: QUICK_RUNS calls) is quick: answers already written wait for the next flush (at the
#: latest FLUSH_AGE seconds later) instead of one write per call. Any other call gets the
#: output flushed before it starts, so a long call never holds back earlier answers.
QUICK_CALL = 20e-6
QUICK_RUNS = 4
FLUSH_AGE = float(os.environ.get("TASKPOOL_FLUSH_AGE", "0.0005"))  # (tests set it higher)


class _Job:
    __slots__ = ("held", "msg", "number", "slot")

    def __init__(self, msg: Call, slot: FnSlot, number: int) -> None:
        self.msg = msg
        self.slot = slot
        self.number = number  # in arrival order, 1, 2, ... (see taskpool._control)
        self.held = -1  # its slot in the control block while it runs as a coroutine


class CallServer(FrameProtocol[ToChild]):
    """The child's end of the channel: queues calls, runs them, answers, publishes.

    Runs at most ``concurrency`` calls at once (only coroutines can overlap: a sync call
    blocks the loop until it returns). ``hello`` is sent as soon as the channel is up.
    ``max_message`` is the parent's bound on what it receives (its ``max_message_size``):
    a result or published data over it fails as a SerializationError here rather than
    getting the worker killed for breaking the channel.
    """

    def __init__(
        self,
        concurrency: int = 1,
        hello: Hello | None = None,
        *,
        max_message: int = NO_LIMIT,
        control: ControlBlock | None = None,
    ) -> None:
        super().__init__(child_parser())
        self.writer = FrameWriter(max_message=max_message)
        # The pool's count of control frames (Cancel, Shutdown) sent, and ours of those read:
        # while the pool is ahead, a control frame for a queued call waits in the socket.
        self.control = control
        self.controls_read = 0
        self.calls_read = 0  # Call frames read: each call's number (see taskpool._control)
        self._batch_at = 0.0  # when output was last flushed before a call, or a batch began
        self._journaled = 0  # bytes of the writer's pending frames copied to the journal
        self._jlen = 0  # bytes in the control block's journal
        self._pumping = False  # starting calls (_pump): frames sent are written at its end
        self.hello = hello  # the first frame, queued as soon as the channel is up
        self.queue: deque[_Job] = deque()
        # Async calls running at once (at most ``concurrency``): id -> (job, task). A sync
        # call runs to its end inside _run, blocking the loop, so it never stays here.
        self.limit = concurrency
        self.running: dict[int, tuple[_Job, asyncio.Task[Any]]] = {}
        # Control block slots for coroutine calls (see ControlBlock.hold).
        self._free_held = list(range(min(concurrency, HELD) - 1, -1, -1))
        self.cancel_asked: set[int] = set()  # running calls the parent cancelled
        self.fns: dict[int, FnSlot] = {}
        self.in_sync = False  # a sync call is running: the loop is blocked
        self.stopping = False  # Shutdown received
        self.lost = False  # the channel is gone
        self._main_thread = threading.get_ident()
        # _poll(0) is truthy when bytes wait unread in the socket (see _unread_probe).
        self._poll: Callable[[int], object] = _nothing_unread
        self._fd = -1  # the channel's fd, read directly by _read_now
        self._publish = self.publish  # one bound method for every call's TaskContext
        #: Current in the server's own callbacks (set by _serve): sync calls use it in place.
        self.shared_context = TaskContext(self._publish, None)
        self._offered = 0  # size of the last receive buffer handed to the loop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Queue ``Hello`` before anything received can run (a Shutdown already waiting
        in the socket would otherwise close the channel before the handshake)."""
        super().connection_made(transport)
        self._poll = _unread_probe(transport)
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        if self.hello is not None:
            self.send(self.hello)

    def initialized(self, failure: str | None) -> None:
        """Tell the pool the worker's initializer returned (``Ready``: calls may come) or
        failed (``InitFailed(failure)``; the channel then closes and the worker exits)."""
        if self.lost:
            return
        if failure is None:
            self.send(Ready(), now=True)
        else:
            self.send(InitFailed(failure), now=True)
            self._close()

    # -- receiving
    def get_buffer(self, sizehint: int) -> memoryview:
        """Hand the loop the parser's receive buffer (remembering its size)."""
        buf = self.parser.get_buffer(sizehint)
        self._offered = len(buf)
        return buf

    def buffer_updated(self, nbytes: int) -> None:
        """Take in a whole batch of frames first (a Cancel right behind its Call counts),
        then run what is queued."""
        for msg in self.parser.buffer_updated(nbytes):
            self.message_received(msg)
        if self.queue and len(self.running) < self.limit:
            # A read that filled the buffer may have left frames in the socket.
            self._pump(check=nbytes >= self._offered)

    def message_received(self, msg: ToChild) -> None:
        """Queue calls; act on Cancel and Shutdown at once."""
        t = type(msg)
        if t is Call or t is TracedCall:
            assert isinstance(msg, Call)
            self._take(msg)
        elif t is Calls:
            assert isinstance(msg, Calls)
            for call in msg.calls:
                self._take(call)
        elif t is Cancel:
            assert isinstance(msg, Cancel)
            self.controls_read += 1
            self._cancel(msg.id, msg.queued_only)
        else:
            self.controls_read += 1
            self._shutdown()

    def _take(self, msg: Call) -> None:
        """Queue a call (numbered in arrival order: see taskpool._control)."""
        self.calls_read += 1
        self.queue.append(_Job(msg, self._slot(msg), self.calls_read))
        for fn_id in msg.drop:
            self.fns.pop(fn_id, None)

    def connection_lost(self, exc: Exception | None) -> None:
        """The parent closed the channel (or died): stop everything."""
        self.lost = True
        self.queue.clear()
        for _, task in self.running.values():
            task.cancel()
        super().connection_lost(exc)

    def _slot(self, msg: Call) -> FnSlot:
        if msg.define is not None:
            slot = FnSlot(msg.define)
            if msg.fn:
                self.fns[msg.fn] = slot
            return slot
        found = self.fns.get(msg.fn)
        if found is None:
            return FnSlot(None, WireError(f"function id {msg.fn} is unknown in this worker"))
        return found

    def _cancel(self, call_id: int, queued_only: bool = False) -> None:
        running = self.running.get(call_id)
        if running is not None:
            if not queued_only:
                self.cancel_asked.add(call_id)
                running[1].cancel()  # answered from _task_done once it has stopped
            return
        for job in self.queue:
            if job.msg.id == call_id:
                self.queue.remove(job)
                self._send_cancelled(call_id)
                # At once: should the worker die in the next call, the pool must know this
                # one never ran (see taskpool._control).
                self.flush()
                return
        # Unknown: it already finished, and its answer is on the way.

    def _shutdown(self) -> None:
        self.stopping = True
        while self.queue:
            self._send_cancelled(self.queue.popleft().msg.id, "the worker is shutting down")
        if not self.running:
            self._close()

    def _close(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.close()  # writes what is buffered, then connection_lost

    # -- running
    def _pump(self, check: bool = False) -> None:
        """Start queued calls while fewer than ``limit`` run, then write the answers.

        With ``check`` (frames may have arrived since the socket was last read), and
        after every call that blocked the loop, first make sure no frame waits unread.
        """
        self._pumping = True  # what is sent meanwhile is written at the end (see send)
        try:
            self._start_calls(check)
        finally:
            self._pumping = False
        if self.stopping and not self.running:
            self._close()
        elif len(self.writer):
            # Nothing more to start now: answer at once, not an iteration later (and not
            # after a control frame still on its way: the pool may be about to kill us).
            self.flush()

    def _start_calls(self, check: bool) -> None:
        control = self.control
        self._batch_at = time.time()
        while len(self.running) < self.limit and self.queue and not self.lost:
            if control is not None:
                # The pool sent a control frame we have not read: read it before starting.
                if control.read() > self.controls_read and (
                    not self._read_now() or control.read() > self.controls_read
                ):
                    return  # not in the socket yet (or the stream ended): the loop reads it
            elif check and self._poll(0) and not self._read_now():
                # No shared counter: ask the socket. A Cancel or Shutdown for the next call
                # may be waiting that could not be read here (the end of the stream, an
                # error): the loop's read callback handles it and pumps again.
                return
            if self.queue:
                check = self._run(self.queue.popleft())

    def send(self, msg: Message, *, now: bool = False) -> None:
        """Queue one frame: while calls are being started, written when they are (or
        before a call that must not hold it back); else as :meth:`FrameProtocol.send`."""
        if self._pumping and not now:
            self.writer.add(msg)
        else:
            super().send(msg, now=now)

    def _read_now(self) -> bool:
        """Read what waits in the socket and take in its frames, without a loop turn
        (a steady stream of calls would otherwise cost one turn per call). False when
        that cannot be done here: the loop's own read must see the end or the error."""
        buf = self.parser.get_buffer(-1)
        try:
            n = os.readv(self._fd, [buf])
        except (BlockingIOError, InterruptedError):
            return True  # nothing after all
        except OSError:
            return False
        finally:
            buf.release()
        if n == 0:
            return False
        for msg in self.parser.buffer_updated(n):
            self.message_received(msg)
        return True

    def _run(self, job: _Job) -> bool:
        """Start ``job``; True when it ran to its end here, blocking the loop (a sync
        call, or one that failed to load), False when it goes on as an asyncio task."""
        msg = job.msg
        cid = msg.id
        slot = job.slot
        # Loading the function or the arguments may run user code (an import, a
        # __setstate__) that kills the process: the parent must know the call had begun
        # first, or it would requeue it on the next worker, which would die the same way.
        fn = slot.fn
        if fn is None:
            # The function's import is the worker's, not the call's run time: Loading.
            self.send(Loading(cid, time.time()))
            self.flush()
            try:
                fn = slot.resolve()
            except BaseException as exc:
                self._send_error(cid, ERR_LOAD, exc, time.time())
                return True
        at = time.time()
        block = self.control
        sync = not slot.is_async
        if block is not None and not sync and self._free_held:
            job.held = self._free_held.pop()
            block.hold(job.held, job.number)  # before it begins: see ControlBlock.hold
        if block is not None and not msg.report:
            # Told through shared memory (the answer says when it started): no frame, and
            # no write unless output waits that this call could hold back.
            if len(self.writer) and (
                slot.runs < QUICK_RUNS
                or slot.quick > QUICK_CALL
                or at - self._batch_at > FLUSH_AGE
                or not self._journal(block)
            ):
                self.flush()
                self._batch_at = at
            block.begin(job.number, at, sync)
            started = at
        else:
            if block is not None:
                block.begin(job.number, at, sync)
            self.send(Started(cid, at))
            if msg.fmt == FMT_PICKLE or sync:
                self.flush()  # and Started must reach the parent before a sync call blocks the loop
            started = 0.0
        try:
            args = load_payload(msg.fmt, msg.data, msg.bufs)
        except BaseException as exc:
            if block is not None and sync:
                block.end()
            self._send_error(cid, ERR_LOAD, exc, time.time(), started=started)
            self._release(job)
            return True
        loop = self._loop
        assert loop is not None
        # The call's context: ``task_id`` set in place on the server's own TaskContext when
        # that is current (most calls), else a fresh one set for the call.
        ctx = current.get()
        shared = ctx is self.shared_context
        token = None if shared else current.set(TaskContext(self._publish, None, None, cid))
        if shared:
            self.shared_context.task_id = cid
        # Traced (taskpool.otel): its submit span's context is current in the call, and in
        # the task a coroutine goes on in (copied below).
        trace = attach_trace(msg.trace) if type(msg) is TracedCall else None
        try:
            self.in_sync = True
            # Not "inside" the loop while user code runs, so asyncio.run() works in it.
            events._set_running_loop(None)
            try:
                res = fn(*args)
            finally:
                events._set_running_loop(loop)
                self.in_sync = False
            if res is not None and inspect.isawaitable(res):
                if block is not None and sync:
                    if job.held < 0 and self._free_held:
                        job.held = self._free_held.pop()
                        block.hold(job.held, job.number)  # before end(): never seen ended
                    block.end()  # not a sync call after all: it goes on as a task
                # The task (and its done callback) runs in a context of its own, the call's.
                context = contextvars.copy_context()
                if shared:
                    context.run(current.set, TaskContext(self._publish, None, None, cid))
                task = loop.create_task(run_awaitable(res), context=context)
                self.running[cid] = (job, task)
                task.add_done_callback(functools.partial(self._task_done, cid, started))
                return False
        except BaseException as exc:
            end = time.time()
            if block is not None and sync:
                block.end()
            slot.timed(end - at)
            self._send_error(cid, ERR_RAISED, exc, end, started=started)
            self._release(job)
            return True
        finally:
            if token is None:
                self.shared_context.task_id = None
            else:
                current.reset(token)
            if trace is not None:
                detach_trace(trace)
        end = time.time()
        if block is not None:
            block.end()
        slot.timed(end - at)
        self._send_result(cid, res, end, started, fn)
        if job.held >= 0:  # (an async-declared function that returned a plain value)
            self._release(job)
        return True

    def _release(self, job: _Job) -> None:
        """The call's answer is queued: give back its control block slot, if it held one."""
        if job.held >= 0:
            self.control.release(job.held)  # type: ignore[union-attr]
            self._free_held.append(job.held)
            job.held = -1

    def _journal(self, block: ControlBlock) -> bool:
        """Copy the answers waiting to be written into the control block's journal, so
        they survive should the worker die in the next call; False when they do not fit
        (a large segment waits, or the journal is full): write them instead."""
        writer = self.writer
        out = writer.pending()
        if out is None:
            return False
        n, done = len(out), self._journaled
        if n > done:
            if self._jlen + n - done > JOURNAL:
                return False
            base = self._jlen - done  # where out[0] is in the journal
            self._jlen = block.append(self._jlen, out[done:n])
            self._journaled = n
            for at, size in writer.item_frames:
                if at < done:
                    # Items were added to a frame copied before: its length and count changed.
                    block.rewrite(base + at, out[at : at + size])
        return True

    def flush(self) -> None:
        """Write every queued frame now; empty the journal once they reached the socket."""
        super().flush()
        self._journaled = 0
        if self._jlen:
            t = self.transport
            # Frames still in the transport's own buffer would die with the worker.
            if t is not None and not t.get_write_buffer_size() and not self._backlog and self.control is not None:
                self.control.clear()
                self._jlen = 0

    def _task_done(self, cid: int, started: float, task: asyncio.Task[Any]) -> None:
        entry = self.running.pop(cid, None)
        if entry is None or self.lost:
            return
        at = time.time()
        asked = cid in self.cancel_asked
        self.cancel_asked.discard(cid)
        if task.cancelled():
            if asked:
                self._send_cancelled(cid)
            else:  # the call raised CancelledError by itself: that is how it failed
                try:
                    task.result()
                except asyncio.CancelledError as own:
                    self._send_error(cid, ERR_RAISED, own, at, started=started)
        else:
            exc = task.exception()
            if exc is None:
                self._send_result(cid, task.result(), at, started, entry[0].slot.fn)
            else:
                self._send_error(
                    cid, ERR_RAISED, exc.original if isinstance(exc, Escaped) else exc, at, started=started
                )
        self._release(entry[0])
        # Frames may have arrived since the loop last read (a task that never yielded
        # ends in the iteration after the one that read its Call): check before starting.
        self._pump(check=True)

    # -- answering
    def _send_result(self, cid: int, value: Any, at: float, started: float = 0.0, fn: Any = None) -> None:
        msg = result_message(cid, value, at, started, __file__, fn)
        if type(msg) is Result:
            try:
                self._answer(msg)
                return
            except BaseException as exc:  # over the size limit (nothing was queued)
                msg = unsendable_messages(cid, value, exc, at, started, __file__)
        self._send_answer(*msg)  # type: ignore[misc]

    def _answer(self, msg: Result | Error) -> None:
        """Queue an answer: with the answers before it in one frame (Answers), unless it
        has segments of its own; and copy it to the journal at once, so a kill that lands
        before it is written loses nothing. Raises SerializationError as :meth:`send`."""
        if type(msg) is Result and msg.bufs:
            self.send(msg)
            return
        self.writer.add_item(msg, ANSWERS_HEAD)
        block = self.control
        if block is not None and not self._journal(block):
            self.flush()  # too much waiting to keep in the journal: write it now
        elif not self._pumping and self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def _send_cancelled(self, cid: int, why: str = "cancelled in the worker") -> None:
        self._answer(cancelled_message(cid, why))

    def _send_error(self, cid: int, kind: int, exc: BaseException, at: float, started: float = 0.0) -> None:
        self._send_answer(*error_messages(cid, kind, exc, at, __file__, started=started))

    def _send_answer(self, msg: Error, clipped: Error) -> None:
        try:
            self._answer(msg)
        except SerializationError:  # a surrogate in the message, or over the size limit
            self._answer(clipped)

    # -- publishing
    def publish(self, topic: str, data: Any, task_id: int | None) -> None:
        """Send ``Publish(task_id, topic, data)`` to the parent; never blocks.

        Callable from the main thread (written at once even while a sync call blocks the
        loop) and from any other thread (handed to the loop, sent once it runs; dropped
        once the channel is gone). Raises SerializationError when ``data`` cannot be sent.
        """
        fmt, payload, bufs = dump_payload(data, f"the data published on {topic!r}")
        msg = Publish(task_id, topic, fmt, payload, bufs)
        if threading.get_ident() != self._main_thread:
            loop = self._loop
            if loop is None or self.lost:
                return
            try:
                loop.call_soon_threadsafe(self.send, msg)
            except RuntimeError:  # the loop is closed: the worker is exiting
                pass
            return
        self.send(msg)
        if self.in_sync:
            self.flush()  # the loop is blocked by the call: write now


def _nothing_unread(timeout: int) -> bool:
    return False


def _unread_probe(transport: asyncio.BaseTransport) -> Callable[[int], object]:
    """``probe(0)``: truthy when bytes wait unread on ``transport``'s socket (or its end:
    EOF and errors count, the loop's read handles them). One non-blocking syscall."""
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(select, "poll"):  # poll: every POSIX system we run on
        return _nothing_unread
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return poller.poll  # called straight: it is on the hot path
