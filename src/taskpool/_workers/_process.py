"""Process workers: each worker is a fresh interpreter serving calls over a socketpair.

Parent side of the channel (the child side is :mod:`taskpool._child`, the messages
:mod:`taskpool._wire`, the frames :mod:`taskpool._frames`)::

    pool loop                                           worker process (own uvloop)
    ---------                                           --------------
    send(task): FunctionTable.prepare(fn), dump_args
       └─ Call(id, fn, args, report): to an idle worker at once; to a busy one in a
          Calls frame per loop iteration ══ socketpair ══► queue ─► run fn(*args)
    control block (shared memory) ◄────── call N began at t; answers not written yet
    Channel.buffer_updated ◄── Answers / Loading / Started / Publish (one write a burst)
       └─ host.batch_begin(); task_finished (with the child's times, the start told
          late) / task_started / worker_publish; host.batch_done(): more work, and the
          awaiters resumed
    (the book of the calls sent, their numbers and starts: taskpool._workers._calls)
    stdout / stderr pipes ──► chunks ──► lines ──► host.worker_log (the logger and/or
                                        worker.log events), and the file under log_dir
                         (worker_output="inherit": chunks ──► our sys.stdout / sys.stderr)

Starting: the worker is spawned with its setup (:mod:`taskpool._init`: the pool's
multiprocessing authentication key; the initializer and ``initargs``, pickled now, in a
spawning context, with the fds they need inherited). It must answer ``Hello`` within
``START_TIMEOUT``; with an initializer it is ready only at ``Ready``, however long that
takes, and ``InitFailed`` (or dying first) ends ``run`` with a reason that starts with
``INIT_FAILED``, ``on_ready`` never called.

Stopping work for real: ``cancel`` sends ``Cancel(id)``; an async call is cancelled in
the child. A sync call cannot be interrupted, so its worker is killed at once (an async
call that does not stop within ``CANCEL_GRACE`` too), never one begun after the decision
(see ``_fence``). A worker dying mid-call gives ``WorkerCrashed``; unstarted calls it
held go back to the pool's queue.

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
import signal
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

import anyio

from .. import _wire
from .._control import ControlBlock
from .._errors import SerializationError
from .._frames import WireError
from .._functions import FunctionTable
from .._init import write_setup
from .._spawn import read_lines, spawn_child
from ._base import INIT_FAILED, CancelResult, Capabilities, WorkerExit, log_path
from ._calls import START_DEADLINE, START_POLL, Channel, ProcessCalls, readable
from ._output import pass_through

if TYPE_CHECKING:
    from .._task import Task

__all__ = ["ANSWER_WAIT", "CANCEL_GRACE", "START_DEADLINE", "START_POLL", "START_TIMEOUT", "ProcessWorker"]

#: Seconds an async call has to stop after Cancel before its worker is killed.
CANCEL_GRACE = 1.0
#: Seconds at most that the pool waits, reading, for the answer of a cancelled call that
#: has ended (the control block says so), past its CANCEL_GRACE. Such an answer is late
#: only when the pool's loop fell behind reading: killing the worker then would fail the
#: call running after it, which nobody cancelled. With nothing left to read and nothing
#: read for a grace, the channel is broken and the worker is killed at once.
ANSWER_WAIT = 30.0
#: Seconds a new worker has to answer its handshake.
START_TIMEOUT = 60.0
#: Seconds a worker asked to stop (Shutdown) has before it is terminated.
STOP_GRACE = 5.0
#: Seconds to read, after a worker died, what it wrote before dying (EOF normally comes at
#: once; a process it forked may hold the socket open, and then it never comes).
DRAIN_TIMEOUT = 1.0


class ProcessWorker(ProcessCalls):
    """A worker process, spawned fresh (never forked), talking msgspec frames."""

    kind = "process"
    # Calls pipelined per worker: 128 while calls are short (the window shrinks to one
    # under long calls: adaptive), so a batch of answers shares one write and one read;
    # work stealing (reclaim) keeps a long call from holding queued ones.
    capabilities = Capabilities(
        isolated=True,
        window=128,
        adaptive_window=True,
        reclaims_unstarted=True,
        has_pid=True,
        reports_memory=True,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._proc: asyncio.subprocess.Process | None = None
        self._table = FunctionTable()
        self._async_fns: dict[int, bool] = {}  # function id (as the table holds it) -> async
        self._hello: asyncio.Future[_wire.Hello] | None = None
        # With an initializer: None once it returned (Ready), else why it failed.
        self._init: asyncio.Future[str | None] | None = None
        self._stopping = False
        self._retired = False
        self._pid: int | None = None
        self._stop_timer: asyncio.TimerHandle | None = None
        self._logfile: IO[str] | None = None
        self._broken: str | None = None  # why we killed it (bad frame, frozen)

    @property
    def pid(self) -> int | None:
        return self._pid

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self, on_ready: Callable[[], None]) -> WorkerExit:
        loop = self.host.loop
        self._hello = loop.create_future()
        spec = self.spec
        try:
            # At spawn time: the initializer's arguments may hold multiprocessing objects
            # that only a process being spawned can receive (see taskpool._init).
            setup = write_setup(spec.initializer, spec.initargs, spec.init_logger)
        except BaseException as exc:
            self._end_timers()
            if isinstance(exc, SerializationError):
                return WorkerExit(failed=True, reason=f"{INIT_FAILED}: SerializationError: {exc}")
            raise
        if spec.initializer is not None:
            self._init = loop.create_future()
        control = self._control = ControlBlock.create()
        try:
            proc, channel = await spawn_child(
                functools.partial(Channel, self),
                concurrency=spec.concurrency,
                max_message=spec.max_message_size,
                control_fd=control.fd if control is not None else None,
                setup_fd=setup.fd,
                pass_fds=setup.fds,
            )
        except BaseException:
            self._end_timers()
            if control is not None:
                control.close()
            raise
        finally:
            setup.close()
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
                    answered = await self._handshake(channel, self._hello)
                failure = None
                if answered and self._init is not None:
                    # Its initializer runs now, with no deadline (it may load a model
                    # for minutes); the worker is not ready before it returned.
                    answered = await self._handshake(channel, self._init)
                    failure = self._init.result() if answered else None
                if not answered or failure is not None:
                    return await self._unready(proc, failure, initializing=self._hello.done())
                on_ready()
                self._watch()  # the liveness watchdog, from now until the worker ends
                await proc.wait()
                await self._drain(channel)
                self._read_journal()
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
        if self._start_poll is not None:
            self._start_poll.cancel()
            self._start_poll = None
        if self._batch_handle is not None:
            self._batch_handle.cancel()
            self._batch_handle = None

    @staticmethod
    async def _drain(channel: Channel) -> None:
        # The exit and the channel's last frames come in no set order. Read to EOF first:
        # a Loading or Started in the socket decides whether its call crashed or never
        # began (requeued); a Result or Publish written just before dying is not lost.
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

    @staticmethod
    async def _handshake(channel: Channel, answer: asyncio.Future[Any]) -> bool:
        """Wait for ``answer`` (``Hello``, then ``Ready`` or ``InitFailed``); False when
        the channel closed first."""
        assert channel.closed is not None
        waiting: set[asyncio.Future[Any]] = {answer, channel.closed}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        return answer in done

    async def _unready(self, proc: asyncio.subprocess.Process, failure: str | None, initializing: bool) -> WorkerExit:
        """The worker ends before it was ready: its initializer raised ``failure``, or it
        closed the channel first (stopped while it started, could not start, or died in
        its initializer). Wait for its exit (killed after STOP_GRACE: a multiprocessing
        queue's feeder may block it) and say why."""
        with anyio.move_on_after(STOP_GRACE):
            await proc.wait()
        if proc.returncode is None:
            self.kill()
            await proc.wait()
        info = self._exit_info(proc.returncode)
        if failure is not None:
            reason = f"{INIT_FAILED}: {failure}"
        elif not info.failed:
            return info
        elif initializing and not self._killed:  # it died in its initializer
            reason = f"{INIT_FAILED}: worker {info.reason}"
        else:
            reason = f"{info.reason} {'while initializing' if initializing else 'before its handshake'}"
        return WorkerExit(failed=True, reason=reason, exitcode=info.exitcode, signal=info.signal)

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

        if self.spec.worker_output == "inherit":
            await pass_through(stream, name, logfile, prefix)
        else:
            await read_lines(stream, emit)

    # --- messages from the child ---------------------------------------------------------

    def _on_message(self, msg: _wire.ToParent) -> None:
        host = self.host
        if type(msg) is _wire.Answers:
            for item in msg.items:
                self._on_message(item)
        elif type(msg) is _wire.Result:
            task = self._calls.pop(msg.id, None)
            if task is None:
                return
            self._answered(msg.id)
            started = msg.started  # set when its start was not reported (see taskpool._control)
            if started and self._loading:
                self._loading.pop(msg.id, None)
            try:
                value = _wire.load_result(msg)
            except SerializationError as exc:
                host.task_finished(self, task, False, exc, msg.at, started)
            else:
                host.task_finished(self, task, True, value, msg.at, started)
        elif type(msg) is _wire.Started:
            if msg.id in self._loading:
                del self._loading[msg.id]  # it had begun already: it runs here
                task = self._calls.get(msg.id)
            else:
                task = self._begin(msg.id)
            if task is not None:
                host.task_started(self, task, msg.at)
        elif type(msg) is _wire.Loading:
            if self._begin(msg.id, loading=True) is not None:
                self._loading[msg.id] = msg.at
        elif type(msg) is _wire.Error:
            task = self._calls.pop(msg.id, None)
            if task is None:
                return
            self._answered(msg.id)
            loading = self._loading.pop(msg.id, None)
            if not msg.started and loading is not None:  # it failed to load: began, and ended, there
                host.task_started(self, task, loading)
            if msg.id in self._returning and msg.kind == _wire.ERR_CANCELLED:
                self._returning.discard(msg.id)
                host.task_returned(self, task)
                return
            self._returning.discard(msg.id)
            host.task_finished(self, task, False, _wire.rebuild_exception(msg), msg.at, msg.started)
        elif type(msg) is _wire.Publish:
            try:
                data = _wire.load_published(msg)
            except SerializationError as exc:  # whatever unpickling raised, even SystemExit
                data = f"<undecodable: {exc}>"
            host.worker_publish(self, msg.topic, data, msg.task_id)
        elif type(msg) is _wire.Hello and self._hello is not None and not self._hello.done():
            self._hello.set_result(msg)
        elif (type(msg) is _wire.Ready or type(msg) is _wire.InitFailed) and self._init and not self._init.done():
            self._init.set_result(msg.reason if isinstance(msg, _wire.InitFailed) else None)

    def _begin(self, call_id: int, loading: bool = False) -> Task[Any] | None:
        """Call ``call_id`` began in the worker (``loading`` its function, or Started
        without Loading): its task, or None when it does not run here after all."""
        task = self._calls.get(call_id)
        # Once we killed the worker, what it starts is as good as unstarted: those calls
        # go back to the queue (the kill was decided before they began).
        if task is None or self._killed:
            return None
        self._returning.discard(call_id)  # it began before Shutdown: it runs here
        self._running.add(call_id)
        if task.done() and call_id not in self._async_calls:
            # Cancelled while its start was on the way: our Cancel reaches the child only
            # after the call, which nothing can interrupt. Stop it, unless the block says
            # it returned (the pool's loop may have been held up meanwhile).
            block = self._control
            if block is not None:
                self._fence(call_id)
                number = self._numbers.get(call_id, 0)
                begun, _, now = block.begun()
                if now != number and not (loading and begun < number):
                    return None  # returned (a call still loading has not begun in the block)
            self._retire_now(f"call {call_id} was cancelled as it started")
            return None
        return task

    def _say(self, line: str) -> None:
        """Report ``line`` on the worker's stderr stream (and in its log file)."""
        if self._logfile is not None:
            self._logfile.write(f"[stderr] {line}\n")
        self.host.worker_log(self, "stderr", line)  # (with "inherit": to our stderr)

    def _kill_for(self, why: str) -> None:
        """Kill a worker that misbehaved (its running calls fail as crashed, with ``why``)."""
        if self._broken is None:
            self._broken = why
            self._say(f"taskpool: {why}; killing worker")
        self.kill()

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
        report = self._control is None or self.host.start_wanted(task)
        call = _wire.Call(task.id, fn_id, fmt, data, bufs, define, drop, report)
        if (carrier := task._trace) is not None:  # traced (taskpool.otel): built instead, never both
            call = _wire.TracedCall(task.id, fn_id, fmt, data, bufs, define, drop, report, carrier)
        if bufs or not self._calls:
            # An idle worker gets it at once (latency); one with out-of-band segments
            # travels in a frame of its own, after the calls sent before it.
            self._put_batch()
            try:
                channel.send(call, now=not self._calls)
            except SerializationError as exc:  # over max_message_size
                self.host.loop.call_soon(self._fail_unsent, task, exc)
                return
            self._number(task.id)
        else:
            # To a busy worker, more calls are likely this loop iteration: one frame for
            # all of them, written at its end.
            self._batch.append((task, call))
            if self._batch_handle is None:
                self._batch_handle = self.host.loop.call_soon(self._send_batch)
        # Known now (a settled task's fn is gone), and cached per function the worker holds.
        is_async = self._async_fns.get(fn_id) if fn_id else None
        if is_async is None:
            is_async = _wire.is_async_callable(task.fn)
            if fn_id:
                self._async_fns[fn_id] = is_async
        for gone in drop:
            self._async_fns.pop(gone, None)
        self._sent_call(task, is_async)

    def cancel(self, task: Task[Any]) -> CancelResult:
        call_id = task.id
        if call_id not in self._calls:
            return CancelResult.STOPPING  # already answered, or never sent
        self._put_batch()  # numbered from here on, and its Cancel follows its Call
        sync = call_id not in self._async_calls
        running = call_id in self._running
        began = running
        block = self._control
        if not running and block is not None and call_id not in self._loading:
            # Its start may not have been reported: the control block tells.
            begun, _, now = block.begun()
            n = self._numbers.get(call_id, 0)
            began = n <= begun
            running = began and (not sync or now == n)
            if began and not running:
                return CancelResult.STOPPING  # it has returned: its answer is on the way
        self._fence(call_id)  # (the Cancel), before looking again below
        if running and sync and (block is None or not block.returned(self._numbers.get(call_id, 0))):
            return CancelResult.UNSTOPPABLE  # a running sync call cannot be interrupted: the worker must go
        # (Else it returned: a kill would hit the call running next. See _cancel_overdue.)
        if not self._ended and (began or (sync and block is not None)):
            # Running: it has CANCEL_GRACE to stop. Not begun: the worker may start it
            # before it reads the Cancel; then, still running after the grace, it is stopped.
            grace = CANCEL_GRACE if self.spec.cancel_grace is None else self.spec.cancel_grace
            seen = -1 if self._channel is None else self._channel.received
            self._timers[call_id] = self.host.loop.call_later(grace, self._cancel_overdue, call_id, grace, 0.0, seen)
        return CancelResult.STOPPING

    def _cancel_overdue(self, call_id: int, grace: float, waited: float = 0.0, seen: int = -1) -> None:
        self._timers.pop(call_id, None)
        if call_id not in self._calls:
            return
        block = self._control
        if block is not None:
            self._fence(call_id)  # before looking
        number = self._numbers.get(call_id, 0)
        channel = self._channel
        if block is not None and block.ended(number) and channel is not None:
            # It stopped (or returned). Its answer is on the way while the pool is behind:
            # bytes wait unread, some were read since the last look, or answers wait in
            # the journal. Killing the worker now would fail the call it runs next.
            behind = channel.received != seen or readable(channel) or block.journaled()
            waited += grace
            if behind and waited < ANSWER_WAIT:
                self._timers[call_id] = self.host.loop.call_later(
                    grace, self._cancel_overdue, call_id, grace, waited, channel.received
                )
            else:
                self._retire_now(f"the answer to call {call_id} never came (a broken channel)")
            return
        if call_id in self._async_calls or call_id in self._running or block is None:
            self._retire_now(f"call {call_id} ignored cancellation")
            return
        begun, _, now = block.begun()
        if now == number:
            self._retire_now(f"call {call_id} was cancelled as it started")
        elif not self._ended and number > begun:
            # Still waiting behind a long call: look again later.
            self._timers[call_id] = self.host.loop.call_later(grace, self._cancel_overdue, call_id, grace)

    def _fence(self, call_id: int) -> None:
        """Send ``Cancel(call_id)`` (again) before reading the block to decide on a kill:
        counted at once, written at the end of this iteration, and the worker begins no
        call until it read it. So a kill decided now never lands on a call begun since the
        look (the worker ends a call in the block, then reads the count)."""
        self._write(_wire.Cancel(call_id))

    def _retire_now(self, why: str) -> None:
        """Kill the worker for work that cannot be stopped otherwise; the pool replaces
        it at once (a retirement, not a failure)."""
        self._say(f"taskpool: {why}; killing worker")
        self._retired = True
        self.kill()

    def reclaim(self, task: Task[Any]) -> bool:
        # Work stealing: ask the child to hand back an unstarted call. It answers
        # "cancelled" (requeued for an idle worker) or starts it anyway (it runs here).
        if task.id in self._calls and task.id not in self._running and task.id not in self._returning:
            self._returning.add(task.id)
            self._write(_wire.Cancel(task.id, queued_only=True))
        return False

    def _write(self, msg: _wire.Cancel | _wire.Shutdown) -> None:
        """Send a control frame, and count it where the worker looks before each start."""
        channel = self._channel
        if channel is not None and channel.transport is not None:
            self._put_batch()  # after the calls it may be about
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
        if not self._killed and self._control is not None:
            self._killed_after = self._control.begun()[0]
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


def _fn_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
