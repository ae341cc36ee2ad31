"""The calls a worker process was sent, and what its pool knows of their progress.

:class:`ProcessCalls` is the bookkeeping half of :class:`~taskpool._workers._process.ProcessWorker`
(which adds the process, the channel and the decisions):

- **Numbers.** Calls are numbered 1, 2, ... in the order they were sent; the worker counts
  them the same way as they arrive and starts them in that order. The
  :class:`~taskpool._control.ControlBlock` shared with it says the number of the last call
  begun (and the sync call running now), so every call numbered up to it has begun.
- **Starts told late.** A call whose start was not asked to be reported (no start
  callback, timeout, ``task.started`` subscriber or ``max_queue``) is reported started
  when its answer comes (the answer carries its start time), when status is read
  (:meth:`sync_starts`), when a start callback is added after it was sent (the block is
  watched every :data:`START_POLL` seconds until it begins), or when the worker dies (it
  then fails as crashed rather than being handed to the next worker).
- **Answers lost with the worker.** What the worker had not written yet is read from the
  block's journal once it is dead: a call that returned is never lost nor run again.
- **Liveness.** A worker holding calls and running none must answer within
  :data:`START_DEADLINE` seconds (see :meth:`_watch`).

:class:`Channel` is the parent's end of the worker's socket: it hands each message to
the worker (``_on_message``), and reads what a dying worker wrote before it died.
"""

from __future__ import annotations

import abc
import asyncio
import os
import select
import time
from typing import TYPE_CHECKING, Any

from .. import _wire
from .._channel import FrameProtocol
from .._control import ControlBlock
from .._errors import SerializationError
from .._frames import WireError
from ._base import Worker

if TYPE_CHECKING:
    from .._task import Task

__all__ = ["START_DEADLINE", "START_POLL", "Channel", "ProcessCalls", "readable"]

#: Seconds a worker that runs nothing has to answer (any frame) once a call was handed to
#: it; silent longer, it is deemed frozen (e.g. SIGSTOPped) and killed.
START_DEADLINE = 5.0
#: Seconds between looks at the control block for the start of a call that was given a
#: start callback after it was sent without asking for its start to be reported.
START_POLL = 0.001


class ProcessCalls(Worker):
    """Calls sent to one worker process, their numbers, starts, answers and liveness."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel: Channel | None = None
        self._calls: dict[int, Task[Any]] = {}  # sent, not yet answered (in the order sent)
        self._returning: set[int] = set()  # cancelled only to be handed back unstarted
        self._running: set[int] = set()  # begun (loading or started), not yet answered
        self._async_calls: set[int] = set()  # sent calls of coroutine functions (cancellable in the child)
        # Begun by loading its function (user code: it may kill the worker), not Started
        # yet: id -> when loading began. Reported as started only if it ends before Started.
        self._loading: dict[int, float] = {}
        self._control: ControlBlock | None = None  # shared with the worker: see taskpool._control
        self._sent = 0  # Call frames sent: each call's number, as the worker counts them
        self._numbers: dict[int, int] = {}  # sent call id -> its number
        self._killed = False  # we killed it: no call starts on it any more
        self._killed_after = 0  # the last call the worker had begun when we killed it
        self._from_journal = 0  # answers read from the journal (the worker died before writing them)
        self._start_watch: set[int] = set()  # calls given a start callback after they were sent
        self._start_poll: asyncio.TimerHandle | None = None
        self._ended = False  # run() returned: no timer may be started any more
        self._timers: dict[int, asyncio.TimerHandle] = {}  # call id -> its cancel deadline
        self._batch: list[tuple[Task[Any], _wire.Call]] = []  # calls to send in one frame
        self._batch_handle: asyncio.Handle | None = None
        # Liveness (START_DEADLINE): a watchdog ticking a few times per deadline, fed by
        # one flag per read, so the hot path pays no timer per call.
        self._watchdog: asyncio.TimerHandle | None = None
        self._heard = False  # bytes came from the worker since the last tick
        self._quiet_since: float | None = None  # when it was first seen silent with calls to start
        self._unsent_seen: int | None = None  # bytes still to write to it when last seen silent

    @abc.abstractmethod
    def _on_message(self, msg: _wire.ToParent) -> None:
        """Act on one message from the worker."""

    @abc.abstractmethod
    def _kill_for(self, why: str) -> None:
        """Kill a worker that misbehaved, saying ``why``."""

    def _sent_call(self, task: Task[Any], is_async: bool) -> None:
        """``task`` was handed to the worker (its Call is queued to be written)."""
        self._calls[task.id] = task
        if is_async:
            self._async_calls.add(task.id)

    def _send_batch(self) -> None:
        self._batch_handle = None
        self._put_batch()
        channel = self._channel
        if channel is not None:
            channel.flush()

    def _put_batch(self) -> None:
        """Queue the batched calls as one frame (before any frame sent after them)."""
        batch = self._batch
        if not batch:
            return
        self._batch = []
        channel = self._channel
        if channel is None or channel.transport is None:
            return  # the worker is gone: its calls go back to the queue with it
        try:
            channel.writer.add(_wire.Calls([call for _, call in batch]) if len(batch) > 1 else batch[0][1])
            for task, _ in batch:
                self._number(task.id)
        except SerializationError:
            # Too large as one frame (each call is under the limit): one frame each.
            for task, call in batch:
                try:
                    channel.writer.add(call)
                except SerializationError as exc:  # never sent: answer it here
                    self._calls.pop(task.id, None)
                    self._answered(task.id)
                    self.host.loop.call_soon(self._fail_unsent, task, exc)
                else:
                    self._number(task.id)
        if channel._flush_handle is None:
            channel._flush_handle = self.host.loop.call_soon(channel.flush)

    def _fail_unsent(self, task: Task[Any], exc: BaseException) -> None:
        if isinstance(exc, WireError):
            self.host.task_returned(self, task)  # the worker is going away: requeue
        else:
            self.host.task_finished(self, task, False, exc, time.time())
        self.host.batch_done()

    def _number(self, call_id: int) -> None:
        """Call ``call_id``'s frame was written to the channel's writer: number it (the
        worker numbers calls in the order their frames arrive)."""
        self._sent += 1
        self._numbers[call_id] = self._sent

    def _read_journal(self) -> None:
        """The worker is gone: take in the answers it had not written yet (kept in the
        control block's journal; see taskpool._control). One already read is ignored."""
        block = self._control
        if block is None or not self._calls:
            return
        data = block.journal()
        if not data:
            return
        parser = _wire.parent_parser(max_message=self.spec.max_message_size)
        try:
            messages = parser.feed(data)
        except WireError as exc:
            messages = exc.messages
        answers: list[_wire.Result | _wire.Error] = []
        for msg in messages:
            if type(msg) is _wire.Answers:
                answers.extend(msg.items)
            elif type(msg) is _wire.Result or type(msg) is _wire.Error:
                answers.append(msg)
        for answer in answers:
            if answer.id in self._calls:
                self._from_journal += 1
            self._on_message(answer)
        self.host.batch_done()

    def _report_loading(self) -> None:
        """The worker is gone: the calls it had begun fail as crashed, rather than being
        handed to the next worker to die the same way; the others go back to the queue.

        Begun: a call it reported loading, and every call up to the last one it marked
        begun in the control block (it starts them in the order they were sent; an
        earlier call's answer may have been lost with the worker). Once we had killed
        it, only those begun before the kill count.
        """
        for call_id, at in self._loading.items():
            task = self._calls.get(call_id)
            if task is not None:
                self.host.task_started(self, task, at)
        self._loading.clear()
        block = self._control
        if block is not None:
            begun, at, _ = block.begun()
            if self._killed:
                begun = min(begun, self._killed_after)
            self._report_begun(begun, at)

    def _report_begun(self, begun: int, at: float) -> None:
        """Report as started every unanswered call numbered ``begun`` or less."""
        host, numbers = self.host, self._numbers
        for call_id, task in list(self._calls.items()):
            n = numbers.get(call_id)
            if n is None or n > begun:
                break  # sent in order: the rest are later
            if task._started_at is None and call_id not in self._returning:
                host.task_started(self, task, at)

    def want_start(self, task: Task[Any]) -> None:
        # Sent without asking for Started: watch the control block until it begins.
        if task.id in self._calls and task.id not in self._running and task.id not in self._loading:
            self._start_watch.add(task.id)
            if self._start_poll is None and not self._ended:
                self._start_poll = self.host.loop.call_later(START_POLL, self._poll_starts)

    def _poll_starts(self) -> None:
        self._start_poll = None
        self.sync_starts()
        calls = self._calls
        self._start_watch = {i for i in self._start_watch if i in calls and calls[i]._started_at is None}
        if self._start_watch and not self._ended:
            self._start_poll = self.host.loop.call_later(START_POLL, self._poll_starts)
        elif self._start_watch:
            self._start_watch.clear()

    def sync_starts(self) -> None:
        block = self._control
        if block is not None and self._calls and not self._killed:
            begun, at, _ = block.begun()
            if begun:
                self._report_begun(begun, at)

    def _answered(self, call_id: int) -> None:
        """Call ``call_id`` was answered (or will never be): forget it."""
        self._numbers.pop(call_id, None)
        if self._running:
            self._running.discard(call_id)
        if self._async_calls:
            self._async_calls.discard(call_id)
        if self._timers:
            h = self._timers.pop(call_id, None)
            if h is not None:
                h.cancel()

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
        if self._heard or not self._calls or self._running or self._killed or self._runs_one():
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
        if channel is not None and readable(channel):
            self._quiet_since = None  # its frames wait unread (our loop was late): it is alive
            return
        unsent = self._unsent()
        if unsent and (self._unsent_seen is None or unsent < self._unsent_seen):
            # A call too large for the socket's buffers is still being written, and the
            # worker keeps reading it: give it another deadline.
            self._quiet_since, self._unsent_seen = now, unsent
            return
        self._kill_for(f"no answer within {START_DEADLINE} s of being handed a call while idle: frozen")

    def _runs_one(self) -> bool:
        """A call it was sent has begun and not answered yet (told by the control block)."""
        block = self._control
        if block is None:
            return False
        first = self._numbers.get(next(iter(self._calls)))
        return first is not None and first <= block.begun()[0]

    def _unsent(self) -> int:
        """Bytes queued for the worker that it has not read yet (ours, in the transport)."""
        channel = self._channel
        if channel is None or channel.transport is None:
            return 0
        backlog = sum(v.nbytes for v in channel._backlog)
        return len(channel.writer) + channel.transport.get_write_buffer_size() + backlog


def readable(channel: FrameProtocol[Any]) -> bool:
    """Bytes from the worker (or its EOF) wait unread in the channel's socket."""
    t = channel.transport
    sock = t.get_extra_info("socket") if t is not None else None
    if sock is None or not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class Channel(FrameProtocol[_wire.ToParent]):
    """The parent's end of one worker's channel: dispatches messages to the worker."""

    def __init__(self, worker: ProcessCalls) -> None:
        super().__init__(_wire.parent_parser(max_message=worker.spec.max_message_size))
        self.worker = worker
        self._rest_fd = -1  # our own copy of the socket's fd: see connection_lost
        self._broken = False
        self.received = 0  # bytes read so far (progress, for a late answer: see _cancel_overdue)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._rest_fd = os.dup(sock.fileno())
            os.set_blocking(self._rest_fd, False)

    def connection_lost(self, exc: Exception | None) -> None:
        """The channel is gone. After an error (a write to a worker that just died fails),
        the transport reads nothing more: what the worker wrote before dying, answers
        included, still waits in the socket, read here from our own copy of its fd (the
        transport may have closed its own already)."""
        fd, self._rest_fd = self._rest_fd, -1
        try:
            while exc is not None and fd >= 0 and not self._broken:
                buf = self.parser.get_buffer(-1)
                try:
                    n = os.readv(fd, [buf])
                except OSError:  # nothing more (EAGAIN), or the socket is gone
                    n = 0
                finally:
                    buf.release()
                if n <= 0:
                    break
                self.buffer_updated(n)
        finally:
            if fd >= 0:
                os.close(fd)
            super().connection_lost(exc)

    def buffer_updated(self, nbytes: int) -> None:
        w = self.worker
        w._heard = True  # any byte from the worker proves it alive (see _watch)
        self.received += nbytes
        host = w.host
        try:
            messages = self.parser.buffer_updated(nbytes)
        except WireError as exc:
            # What came before the bad frame is sound: a Started there decides that its
            # call crashed here rather than being requeued to break the next worker too.
            host.batch_begin()
            try:
                for msg in exc.messages:
                    w._on_message(msg)
                w._kill_for(f"channel broken: {exc}")
                self._broken = True
                if self.transport is not None:
                    self.transport.abort()  # nothing after a bad frame can be trusted
            finally:
                host.batch_done()
            return
        if messages:
            # Awaiters of what this batch settles resume at its end, this iteration.
            host.batch_begin()
            try:
                for msg in messages:
                    w._on_message(msg)
            finally:
                host.batch_done()
