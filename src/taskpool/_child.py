"""The worker process: a fresh interpreter serving calls over the framed channel.

Spawned by :mod:`taskpool._spawn` (the parent side: argv, environment, lifetime).

Serving: one event loop (uvloop when importable) runs a :class:`CallServer` on the
socket. Calls queue in arrival order and run ``concurrency`` at once (one by default),
each announced by ``Started(id, at)`` (after ``Loading(id, at)`` when its function must
be loaded first) and answered by ``Result``/``Error``. Sync functions run on the main
thread, blocking the loop (outside the loop's "running" mark, so ``asyncio.run()`` works
in them); coroutine functions run as tasks on the loop and can be cancelled (``Cancel``).
Each call runs with :data:`taskpool._context.current` set to a fresh
:class:`~taskpool._context.TaskContext` whose ``task_id`` is the call's id, so
``taskpool.publish`` in it is tagged with that id. Outgoing frames are batched into one
write per loop iteration. A ``Cancel`` or ``Shutdown`` for a queued call wins over
starting it: a frame already in the socket is read before the next call starts, even
one that arrived while a sync call blocked the loop (one non-blocking ``poll`` tells).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import functools
import inspect
import io
import os
import pickle
import platform
import select
import signal
import socket
import sys
import threading
import time
import traceback
from asyncio import events
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

from taskpool._context import TaskContext, current
from taskpool._control import ControlCounter
from taskpool._errors import SerializationError
from taskpool._frames import NO_LIMIT, FrameProtocol, FrameWriter, WireError
from taskpool._functions import FnDef, load_function
from taskpool._loop import loop_factory
from taskpool._wire import (
    ERR_CANCELLED,
    ERR_LOAD,
    ERR_RAISED,
    ERR_UNSENDABLE,
    FMT_PICKLE,
    Call,
    Cancel,
    Error,
    Hello,
    Loading,
    Publish,
    Result,
    Started,
    ToChild,
    _type_name,
    child_parser,
    dump_payload,
    dump_value,
    is_async_callable,
    load_payload,
)

__all__ = ["CallServer", "main"]

# --------------------------------------------------------------------------- the worker


class _FnSlot:
    """A function definition received once, loaded on first use (so an import error
    fails the call that needs it, and later calls the same way)."""

    __slots__ = ("define", "error", "fn", "is_async", "tb")

    def __init__(self, define: FnDef | None, error: BaseException | None = None) -> None:
        self.define = define
        self.fn: Callable[..., Any] | None = None
        self.error = error
        self.tb = None if error is None else error.__traceback__
        self.is_async = False

    def resolve(self) -> Callable[..., Any]:
        if self.fn is not None:
            return self.fn
        if self.error is None:
            assert self.define is not None
            try:
                self.fn = load_function(self.define)
                self.is_async = is_async_callable(self.fn)
                self.define = None
                return self.fn
            except BaseException as exc:
                self.error, self.tb = exc, exc.__traceback__
        # Each raise adds a frame to __traceback__: start from the original every time.
        raise self.error.with_traceback(self.tb)


class _Job:
    __slots__ = ("msg", "slot")

    def __init__(self, msg: Call, slot: _FnSlot) -> None:
        self.msg = msg
        self.slot = slot


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
        control: ControlCounter | None = None,
    ) -> None:
        super().__init__(child_parser())
        self.writer = FrameWriter(max_message=max_message)
        # The pool's count of control frames (Cancel, Shutdown) sent, and ours of those read:
        # while the pool is ahead, a control frame for a queued call waits in the socket.
        self.control = control
        self.controls_read = 0
        self.hello = hello  # the first frame, queued as soon as the channel is up
        self.queue: deque[_Job] = deque()
        # Async calls running at once (at most ``concurrency``): id -> (job, task). A sync
        # call runs to its end inside _run, blocking the loop, so it never stays here.
        self.limit = concurrency
        self.running: dict[int, tuple[_Job, asyncio.Task[Any]]] = {}
        self.cancel_asked: set[int] = set()  # running calls the parent cancelled
        self.fns: dict[int, _FnSlot] = {}
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
        if t is Call:
            assert isinstance(msg, Call)
            self.queue.append(_Job(msg, self._slot(msg)))
            for fn_id in msg.drop:
                self.fns.pop(fn_id, None)
        elif t is Cancel:
            assert isinstance(msg, Cancel)
            self.controls_read += 1
            self._cancel(msg.id, msg.queued_only)
        else:
            self.controls_read += 1
            self._shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        """The parent closed the channel (or died): stop everything."""
        self.lost = True
        self.queue.clear()
        for _, task in self.running.values():
            task.cancel()
        super().connection_lost(exc)

    def _slot(self, msg: Call) -> _FnSlot:
        if msg.define is not None:
            slot = _FnSlot(msg.define)
            if msg.fn:
                self.fns[msg.fn] = slot
            return slot
        found = self.fns.get(msg.fn)
        if found is None:
            return _FnSlot(None, WireError(f"function id {msg.fn} is unknown in this worker"))
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
        """Start queued calls while fewer than ``limit`` run.

        With ``check`` (frames may have arrived since the socket was last read), and
        after every call that blocked the loop, first make sure no frame waits unread.
        """
        control = self.control
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
        if self.stopping and not self.running:
            self._close()

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
        self.send(Started(cid, time.time()))
        if msg.fmt == FMT_PICKLE or not slot.is_async:
            self.flush()  # and Started must reach the parent before a sync call blocks the loop
        try:
            args = load_payload(msg.fmt, msg.data, msg.bufs)
        except BaseException as exc:
            self._send_error(cid, ERR_LOAD, exc, time.time())
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
        try:
            self.in_sync = True
            # Not "inside" the loop while user code runs, so asyncio.run() works in it.
            events._set_running_loop(None)
            try:
                res = fn(*args)
            finally:
                events._set_running_loop(loop)
                self.in_sync = False
            if inspect.isawaitable(res):
                # The task (and its done callback) runs in a context of its own, the call's.
                context = contextvars.copy_context()
                if shared:
                    context.run(current.set, TaskContext(self._publish, None, None, cid))
                task = loop.create_task(_await(res), context=context)
                self.running[cid] = (job, task)
                task.add_done_callback(functools.partial(self._task_done, cid))
                return False
        except BaseException as exc:
            self._send_error(cid, ERR_RAISED, exc, time.time())
            return True
        finally:
            if token is None:
                self.shared_context.task_id = None
            else:
                current.reset(token)
        self._send_result(cid, res, time.time())
        return True

    def _task_done(self, cid: int, task: asyncio.Task[Any]) -> None:
        if self.running.pop(cid, None) is None or self.lost:
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
                    self._send_error(cid, ERR_RAISED, own, at)
        else:
            exc = task.exception()
            if exc is None:
                self._send_result(cid, task.result(), at)
            else:
                self._send_error(cid, ERR_RAISED, exc.original if isinstance(exc, _Escaped) else exc, at)
        # Frames may have arrived since the loop last read (a task that never yielded
        # ends in the iteration after the one that read its Call): check before starting.
        self._pump(check=True)

    # -- answering
    def _send_result(self, cid: int, value: Any, at: float) -> None:
        try:
            fmt, data, bufs = dump_value(value)
            self.send(Result(cid, fmt, data, bufs, at))
        except BaseException as exc:
            err = SerializationError(
                f"the result ({_type_name(value)}) cannot be sent back from the worker: {_describe(exc)}"
            )
            # The parent rebuilds ``exc`` as the SerializationError's __cause__.
            self._send_error(cid, ERR_UNSENDABLE, err, at, cause=exc)

    def _send_cancelled(self, cid: int, why: str = "cancelled in the worker") -> None:
        self.send(Error(cid, ERR_CANCELLED, "asyncio.exceptions", "CancelledError", why, "", None, time.time()))

    def _send_error(
        self, cid: int, kind: int, exc: BaseException, at: float, cause: BaseException | None = None
    ) -> None:
        """Answer ``cid`` with ``exc``; with ``cause`` (``ERR_UNSENDABLE``), the traceback
        and pickle are the cause's (the exception the parent rebuilds as ``__cause__``)."""
        shown = cause if cause is not None else exc
        tb = _format_exception(shown)
        try:
            message = str(exc)
        except BaseException:  # user code: whatever it raises must not lose the answer
            message = f"<unprintable {type(exc).__name__}>"
        pickled = _pickle_exception(shown) if kind != ERR_CANCELLED else None
        t = type(exc)
        msg = Error(cid, kind, t.__module__, t.__qualname__, message, tb, pickled, at)
        try:
            self.send(msg)
        except SerializationError:  # a surrogate in the message, or over the size limit
            # ascii(): one byte per character, so the clipped texts surely fit.
            clipped = Error(cid, kind, t.__module__, t.__qualname__, _clip(ascii(message)), _clip(ascii(tb)), None, at)
            self.send(clipped)

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


class _Escaped(Exception):
    """A task's own SystemExit/KeyboardInterrupt, carried out of its asyncio task (asyncio
    would re-raise those out of the event loop and take the worker down)."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


async def _await(awaitable: Awaitable[Any]) -> Any:
    try:
        return await awaitable
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _Escaped(exc) from None


def _format_exception(exc: BaseException) -> str:
    """The traceback text, without this module's own frames at the top."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    try:
        return "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException:  # a __str__ raising anything
        return f"{type(exc).__name__} (traceback unavailable)\n"


def _clip(text: str, keep: int = 8192) -> str:
    """``text``, its middle cut out when longer than ``keep`` characters (an error must
    fit the smallest max_message_size, 64 KiB)."""
    if len(text) <= keep:
        return text
    return f"{text[: keep // 2]}\n[... {len(text) - keep} characters cut ...]\n{text[-keep // 2 :]}"


def _describe(exc: BaseException) -> str:
    """``"Type: message"``, even for an exception whose ``__str__`` raises."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except BaseException:
        return f"{type(exc).__name__}: <unprintable>"


def _pickle_exception(exc: BaseException) -> bytes | None:
    """``exc`` pickled (cloudpickle when pickle refuses), or None. A ``__reduce__`` may
    raise anything, even SystemExit: that only means "not picklable"."""
    with contextlib.suppress(BaseException):
        return pickle.dumps(exc, 5)
    try:
        import cloudpickle  # only for exceptions pickle refuses

        return cloudpickle.dumps(exc, 5)  # type: ignore[no-any-return]
    except BaseException:
        return None


# --------------------------------------------------------------------------- entry point


def _die_with_parent(ppid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes  # Linux only

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if ppid and os.getppid() != ppid:
        os._exit(1)  # the parent died before we could ask to die with it


async def _serve(
    sock: socket.socket,
    uses_uvloop: bool,
    concurrency: int = 1,
    max_message: int = NO_LIMIT,
    control: ControlCounter | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    hello = Hello(os.getpid(), platform.python_version(), uses_uvloop)
    server = CallServer(concurrency, hello, max_message=max_message, control=control)
    current.set(server.shared_context)  # the transport's callbacks copy this context
    await loop.connect_accepted_socket(lambda: server, sock)
    assert server.closed is not None
    await server.closed
    return 0


_CLEANUP_GRACE = 2.0  # seconds for leftover tasks to handle their cancellation


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:  # bounded: a task that ignores cancellation must not keep us alive
        loop.run_until_complete(asyncio.wait(tasks, timeout=_CLEANUP_GRACE))
    loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), _CLEANUP_GRACE))


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Serve one channel, then exit (never returns). See the module docstring."""
    parser = argparse.ArgumentParser(prog="taskpool-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--ppid", type=int, default=0)
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--max-message", type=int, default=NO_LIMIT)
    parser.add_argument("--control-fd", type=int, default=None)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    _die_with_parent(args.ppid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    factory, uses_uvloop = loop_factory(args.loop)
    sock = socket.socket(fileno=args.fd)
    loop = factory()
    asyncio.set_event_loop(loop)
    code = 1
    try:
        # The pool's options allow no limit under 64 KiB; an error report needs that much.
        limit = max(2**16, args.max_message)
        control = None
        if args.control_fd is not None:
            control = ControlCounter(args.control_fd)
            control.close_fd()  # the mapping is what we read
        code = loop.run_until_complete(_serve(sock, uses_uvloop, max(1, args.concurrency), limit, control))
        _cancel_leftovers(loop)
    finally:
        _exit(code)


def _exit(code: int) -> NoReturn:
    # Exit without waiting for threads a task may have left running (the parent is
    # gone or wants us gone), but still run atexit hooks and flush what was printed.
    import atexit

    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            if stream is not None:
                stream.flush()
    os._exit(code)
