"""Process workers: each worker is a fresh interpreter serving calls over a socketpair.

Parent side of the channel (the child side is :mod:`taskpool._child`, the messages
:mod:`taskpool._wire`, the frames :mod:`taskpool._frames`)::

    pool loop                                           worker process (own uvloop)
    ---------                                           --------------
    send(task): FunctionTable.prepare(fn), dump_args
       └─ Call(id, fn, args) ──► FrameProtocol ══ socketpair ══► queue ─► run fn(*args)
    _Channel.buffer_updated ◄── Loading / Started / Result / Error / Publish (batched frames)
       └─ host.task_started / task_finished (with the child's times) / worker_publish,
          then host.batch_done()
    stdout / stderr pipes ──► chunks ──► lines ──► host.worker_log (structlog + worker.log
                                        events, and the worker's file under log_dir)

Stopping work for real: ``cancel`` sends ``Cancel(id)``; an async call is cancelled in
the child. A sync call cannot be interrupted, so its worker is killed at once (and an
async call that does not stop within ``CANCEL_GRACE`` seconds too); the pool replaces
the worker. A worker that dies mid-call surfaces as ``WorkerCrashed`` with its exit code
or signal; unstarted calls it held go back to the pool's queue.

A worker is not trusted to behave: a frame or segment over ``spec.max_message_size``, an
undecodable frame or one meant for the other direction kills it (nothing is allocated
for it first), and so does silence: a worker holding calls while it runs nothing must
answer (any byte) within ``START_DEADLINE`` seconds (a watchdog ticking a few times per
deadline checks), or it is deemed frozen (a stopped process, a wedged interpreter) and
killed, its unstarted calls going back to the queue.
Output is read in chunks and split into lines by the pool, a line longer than
``_spawn.MAX_LINE`` bytes in pieces of at most that, so no byte of it is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import select
import signal
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

import anyio

from .. import _wire
from .._control import ControlCounter
from .._errors import SerializationError
from .._frames import FrameProtocol, WireError
from .._functions import FunctionTable
from .._spawn import read_lines, spawn_child
from ._base import CancelResult, Capabilities, Worker, WorkerExit, log_path

if TYPE_CHECKING:
    from .._task import Task

__all__ = ["CANCEL_GRACE", "START_DEADLINE", "START_TIMEOUT", "ProcessWorker"]

#: Seconds an async call has to stop after Cancel before its worker is killed.
CANCEL_GRACE = 1.0
#: Seconds a new worker has to answer its handshake.
START_TIMEOUT = 60.0
#: Seconds a worker asked to stop (Shutdown) has before it is terminated.
STOP_GRACE = 5.0
#: Seconds to read, after a worker died, what it wrote before dying (EOF normally comes at
#: once; a process it forked may hold the socket open, and then it never comes).
DRAIN_TIMEOUT = 1.0
#: Seconds a worker that runs nothing has to answer (any frame) once a call was handed to
#: it; silent longer, it is deemed frozen (e.g. SIGSTOPped) and killed.
START_DEADLINE = 5.0


class _Channel(FrameProtocol[_wire.ToParent]):
    """The parent's end of one worker's channel: dispatches messages to the worker."""

    def __init__(self, worker: ProcessWorker) -> None:
        super().__init__(_wire.parent_parser(max_message=worker.spec.max_message_size))
        self.worker = worker

    def buffer_updated(self, nbytes: int) -> None:
        w = self.worker
        w._heard = True  # any byte from the worker proves it alive (see _watch)
        try:
            messages = self.parser.buffer_updated(nbytes)
        except WireError as exc:
            # What came before the bad frame is sound: a Started there decides that its
            # call crashed here rather than being requeued to break the next worker too.
            for msg in exc.messages:
                w._on_message(msg)
            w._kill_for(f"channel broken: {exc}")
            if self.transport is not None:
                self.transport.abort()  # nothing after a bad frame can be trusted
            w.host.batch_done()
            return
        for msg in messages:
            w._on_message(msg)
        if messages:
            w.host.batch_done()


class ProcessWorker(Worker):
    """A worker process, spawned fresh (never forked), talking msgspec frames."""

    kind = "process"
    # Calls pipelined per worker: 8 keeps a worker busy through the round trip (see
    # docs/benchmarks.md); work stealing (reclaim) keeps a long call from holding them.
    capabilities = Capabilities(
        isolated=True,
        window=8,
        adaptive_window=True,
        reclaims_unstarted=True,
        has_pid=True,
        reports_memory=True,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._proc: asyncio.subprocess.Process | None = None
        self._channel: _Channel | None = None
        self._table = FunctionTable()
        self._calls: dict[int, Task[Any]] = {}  # sent, not yet answered
        self._returning: set[int] = set()  # cancelled only to be handed back unstarted
        self._running: set[int] = set()  # begun (loading or started), not yet answered
        self._control: ControlCounter | None = None  # control frames sent, shared with the worker
        self._async_fns: dict[int, bool] = {}  # function id (as the table holds it) -> async
        self._async_calls: set[int] = set()  # sent calls of coroutine functions (cancellable in the child)
        # Begun by loading its function (user code: it may kill the worker), not Started
        # yet: id -> when loading began. Reported as started only if it ends before Started.
        self._loading: dict[int, float] = {}
        self._hello: asyncio.Future[_wire.Hello] | None = None
        self._stopping = False
        self._retired = False
        self._killed = False  # we killed it: no call starts on it any more
        self._pid: int | None = None
        self._timers: dict[int, asyncio.TimerHandle] = {}  # call id -> its cancel deadline
        self._stop_timer: asyncio.TimerHandle | None = None
        self._ended = False  # run() returned: no timer may be started any more
        self._logfile: IO[str] | None = None
        # Liveness (START_DEADLINE): a watchdog ticking a few times per deadline, fed by
        # one flag per read, so the hot path pays no timer per call.
        self._watchdog: asyncio.TimerHandle | None = None
        self._heard = False  # bytes came from the worker since the last tick
        self._quiet_since: float | None = None  # when it was first seen silent with calls to start
        self._unsent_seen: int | None = None  # bytes still to write to it when last seen silent
        self._broken: str | None = None  # why we killed it (bad frame, frozen)

    @property
    def pid(self) -> int | None:
        return self._pid

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self, on_ready: Callable[[], None]) -> WorkerExit:
        loop = self.host.loop
        self._hello = loop.create_future()
        control = self._control = ControlCounter.create()
        try:
            proc, channel = await spawn_child(
                functools.partial(_Channel, self),
                concurrency=self.spec.concurrency,
                max_message=self.spec.max_message_size,
                control_fd=control.fd if control is not None else None,
            )
        except BaseException:
            self._end_timers()
            if control is not None:
                control.close()
            raise
        finally:
            if control is not None:
                control.close_fd()  # the worker has its own copy; the mapping stays
        self._proc, self._channel = proc, channel
        self._pid = proc.pid
        if self._killed:  # kill() came (or a bad first frame) while we were spawning
            self.kill()
        elif self._stopping:  # stop() came while we were spawning: it could not be sent then
            self._write(_wire.Shutdown())
        self._logfile = self._open_log()
        try:
            async with anyio.create_task_group() as tg:
                assert proc.stdout is not None
                assert proc.stderr is not None
                tg.start_soon(self._read_lines, proc.stdout, "stdout")
                tg.start_soon(self._read_lines, proc.stderr, "stderr")
                with anyio.fail_after(START_TIMEOUT):
                    answered = await self._handshake(channel)
                if not answered:
                    # It closed the channel first: stopped before it was up (a Shutdown
                    # sent while it started), or it could not start. Its exit says which.
                    with anyio.move_on_after(STOP_GRACE):
                        await proc.wait()
                    if proc.returncode is None:
                        self.kill()
                        await proc.wait()
                    info = self._exit_info(proc.returncode)
                    if not info.failed:
                        return info
                    return WorkerExit(
                        failed=True,
                        reason=f"{info.reason} before its handshake",
                        exitcode=info.exitcode,
                        signal=info.signal,
                    )
                on_ready()
                self._watch()  # the liveness watchdog, from now until the worker ends
                await proc.wait()
                await self._drain(channel)
                self._report_loading()
            return self._exit_info(proc.returncode)
        except TimeoutError:
            self.kill()
            with anyio.CancelScope(shield=True):
                await proc.wait()
            return WorkerExit(failed=True, reason=f"no handshake within {START_TIMEOUT} s")
        except BaseException:
            # Cancelled (the pool is closing hard) or broken: never leave the child behind.
            self.kill()
            with anyio.CancelScope(shield=True):
                await proc.wait()
            raise
        finally:
            self._end_timers()
            if channel.transport is not None:
                channel.transport.close()
            if self._logfile is not None:
                self._logfile.close()
                self._logfile = None

    def _end_timers(self) -> None:
        """``run`` is ending: cancel every timer (each would keep a closed pool's loop
        busy for seconds) and start none any more."""
        self._ended = True
        if self._control is not None:
            self._control.close()
            self._control = None
        for h in self._timers.values():
            h.cancel()
        self._timers.clear()
        if self._stop_timer is not None:
            self._stop_timer.cancel()
            self._stop_timer = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    @staticmethod
    async def _drain(channel: _Channel) -> None:
        # The process exit and the channel's last frames arrive by different routes, in
        # no set order. Read to EOF first: a Loading or Started still in the socket
        # decides whether the call it names crashed (WorkerCrashed) or never began
        # (requeued), and a Result or Publish written just before dying is not lost.
        closed = channel.closed
        if closed is not None and not closed.done():
            await asyncio.wait({closed}, timeout=DRAIN_TIMEOUT)

    def _open_log(self) -> IO[str] | None:
        """The worker's file under ``log_dir`` (appended to across restarts), if any."""
        path = log_path(self.spec.log_dir, self.spec.pool_name, self.id)
        if path is None:
            return None
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return open(path, "a", encoding="utf-8", buffering=1)  # closed by run()

    async def _handshake(self, channel: _Channel) -> bool:
        """Wait for ``Hello``; False when the channel closed first."""
        assert self._hello is not None
        assert channel.closed is not None
        waiting: set[asyncio.Future[Any]] = {self._hello, channel.closed}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        return self._hello in done

    def _exit_info(self, rc: int | None) -> WorkerExit:
        if self._retired:
            return WorkerExit(failed=False, reason="retired", exitcode=rc)
        sig = -rc if rc is not None and rc < 0 else None
        if sig is not None:
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = str(sig)
            reason, failed, rc = f"killed by {name}", not self._stopping, None
        elif rc == 0 and self._stopping:
            reason, failed = "stopped", False
        else:
            reason, failed = f"exited with code {rc}", True
        if self._broken is not None:  # we killed it for misbehaving: say why
            reason, failed = f"{self._broken} ({reason})", True
        return WorkerExit(failed=failed, reason=reason, exitcode=rc, signal=sig)

    async def _read_lines(self, stream: asyncio.StreamReader, name: str) -> None:
        host, logfile = self.host, self._logfile
        prefix = "" if name == "stdout" else "[stderr] "

        def emit(line: str) -> None:
            if logfile is not None:
                logfile.write(f"{prefix}{line}\n")
            host.worker_log(self, name, line)

        await read_lines(stream, emit)

    # --- messages from the child ---------------------------------------------------------

    def _on_message(self, msg: _wire.ToParent) -> None:
        host = self.host
        if type(msg) is _wire.Result:
            task = self._calls.pop(msg.id, None)
            if task is None:
                return
            self._answered(msg.id)
            try:
                value = _wire.load_result(msg)
            except SerializationError as exc:
                host.task_finished(self, task, False, exc, msg.at)
            else:
                host.task_finished(self, task, True, value, msg.at)
        elif type(msg) is _wire.Started:
            if msg.id in self._loading:
                del self._loading[msg.id]  # it had begun already: it runs here
                task = self._calls.get(msg.id)
            else:
                task = self._begin(msg.id)
            if task is not None:
                host.task_started(self, task, msg.at)
        elif type(msg) is _wire.Loading:
            if self._begin(msg.id) is not None:
                self._loading[msg.id] = msg.at
        elif type(msg) is _wire.Error:
            task = self._calls.pop(msg.id, None)
            if task is None:
                return
            self._answered(msg.id)
            loading = self._loading.pop(msg.id, None)
            if loading is not None:  # it failed to load: it began, and ended, there
                host.task_started(self, task, loading)
            if msg.id in self._returning and msg.kind == _wire.ERR_CANCELLED:
                self._returning.discard(msg.id)
                host.task_returned(self, task)
                return
            self._returning.discard(msg.id)
            host.task_finished(self, task, False, _wire.rebuild_exception(msg), msg.at)
        elif type(msg) is _wire.Publish:
            try:
                data = _wire.load_published(msg)
            except SerializationError as exc:  # whatever unpickling raised, even SystemExit
                data = f"<undecodable: {exc}>"
            host.worker_publish(self, msg.topic, data, msg.task_id)
        elif type(msg) is _wire.Hello and self._hello is not None and not self._hello.done():
            self._hello.set_result(msg)

    def _begin(self, call_id: int) -> Task[Any] | None:
        """Call ``call_id`` began in the worker (Loading, or Started without one): its
        task, or None when it does not run here after all."""
        task = self._calls.get(call_id)
        # Once we killed the worker, what it starts is as good as unstarted: those calls
        # go back to the queue (the kill was decided before they began).
        if task is None or self._killed:
            return None
        self._returning.discard(call_id)  # it began before Shutdown: it runs here
        self._running.add(call_id)
        if task.done() and call_id not in self._async_calls:
            # Cancelled while its start was on the way: our Cancel reaches the child only
            # after the call, which nothing can interrupt. Stop it.
            self._retire_now(f"call {call_id} was cancelled as it started")
            return None
        return task

    def _report_loading(self) -> None:
        """The worker is gone: a call it died loading had begun (it fails as crashed,
        rather than being handed to the next worker to die the same way)."""
        for call_id, at in self._loading.items():
            task = self._calls.get(call_id)
            if task is not None:
                self.host.task_started(self, task, at)
        self._loading.clear()

    def _answered(self, call_id: int) -> None:
        self._running.discard(call_id)
        self._async_calls.discard(call_id)
        h = self._timers.pop(call_id, None)
        if h is not None:
            h.cancel()

    def _say(self, line: str) -> None:
        """Report ``line`` on the worker's stderr stream (and in its log file)."""
        if self._logfile is not None:
            self._logfile.write(f"[stderr] {line}\n")
        self.host.worker_log(self, "stderr", line)

    def _kill_for(self, why: str) -> None:
        """Kill a worker that misbehaved (its running calls fail as crashed, with ``why``)."""
        if self._broken is None:
            self._broken = why
            self._say(f"taskpool: {why}; killing worker")
        self.kill()

    # --- liveness: START_DEADLINE --------------------------------------------------------

    def _watch(self) -> None:
        """Tick of the liveness watchdog (armed once the worker answered its handshake).

        A worker holding calls and running none must answer at once: silent for
        ``START_DEADLINE`` seconds, it is frozen (a stopped process, say), and is killed:
        its calls go back to the queue. A worker running a call, however long, is never
        timed here, and any byte from it proves it alive.
        """
        every = START_DEADLINE / 5
        self._watchdog = None if self._ended else self.host.loop.call_later(every, self._watch)
        if self._heard or not self._calls or self._running or self._killed:
            self._heard = False
            self._quiet_since = self._unsent_seen = None
            return
        now = self.host.loop.time()
        if self._quiet_since is None:
            self._quiet_since = now
            return
        if now - self._quiet_since < START_DEADLINE:
            return
        channel = self._channel
        if channel is not None and _readable(channel):
            self._quiet_since = None  # its frames wait unread (our loop was late): it is alive
            return
        unsent = self._unsent()
        if unsent and (self._unsent_seen is None or unsent < self._unsent_seen):
            # A call too large for the socket's buffers is still being written, and the
            # worker keeps reading it: give it another deadline.
            self._quiet_since, self._unsent_seen = now, unsent
            return
        self._kill_for(f"no answer within {START_DEADLINE} s of being handed a call while idle: frozen")

    def _unsent(self) -> int:
        """Bytes queued for the worker that it has not read yet (ours, in the transport)."""
        channel = self._channel
        if channel is None or channel.transport is None:
            return 0
        backlog = sum(v.nbytes for v in channel._backlog)
        return len(channel.writer) + channel.transport.get_write_buffer_size() + backlog

    # --- the pool's side -----------------------------------------------------------------

    def send(self, task: Task[Any]) -> None:
        channel = self._channel
        try:
            fmt, data, bufs = _wire.dump_args(task.args, _fn_name(task.fn))
            fn_id, define, drop = self._table.prepare(task.fn)
        except SerializationError as exc:
            # Not re-entrantly from inside the pool's dispatch loop: report it next turn.
            self.host.loop.call_soon(self._fail_unsent, task, exc)
            return
        if channel is None or channel.transport is None:
            self.host.loop.call_soon(self._fail_unsent, task, WireError("worker channel closed"))
            return
        self._calls[task.id] = task
        # Known now (a settled task's fn is gone), and cached per function the worker holds.
        is_async = self._async_fns.get(fn_id) if fn_id else None
        if is_async is None:
            is_async = _wire.is_async_callable(task.fn)
            if fn_id:
                self._async_fns[fn_id] = is_async
        for gone in drop:
            self._async_fns.pop(gone, None)
        if is_async:
            self._async_calls.add(task.id)
        channel.send(_wire.Call(task.id, fn_id, fmt, data, bufs, define, drop))

    def _fail_unsent(self, task: Task[Any], exc: BaseException) -> None:
        if isinstance(exc, WireError):
            self.host.task_returned(self, task)  # the worker is going away: requeue
        else:
            self.host.task_finished(self, task, False, exc, time.time())
        self.host.batch_done()

    def cancel(self, task: Task[Any]) -> CancelResult:
        if task.id not in self._calls:
            return CancelResult.STOPPING  # already answered, or never sent
        running = task.id in self._running
        if running and task.id not in self._async_calls:
            # A running sync call cannot be interrupted: the worker must go.
            return CancelResult.UNSTOPPABLE
        self._write(_wire.Cancel(task.id))
        if running and not self._ended:
            grace = CANCEL_GRACE if self.spec.cancel_grace is None else self.spec.cancel_grace
            self._timers[task.id] = self.host.loop.call_later(grace, self._cancel_overdue, task.id)
        return CancelResult.STOPPING

    def _cancel_overdue(self, call_id: int) -> None:
        self._timers.pop(call_id, None)
        if call_id in self._calls:
            self._retire_now(f"call {call_id} ignored cancellation")

    def _retire_now(self, why: str) -> None:
        """Kill the worker for work that cannot be stopped otherwise; the pool replaces
        it at once (a retirement, not a failure)."""
        self._say(f"taskpool: {why}; killing worker")
        self._retired = True
        self.kill()

    def reclaim(self, task: Task[Any]) -> bool:
        # Work stealing: ask the child to hand back an unstarted call. It answers
        # "cancelled" (we requeue it for an idle worker) or starts it anyway (it runs
        # here); either way the answer is asynchronous, so nothing moves now.
        if task.id in self._calls and task.id not in self._running and task.id not in self._returning:
            self._returning.add(task.id)
            self._write(_wire.Cancel(task.id, queued_only=True))
        return False

    def _write(self, msg: _wire.Cancel | _wire.Shutdown) -> None:
        """Send a control frame, and count it where the worker looks before each start."""
        channel = self._channel
        if channel is not None and channel.transport is not None:
            channel.send(msg)
            if self._control is not None:
                self._control.bump()

    def stop(self) -> None:
        self._stopping = True
        # The child finishes its running call and answers the queued ones as cancelled:
        # those we hand back to the pool unstarted (see _on_message).
        self._returning.update(cid for cid in self._calls if cid not in self._running)
        self._write(_wire.Shutdown())
        if self._stop_timer is None and not self._ended:
            self._stop_timer = self.host.loop.call_later(STOP_GRACE + CANCEL_GRACE, self._stop_overdue)

    def _stop_overdue(self) -> None:
        self._stop_timer = None
        proc = self._proc
        if proc is not None and proc.returncode is None and self._calls:
            return  # still finishing a call it was allowed to finish
        self.terminate()

    def terminate(self) -> None:
        """Ask the worker process to exit (SIGTERM)."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()

    def kill(self) -> None:
        self._killed = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def abandon(self) -> None:
        self._retired = True
        self.kill()

    def memory(self) -> int | None:
        pid = self._pid
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            try:
                import psutil
            except ImportError:
                return None
            try:
                return int(psutil.Process(pid).memory_info().rss)
            except Exception:
                return None


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _readable(channel: _Channel) -> bool:
    """Bytes from the worker (or its EOF) wait unread in the channel's socket."""
    t = channel.transport
    sock = t.get_extra_info("socket") if t is not None else None
    if sock is None or not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _fn_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
