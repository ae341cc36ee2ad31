"""The ``"ray"`` worker kind: each worker is a Ray actor (:mod:`taskpool._ray_actor`).

Pool side of one slot::

    send(task): cloudpickle (fn, args) ──► batch (one per loop iteration)
       _flush ──► actor.run.remote(batch) ─── reply: (rss, answers ready together) ──►
                                              _on_reply (on the pool's loop)
    _poll (one outstanding actor.poll) ◄── starts, publish, output lines, "unstoppable",
                                           answers that came after their run's reply
    an actor death ── every outstanding reference raises RayActorError ──► run() ends

An actor on the pool's machine shares a control block with it
(:mod:`taskpool._control`, opened through ``/proc``): the pool reads there which calls
have begun (:meth:`RayWorker.sync_starts`), and counts each cancel there before sending
it, so the actor never starts a call whose cancel is on its way. On another machine,
every start is told through ``poll``, and when an actor dies the oldest ``concurrency``
calls it held count as begun. No pid and no exit code (``WorkerCrashed.exitcode`` is
None). Ray's own retries and restarts are off (``max_restarts=0``,
``max_task_retries=0``): taskpool's supervision decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

try:
    import cloudpickle
    from ray.exceptions import RayError

    import ray
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("taskpool's 'ray' worker kind needs Ray: pip install 'taskpool[ray]'") from exc

from . import _ray_cluster
from ._control import ControlBlock
from ._errors import SerializationError
from ._ray_actor import A_CANCELLED, A_ERROR, A_PICKLED, A_RETURNED, A_VALUE, SlotActor, block_name
from ._wire import dump_args, rebuild_exception
from ._workers._base import INIT_FAILED, CancelResult, Capabilities, Worker, WorkerExit, WorkerSpec, log_path
from .ray import RayWorkers

if TYPE_CHECKING:
    from ._task import Task

__all__ = ["ANSWER_WAIT", "CANCEL_GRACE", "START_TIMEOUT", "RayWorker"]

#: Seconds an async call has to stop after a cancel before its actor is killed.
CANCEL_GRACE = 1.0
#: Seconds a cancelled call that has ended (the shared control block says so) may take for
#: its answer to come before its actor is killed (see taskpool._workers._process).
ANSWER_WAIT = 30.0
#: Seconds a new actor has to be placed and answer (the initializer's time not counted).
START_TIMEOUT = 120.0
#: Seconds a stopping worker waits for its running calls before its actor is killed.
STOP_GRACE = 5.0

_actor_class: Any = None


def _remote_class() -> Any:
    global _actor_class
    if _actor_class is None:
        _actor_class = ray.remote(SlotActor)
    return _actor_class


class RayWorker(Worker):
    """A pool slot served by a Ray actor (see the module's docstring)."""

    kind = "ray"
    capabilities = Capabilities(
        isolated=True,
        window=64,
        adaptive_window=True,
        reclaims_unstarted=True,
        reports_memory=True,
        remote=True,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = getattr(self.spec, "kind_options", None)
        self.config: RayWorkers = cfg if isinstance(cfg, RayWorkers) else RayWorkers.from_env()
        self._actor: Any = None
        self._pending: list[tuple[Task[Any], bytes]] = []
        self._flush_handle: asyncio.Handle | None = None
        self._calls: dict[int, Task[Any]] = {}  # sent, not answered (in the order sent)
        self._started: set[int] = set()  # start reported
        self._async: set[int] = set()  # coroutine functions (cancellable in the actor)
        self._returning: set[int] = set()  # reclaim asked: an unstarted answer goes back
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._ended: asyncio.Future[WorkerExit] | None = None
        self._stopping = False
        self._killed = False
        self._retired = False
        self._gone = False  # run() ended: its actor was killed (or never made)
        self._node: str | None = None
        self._rss: int | None = None
        self._logfile: IO[str] | None = None
        # Shared with an actor on this machine (see taskpool._control): calls begun, read
        # on the spot (status, cancel, a death), and cancels sent, which the actor waits
        # for before it starts a queued call. None: another machine (messages only).
        self._block: ControlBlock | None = None
        self._numbers: dict[int, int] = {}  # call id -> its number (1, 2, ... as sent)
        self._n = 0

    @classmethod
    async def pool_opened(cls, spec: WorkerSpec) -> None:
        """Connect to Ray for the pool (a private local Ray, or the cluster to join), and
        hold the connection until :meth:`pool_closed`, whatever its workers do.

        Raises:
            RuntimeError: this process is connected to a different Ray already.
            ConnectionError: the cluster to join cannot be reached.
        """
        cfg = spec.kind_options
        await _ray_cluster.acquire(cfg if isinstance(cfg, RayWorkers) else RayWorkers.from_env())

    @classmethod
    async def pool_closed(cls, spec: WorkerSpec) -> None:
        """The pool closed: let go of its connection (the last one ends a private Ray)."""
        await _ray_cluster.release(closing=True)

    @property
    def node(self) -> str | None:
        return self._node

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self, on_ready: Callable[[], None]) -> WorkerExit:
        loop = self.host.loop
        self._ended = loop.create_future()
        spec = self.spec
        try:
            init = None if spec.initializer is None else cloudpickle.dumps((spec.initializer, spec.initargs), 5)
        except Exception as exc:
            return WorkerExit(failed=True, reason=f"{INIT_FAILED}: SerializationError: {exc}")
        await _ray_cluster.acquire(self.config)
        poller: asyncio.Task[None] | None = None
        try:
            if self._killed:
                return WorkerExit(failed=True, reason="killed before it started")
            cfg = self.config
            self._actor = (
                _remote_class()
                .options(
                    num_cpus=cfg.num_cpus,
                    resources=cfg.resources,
                    runtime_env=cfg.runtime_env,
                    max_restarts=0,
                    max_task_retries=0,
                    scheduling_strategy="SPREAD",
                )
                .remote(self.id, spec.concurrency)
            )
            self._logfile = self._open_log()
            poller = loop.create_task(self._poll())
            block = ControlBlock.create()
            shared = None if block is None else block_name(block)
            try:
                async with asyncio.timeout(START_TIMEOUT if init is None else None):
                    ref = self._actor.start.remote(init, spec.init_logger, shared)
                    failure, self._node, _, opened = await _result(ref)
            except TimeoutError:
                return WorkerExit(failed=True, reason=f"actor not ready within {START_TIMEOUT} s")
            except RayError as exc:
                if self._was_killed():
                    return WorkerExit(failed=not self._stopping, reason="killed while starting")
                why = _why(exc)
                return WorkerExit(failed=True, reason=f"{INIT_FAILED}: actor died: {why}" if init else why)
            finally:
                if block is not None:
                    block.close_fd()  # the actor opened it (or never will): the mapping stays
            if opened:
                self._block, block = block, None
            elif block is not None:
                block.close()
            if failure is not None:
                self._handle(await _result(self._actor.drain.remote()))  # its last output lines
                return WorkerExit(failed=True, reason=f"{INIT_FAILED}: {failure}")
            if self._was_killed():
                return WorkerExit(failed=True, reason="killed while starting")
            if self._stopping and not self._calls:
                return WorkerExit(failed=False, reason="stopped")
            on_ready()
            return await self._ended
        finally:
            self._end_timers()
            self._kill_actor()
            self._gone = True  # a kill() from now on finds nothing to kill
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(BaseException):
                    await poller
            if self._logfile is not None:
                self._logfile.close()
                self._logfile = None
            if self._block is not None:
                self._block.close()
                self._block = None
            await _ray_cluster.release(closing=_closing(self.host))

    def _was_killed(self) -> bool:
        """Whether kill() came (it may come at any await)."""
        return self._killed

    def _open_log(self) -> IO[str] | None:
        path = log_path(self.spec.log_dir, self.spec.pool_name, self.id)
        if path is None:
            return None
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return open(path, "a", encoding="utf-8", buffering=1)  # closed by run()

    def _end(self, exit: WorkerExit) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(exit)

    def _end_timers(self) -> None:
        for h in self._timers.values():
            h.cancel()
        self._timers.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def _kill_actor(self) -> None:
        # Never once run() ended, nor with Ray shut down (by the pool closing): any Ray
        # call then would start a new Ray of its own (Ray's auto-init), on the loop.
        if self._actor is not None and not self._gone and ray.is_initialized():
            with contextlib.suppress(Exception):
                ray.kill(self._actor, no_restart=True)

    def _died(self, exc: BaseException) -> None:
        """The actor is gone (a poll or a reply said so): end ``run``."""
        if self._ended is None or self._ended.done():
            return
        if self._retired:
            self._end(WorkerExit(failed=False, reason="retired"))
        elif self._killed:
            self._end(WorkerExit(failed=not self._stopping, reason="killed"))
        elif self._stopping and not self._calls:
            self._end(WorkerExit(failed=False, reason="stopped"))
        else:
            if self._block is not None:
                self.sync_starts()  # the calls it began crash; the rest go back to the queue
            else:
                # Calls whose start was not told yet: the oldest `concurrency` ran (they
                # crash); the rest go back to the queue.
                now = time.time()
                n = self.spec.concurrency - len(self._started)
                for cid, task in list(self._calls.items())[: max(0, n)]:
                    if cid not in self._started:
                        self.host.task_started(self, task, now)
            self._end(WorkerExit(failed=True, reason=f"actor died: {_why(exc)}"))

    # --- reports from the actor -------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            try:
                events = await _result(self._actor.poll.remote())
            except asyncio.CancelledError:
                raise
            except RayError as exc:
                self._died(exc)
                return
            self._handle(events)
            del events

    def _handle(self, events: list[tuple[Any, ...]]) -> None:
        """Deliver what the actor told through ``poll``: starts, publish, output, answers
        its ``run`` replied without."""
        host = self.host
        late = []
        for ev in events:
            code = ev[0]
            if code == "s":
                task = self._calls.get(ev[1])
                if task is not None and not self._killed:
                    self._started.add(ev[1])
                    host.task_started(self, task, ev[2])
            elif code == "o":
                self._line(ev[1], ev[2])
            elif code == "p":
                try:
                    data = pickle.loads(ev[3])  # noqa: S301 - our own worker
                except BaseException as exc:
                    data = f"<undecodable: {type(exc).__name__}: {exc}>"
                host.worker_publish(self, ev[2], data, ev[1])
            elif code == "a":
                late.append(ev[1])
            elif code == "u" and ev[1] in self._calls:
                self._retire_now(f"call {ev[1]} was cancelled while it blocked")
        if late:
            host.batch_begin()
            self._deliver(late)
        host.batch_done()
        if late and self._stopping and not self._calls:
            self._end(WorkerExit(failed=False, reason="stopped"))

    def _line(self, stream: str, line: str) -> None:
        if self._logfile is not None:
            self._logfile.write(f"{'' if stream == 'stdout' else '[stderr] '}{line}\n")
        self.host.worker_log(self, stream, line)

    def _on_reply(self, ref: Any) -> None:
        try:
            rss, answers = ref.result()
        except BaseException as exc:  # the actor died: the poll tells it too
            self._died(exc)
            return
        self._rss = rss
        host = self.host
        host.batch_begin()
        self._deliver(answers)
        host.batch_done()
        if self._stopping and not self._calls:
            self._end(WorkerExit(failed=False, reason="stopped"))

    def _deliver(self, answers: list[tuple[Any, ...]]) -> None:
        """Settle the calls ``answers`` answer (inside a batch of reports)."""
        host = self.host
        for cid, code, payload, at, started in answers:
            task = self._calls.pop(cid, None)
            if task is None:
                continue
            self._numbers.pop(cid, None)
            self._started.discard(cid)
            self._async.discard(cid)
            timer = self._timers.pop(cid, None)
            if timer is not None:
                timer.cancel()
            if code == A_VALUE:
                host.task_finished(self, task, True, payload, at, started)
            elif code == A_PICKLED:
                try:
                    value = pickle.loads(payload)  # noqa: S301 - our own worker
                except BaseException as exc:
                    err = SerializationError(f"cannot receive the result from the worker: {type(exc).__name__}: {exc}")
                    host.task_finished(self, task, False, err, at, started)
                else:
                    host.task_finished(self, task, True, value, at, started)
            elif code == A_ERROR:
                host.task_finished(self, task, False, rebuild_exception(payload), at, started)
            elif code == A_RETURNED and (cid in self._returning or (self._stopping and not task.done())):
                self._returning.discard(cid)
                host.task_returned(self, task)
            else:  # A_CANCELLED, or returned after a cancel: it never ran
                self._returning.discard(cid)
                host.task_finished(self, task, False, None, at, started if code == A_CANCELLED else 0.0)

    # --- the pool's side ----------------------------------------------------------------------

    def send(self, task: Task[Any]) -> None:
        try:
            blob = cloudpickle.dumps((task.fn, task.args), 5)
        except Exception as exc:
            self.host.loop.call_soon(self._fail_unsent, task, _unsendable(task, exc))
            return
        self._pending.append((task, blob))
        if self._flush_handle is None:
            self._flush_handle = self.host.loop.call_soon(self._flush)

    def _fail_unsent(self, task: Task[Any], exc: BaseException) -> None:
        self.host.task_finished(self, task, False, exc, time.time())
        self.host.batch_done()

    def _flush(self) -> None:
        self._flush_handle = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        if self._actor is None or self._ended is None or self._ended.done():
            for task, _ in pending:
                self.host.task_returned(self, task)
            self.host.batch_done()
            return
        wanted = self.host.start_wanted
        batch = []
        for task, blob in pending:
            cid = task.id
            self._calls[cid] = task
            self._n += 1
            self._numbers[cid] = self._n
            is_async = _is_async(task.fn)
            if is_async:
                self._async.add(cid)
            batch.append((cid, self._n, blob, wanted(task), is_async, task._trace))
        ref = self._actor.run.remote(batch)
        loop = self.host.loop

        def done(fut: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the pool's loop closed
                loop.call_soon_threadsafe(self._on_reply, fut)

        ref.future().add_done_callback(done)

    def cancel(self, task: Task[Any]) -> CancelResult:
        for i, (t, _) in enumerate(self._pending):
            if t is task:
                del self._pending[i]
                return CancelResult.REMOVED
        cid = task.id
        if cid not in self._calls:
            return CancelResult.STOPPING
        if cid not in self._async and cid in self._started:
            block = self._block
            if block is None:
                return CancelResult.UNSTOPPABLE  # a blocking call: its actor must go
            # Counted before looking, a fence: the actor begins no other call until the
            # cancel that goes with the count reaches it. Sent only if the call returned:
            # so a kill decided here never lands on a call begun since the look.
            block.bump()
            if not block.returned(self._numbers.get(cid, 0)):
                return CancelResult.UNSTOPPABLE
            self._actor.cancel.remote(cid, True)  # it returned (its answer is on the way): the count's frame
            return CancelResult.STOPPING
        self._send_control(cid)
        if cid in self._async and cid not in self._timers and not self._killed:
            grace = CANCEL_GRACE if self.spec.cancel_grace is None else self.spec.cancel_grace
            self._timers[cid] = self.host.loop.call_later(grace, self._cancel_overdue, cid, grace)
        return CancelResult.STOPPING

    def _cancel_overdue(self, cid: int, grace: float, waited: float = 0.0) -> None:
        self._timers.pop(cid, None)
        if cid not in self._calls or cid not in self._started:
            return
        block = self._block
        if block is not None:
            block.bump()  # a fence before looking (see cancel); released below if it ended
        if block is not None and block.ended(self._numbers.get(cid, 0)):
            self._actor.cancel.remote(cid, True)
            # It stopped; its answer waits behind what the pool has not taken in yet.
            # Killing the actor now would fail the call it runs next.
            waited += grace
            if waited < ANSWER_WAIT:
                self._timers[cid] = self.host.loop.call_later(grace, self._cancel_overdue, cid, grace, waited)
            else:
                self._retire_now(f"the answer to call {cid} never came")
            return
        self._retire_now(f"call {cid} ignored cancellation")

    def _retire_now(self, why: str) -> None:
        """Kill the actor for work that cannot be stopped otherwise (a retirement)."""
        self._line("stderr", f"taskpool: {why}; killing worker")
        self._retired = True
        self.kill()

    def reclaim(self, task: Task[Any]) -> bool:
        for i, (t, _) in enumerate(self._pending):
            if t is task:
                del self._pending[i]
                return True
        cid = task.id
        if cid in self._calls and cid not in self._started and cid not in self._returning and not self._stopping:
            self._returning.add(cid)
            self._send_control(cid, True)
        return False

    def want_start(self, task: Task[Any]) -> None:
        if task.id in self._calls and self._actor is not None:
            self._actor.want_start.remote(task.id)

    def stop(self) -> None:
        self._stopping = True
        if self._pending:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush_handle = self.host.loop.call_soon(self._flush)  # (hands them back)
        if self._actor is None:
            return
        if not self._calls:
            self._end(WorkerExit(failed=False, reason="stopped"))
            return
        if self._block is not None:
            self._block.bump()
        self._actor.shutdown.remote()
        self._timers[-1] = self.host.loop.call_later(STOP_GRACE + CANCEL_GRACE, self.kill)

    def kill(self) -> None:
        self._killed = True
        self._pending.clear()
        if self._actor is not None:
            self._kill_actor()  # the poll fails soon: run() ends

    def abandon(self) -> None:
        self._retired = True
        self.kill()

    def _send_control(self, cid: int, queued_only: bool = False) -> None:
        """Send a cancel, counted first where the actor looks before each start: a call
        cancelled while it waits in the actor never starts."""
        if self._block is not None:
            self._block.bump()
        self._actor.cancel.remote(cid, queued_only)

    def sync_starts(self) -> None:
        block = self._block
        if block is None or not self._calls or self._killed:
            return
        begun, at, _ = block.begun()
        numbers, host = self._numbers, self.host
        for cid, task in list(self._calls.items()):
            n = numbers.get(cid)
            if n is None or n > begun:
                break  # sent in order, started in order: the rest have not begun
            if cid not in self._started and cid not in self._returning:
                self._started.add(cid)
                host.task_started(self, task, at)

    def memory(self) -> int | None:
        return self._rss


def _result(ref: Any) -> asyncio.Future[Any]:
    """``ref``'s value on the running loop (through its concurrent future: awaiting an
    ObjectRef directly hangs when Ray was connected from another thread)."""
    return asyncio.wrap_future(ref.future())


def _closing(host: Any) -> bool:
    state = getattr(host, "state", None)
    return str(state) in ("closing", "closed", "broken") or bool(getattr(host, "stopping", False))


def _is_async(fn: Any) -> bool:
    from ._functions import is_async_callable

    return is_async_callable(fn)


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]


def _unsendable(task: Task[Any], exc: BaseException) -> SerializationError:
    name = getattr(task.fn, "__qualname__", None) or repr(task.fn)
    try:
        dump_args(task.args, name)
    except SerializationError as err:
        return err
    return SerializationError(f"cannot send function {task.fn!r}: {type(exc).__name__}: {exc}")
