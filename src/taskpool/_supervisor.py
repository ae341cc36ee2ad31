"""Each worker's life: start, supervise, restart with backoff, retire and recycle, stop.

A pool has ``pool_size`` *slots*; a slot keeps its id while the workers in it come and
go. One supervising task per slot runs this state machine (``WorkerState``)::

                       ready                       budget spent / over memory
    starting ─────────────────► idle ⇄ busy ─────────────────────────► recycling
       ▲  │                       │ worker ended                           │ ended
       │  │ failed to start       ▼                                        │
       │  └──────────────► next_step(exit) ◄─────────────────────────────────┘
       │                     │       │         │
       │   Replace(delay) ◄──┘       │ Stop    └──► Dead(why): limit spent, mode "never",
       └── restarting ◄──────┘       ▼              or no start in START_ATTEMPTS tries
                                   exited

What to do when a worker ended is decided by :func:`next_step`, plain code with no
awaits (tested without workers); the supervising task only carries it out. The core
hears about each transition through :class:`SlotHost`, which it implements.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import anyio
import anyio.abc
import msgspec

from ._errors import PoolBroken
from ._loop import in_asyncio, out_of_asyncio
from ._restart import Backoff, RestartPolicy
from ._scheduler import Scheduler, Slot
from ._types import PoolState, WorkerState
from ._workers import Worker, WorkerExit, WorkerSpec
from ._workers._base import INIT_FAILED

if TYPE_CHECKING:
    from ._log import Logger

__all__ = ["START_ATTEMPTS", "Dead", "Replace", "SlotHost", "Stop", "Supervisor", "next_step"]

#: Attempts a worker gets to come up while the pool starts, whatever the restart policy.
START_ATTEMPTS = 3
#: Reasons for a planned replacement (not a failure): replaced at once, no backoff.
PLANNED = frozenset({"retired", "recycled"})


class Replace(NamedTuple):
    """Start a new worker in the slot after ``delay`` seconds."""

    delay: float
    planned: bool


class Stop(NamedTuple):
    """Leave the slot empty: the pool is closing."""


class Dead(NamedTuple):
    """The slot will never have a worker again, for ``why``."""

    why: str


Step = Replace | Stop | Dead


def next_step(
    exit: WorkerExit,
    *,
    pool: PoolState,
    stopping: bool,
    queued: bool,
    backoff: Backoff,
    ever_up: bool,
    now: float,
    init_failures: int = 0,
) -> Step:
    """What to do with a slot whose worker ended with ``exit``.

    ``pool`` is the pool's state, ``stopping`` whether its workers are being stopped,
    ``queued`` whether tasks still wait in its queue, ``ever_up`` whether a worker in
    this slot ever answered, ``init_failures`` how many workers in a row failed their
    initializer. Updates ``backoff`` for a failure.
    """
    planned = exit.reason in PLANNED
    if stopping:
        return Stop()
    if pool is not PoolState.RUNNING and not (pool is PoolState.CLOSING and (planned or queued)):
        # While closing drains, a retired or recycled worker is replaced (work may still
        # be queued), and so is a failed one while tasks wait: nothing else would run them.
        return Stop()
    if planned:
        return Replace(0.0, planned=True)
    delay = backoff.down(now, failed=exit.failed, reason=exit.reason)
    if init_failures >= START_ATTEMPTS:
        # A failing initializer fails every worker the same way: not retried for ever.
        return Dead(f"its initializer failed {init_failures} times in a row")
    if not ever_up and backoff.failures >= START_ATTEMPTS:
        # start() must answer: a worker that cannot come up at all is not retried
        # for ever while the caller waits (after start, the policy's limit rules).
        return Dead(f"failed {backoff.failures} times before answering its handshake")
    if delay is None:
        if backoff.exhausted:
            return Dead(f"restart limit {backoff.policy.limit} spent")
        return Dead(f"restart mode {backoff.policy.mode!r}")
    return Replace(delay, planned=False)


def still_wanted(*, pool: PoolState, stopping: bool, queued: bool) -> bool:
    """After a restart delay: is a new worker still wanted?"""
    if stopping:
        return False
    return pool is PoolState.RUNNING or (pool is PoolState.CLOSING and queued)


class SlotHost(Protocol):
    """What the supervisor tells the pool's core, and asks it."""

    @property
    def state(self) -> PoolState:
        """The pool's state."""
        ...

    @property
    def stopping(self) -> bool:
        """Whether the pool's workers are being stopped."""
        ...

    @property
    def has_queued(self) -> bool:
        """Whether tasks wait in the pool's queue."""
        ...

    def worker_ready(self, slot: Slot) -> None:
        """The slot's new worker can take tasks."""

    def worker_ended(self, slot: Slot, worker: Worker, exit: WorkerExit) -> None:
        """The slot's worker ended: fail what it ran, requeue what it did not start."""

    def slot_dead(self, slot: Slot, failures: list[str], why: str) -> None:
        """The slot will never have a worker again."""

    def emit_worker(self, topic: str, worker: Worker, **fields: Any) -> None:
        """Publish a ``worker.*`` event."""


class Supervisor:
    """Keeps a worker in each slot of one pool, per its restart and recycling options."""

    def __init__(
        self,
        host: SlotHost,
        sched: Scheduler,
        backend: type[Worker],
        spec: WorkerSpec,
        *,
        restart: RestartPolicy,
        max_tasks: int | None,
        max_memory: int | None,
        log: Logger,
        name: str,
    ) -> None:
        self.host: SlotHost = host
        self.sched: Scheduler = sched
        self.backend: type[Worker] = backend
        self.spec: WorkerSpec = spec
        self.restart: RestartPolicy = restart
        self.max_tasks: int | None = max_tasks
        self.max_memory: int | None = max_memory
        self.name: str = name
        self._log = log
        self.abandoned: list[Worker] = []  # retired with work that could not be stopped

    # --- running the slots ---------------------------------------------------------------

    async def start_all(self, tg: anyio.abc.TaskGroup, *, on_demand: bool = False) -> None:
        """Start a worker in every slot; return once each answered.

        ``on_demand``: start none; the slots wait as ``UNSTARTED`` for :meth:`start_one`.

        Raises:
            PoolBroken: a slot's worker failed to start START_ATTEMPTS times (or per the policy).
        """
        if on_demand:
            for slot in self.sched.slots:
                slot.state = WorkerState.UNSTARTED
            return
        async with anyio.create_task_group() as starting:
            for slot in self.sched.slots:
                starting.start_soon(_start_in, tg, self._supervise, slot)

    def start_one(self, tg: anyio.abc.TaskGroup, slot: Slot) -> None:
        """Start supervising an unstarted slot (workers on demand); a slot that cannot
        get a worker goes dead through ``slot_dead`` instead of raising."""
        token = in_asyncio()  # called from loop callbacks too (a worker's reports adding work)
        try:
            tg.start_soon(functools.partial(self._supervise, slot, lazy=True))
        finally:
            out_of_asyncio(token)

    async def _supervise(
        self,
        slot: Slot,
        *,
        lazy: bool = False,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep a worker in ``slot``: start it, replace it when it ends, per :func:`next_step`.

        ``lazy``: started on demand, after the pool's start: a slot that goes dead before
        its first worker answered does not raise (the pool's start is not waiting).
        """
        backoff = Backoff(self.restart)
        reported = lazy  # (start() waits on no lazy slot)
        ever_up = False
        init_failures = 0
        host = self.host
        while True:
            worker = self.backend(host, slot.id, self.spec)  # type: ignore[arg-type]
            slot.worker = worker
            slot.worker_tasks = 0
            slot.budget = self.max_tasks  # a worker is handed no more tasks than it may run
            slot.state = WorkerState.STARTING

            def on_ready(worker: Worker = worker) -> None:
                nonlocal reported, init_failures, ever_up
                init_failures = 0
                ever_up = True
                backoff.up(time.monotonic())
                host.emit_worker("worker.started", worker, attempt=backoff.attempt)
                host.worker_ready(slot)
                if not reported:
                    reported = True
                    task_status.started()

            try:
                exit = await worker.run(on_ready)
            except Exception as exc:  # a worker that failed to start or broke
                exit = WorkerExit(failed=True, reason=f"{type(exc).__name__}: {exc}")
            if slot.state is WorkerState.RECYCLING and not exit.failed:
                exit = WorkerExit(failed=False, reason="recycled", exitcode=exit.exitcode)
            if exit.reason.startswith(INIT_FAILED):
                init_failures += 1
            host.worker_ended(slot, worker, exit)
            step = next_step(
                exit,
                pool=host.state,
                stopping=host.stopping,
                queued=host.has_queued,
                backoff=backoff,
                ever_up=ever_up,
                now=time.monotonic(),
                init_failures=init_failures,
            )
            if isinstance(step, Stop):
                slot.state = WorkerState.EXITED
                if not reported:
                    task_status.started()
                return
            if isinstance(step, Dead):
                slot.state = WorkerState.DEAD
                failures = backoff.last_failures or [exit.reason]
                self._log.error("worker will not be restarted", worker_id=slot.id, why=step.why, reason=exit.reason)
                host.slot_dead(slot, failures, step.why)
                if not reported:  # start() fails: this worker never came up
                    raise PoolBroken(
                        f"pool {self.name!r}: worker {slot.id} could not be started ({step.why}); "
                        f"last failures: {'; '.join(failures)}"
                    )
                return
            if not step.planned:
                slot.state = WorkerState.RESTARTING
                self._log.warning(
                    "worker restarting",
                    worker_id=slot.id,
                    reason=exit.reason,
                    delay=step.delay,
                    attempt=backoff.attempt,
                )
                if step.delay:
                    await anyio.sleep(step.delay)
                if not still_wanted(pool=host.state, stopping=host.stopping, queued=host.has_queued):
                    slot.state = WorkerState.EXITED
                    if not reported:
                        task_status.started()
                    return
            slot.restarts += 1
            fields: dict[str, Any] = {
                "reason": exit.reason,
                "attempt": slot.restarts if step.planned else backoff.attempt,
            }
            if not step.planned:
                fields["delay"] = step.delay
            host.emit_worker("worker.restarted", worker, **fields)

    # --- decisions after each task -------------------------------------------------------------

    def after_task(self, slot: Slot, worker: Worker) -> None:
        """A task the slot's current ``worker`` held was reported back: recycle it if due."""
        slot.tasks_done += 1
        slot.worker_tasks += 1
        if slot.worker is not worker or slot.state is WorkerState.RECYCLING:
            return
        if self.max_tasks is not None and slot.worker_tasks >= self.max_tasks:
            self.retire(slot, "recycled")
        elif self.max_memory is not None:
            rss = worker.memory()  # one /proc read, only when a limit is set
            if rss is not None and rss > self.max_memory:
                self._log.info("worker over its memory limit", worker_id=slot.id, rss=rss, limit=self.max_memory)
                self.retire(slot, "recycled")

    def retire(self, slot: Slot, reason: str) -> None:
        """Replace the slot's worker: ``"recycled"`` finishes its tasks first; any other
        reason abandons work that cannot be stopped."""
        worker = slot.worker
        if worker is None:
            return
        self.sched.close_slot(slot)
        self._log.info("worker retired", worker_id=slot.id, reason=reason)
        if reason == "recycled":
            slot.state = WorkerState.RECYCLING  # its clean stop is a recycle: replaced at once
            worker.stop()
        else:
            self.abandoned.append(worker)
            worker.abandon()

    def set_cancel_grace(self, grace: float) -> None:
        """Seconds a cancelled async call gets before its worker is killed, from now on."""
        self.spec = msgspec.structs.replace(self.spec, cancel_grace=grace)
        for slot in self.sched.slots:
            if slot.worker is not None:
                slot.worker.spec = self.spec

    # --- stopping ------------------------------------------------------------------------------

    def stop_all(self) -> None:
        """Ask every worker to finish what it started and end."""
        for slot in self.sched.slots:
            self.sched.close_slot(slot)
            if slot.worker is not None:
                slot.worker.stop()

    def kill_all(self) -> None:
        """End every worker now."""
        for slot in self.sched.slots:
            if slot.worker is not None:
                slot.worker.kill()

    def abandon_all(self) -> None:
        """Detach from every worker that has not ended (its ``run`` returns at once)."""
        for slot in self.sched.slots:
            w = slot.worker
            if w is not None and slot.state not in (WorkerState.EXITED, WorkerState.DEAD):
                self.abandoned.append(w)
                w.abandon()

    async def join_abandoned(self, timeout: float) -> None:
        """Wait up to ``timeout`` s in all for abandoned workers' leftover work to end."""
        deadline = time.monotonic() + timeout
        left: list[Worker] = []
        for w in self.abandoned:
            if not await w.join_abandoned(max(0.0, deadline - time.monotonic())):
                left.append(w)
                self._log.warning("retired worker still running a blocking call", worker_id=w.id)
        self.abandoned = left


async def _start_in(tg: anyio.abc.TaskGroup, supervise: Callable[..., Any], slot: Slot) -> None:
    await tg.start(supervise, slot)
