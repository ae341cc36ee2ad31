"""Records, snapshots and events: the data taskpool shows to the outside.

All of them are :class:`msgspec.Struct` s, so ``msgspec.json.encode`` works on each, and a
dashboard can decode any event with ``msgspec.json.decode(data, type=AnyEvent)``.
"""

import enum
from typing import Any, Literal, TypeAlias

import msgspec

__all__ = [
    "AnyEvent",
    "PoolState",
    "ProxyState",
    "ServiceState",
    "WorkerState",
    "Event",
    "HookErrorEvent",
    "PoolEvent",
    "PoolSnapshot",
    "ServiceEvent",
    "StatusType",
    "TaskEvent",
    "TaskRecord",
    "TaskState",
    "UserEvent",
    "WorkerEvent",
    "WorkerLogEvent",
    "WorkerSnapshot",
]


class TaskState(enum.StrEnum):
    """Where a task is in its life. The last three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class PoolState(enum.StrEnum):
    """A pool's life: ``new`` -> ``running`` -> ``closing`` -> ``closed`` (or ``broken``)."""

    NEW = "new"  #: created, not started; tasks may be added and wait
    RUNNING = "running"  #: workers up; intake open
    CLOSING = "closing"  #: aclose() began: intake closed (but for the pool's own hooks and tasks)
    CLOSED = "closed"  #: every task settled, workers stopped, bus closed
    BROKEN = "broken"  #: no worker can be started any more (PoolBroken); closing still runs


class WorkerState(enum.StrEnum):
    """A worker slot's life (see the diagram in ``taskpool._supervisor``)."""

    STARTING = "starting"  #: a worker is being started in the slot
    IDLE = "idle"  #: up, holding no task
    BUSY = "busy"  #: up, holding at least one task
    UNSTARTED = "unstarted"  #: no worker yet (``start_workers="on_demand"``: started when needed)
    RECYCLING = "recycling"  #: finishing its last tasks before a planned replacement
    RESTARTING = "restarting"  #: its worker ended; waiting for the restart delay
    EXITED = "exited"  #: stopped (the pool is closing, or it ended for good cleanly)
    DEAD = "dead"  #: will never have a worker again (restart limit spent, or mode "never")


class ServiceState(enum.StrEnum):
    """A kept-alive service's life."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    BROKEN = "broken"


class ProxyState(enum.StrEnum):
    """A persistent worker proxy's life."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    TERMINATED = "terminated"


class StatusType(enum.StrEnum):
    """What :meth:`FunctionPool.status` returns for a field."""

    COUNT = "count"  #: an ``int``
    PERCENT = "percent"  #: a ``float`` in 0-100 of ``total``
    RAW = "raw"  #: a ``list[TaskRecord]``

    def __str__(self) -> str:
        return self.value


class TaskRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An immutable picture of one task, for status(RAW), dashboards and logs.

    Times are epoch seconds (``time.time()``): ``queued_at`` when it was added,
    ``dispatched_at`` when it was handed to a worker, ``started_at`` and ``finished_at``
    taken in the worker, so ``finished_at - started_at`` is the call's own run time and
    ``started_at - queued_at`` its wait. ``error`` is ``"TypeName: message"`` for a task
    that failed or was cancelled, else ``None``.
    """

    id: int
    meta: Any
    state: TaskState
    worker_id: int | None
    queued_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    dispatched_at: float | None = None
    attempts: int = 1  #: runs begun (more than 1 when it was retried)


class WorkerSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """One worker as a dashboard sees it."""

    id: int
    kind: str
    pid: int | None
    thread_name: str | None
    state: str  # a WorkerState: starting | idle | busy | recycling | restarting | exited | dead
    tasks_done: int
    restarts: int
    current_task: int | None
    role: str = "pool"  # "pool" | "persistent" | "service"
    name: str | None = None
    #: Busy share of the last 10 s (0-1), from the run times taken in the worker.
    utilisation: float = 0.0
    #: The host the worker runs on (remote kinds), else None.
    node: str | None = None


class PoolSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a dashboard shows about a pool, at one instant."""

    name: str
    kind: str
    pool_size: int
    state: str  # a PoolState: new | running | closing | closed | broken
    time: float
    counts: dict[str, int]
    queue_depth: int
    workers: list[WorkerSnapshot]
    #: Mean utilisation over the pool's own workers (0-1).
    utilisation: float = 0.0


# --- events ----------------------------------------------------------------------------


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    """Base of every event on a pool's bus: a ``topic`` and a ``time`` (epoch seconds)."""

    topic: str
    time: float


class TaskEvent(Event, frozen=True, kw_only=True, tag="task"):
    """``task.queued`` / ``started`` / ``retried`` / ``succeeded`` / ``failed`` / ``cancelled``.

    ``task.retried``: the run on ``worker_id`` failed with ``error`` and the task went
    back to the queue for run number ``attempt``.
    """

    task_id: int
    state: TaskState
    meta: Any = None
    worker_id: int | None = None
    error: str | None = None
    attempt: int = 1


class WorkerEvent(Event, frozen=True, kw_only=True, tag="worker"):
    """``worker.started`` / ``exited`` / ``restarted``; ``reason`` says why one ended or was replaced."""

    worker_id: int
    worker_kind: str
    pid: int | None = None
    exitcode: int | None = None
    signal: int | None = None
    reason: str | None = None
    attempt: int = 0
    delay: float = 0.0
    role: str = "pool"


class WorkerLogEvent(Event, frozen=True, kw_only=True, tag="log"):
    """``worker.log``: one line a worker wrote to its stdout or stderr."""

    worker_id: int
    stream: Literal["stdout", "stderr"]
    line: str


class PoolEvent(Event, frozen=True, kw_only=True, tag="pool"):
    """``pool.drained`` (``settled`` = tasks settled in the round) and ``pool.closed``."""

    pool: str
    round: int = 0
    settled: int = 0


class HookErrorEvent(Event, frozen=True, kw_only=True, tag="hook_error"):
    """``pool.hook_error``: a hook (then, catch, race, all_settled) or a done-callback raised."""

    hook: str
    error: str
    task_id: int | None = None


class UserEvent(Event, frozen=True, kw_only=True, tag="user"):
    """Any topic published with ``pool.events.publish`` or ``taskpool.publish``."""

    data: Any = None
    task_id: int | None = None
    worker_id: int | None = None


class ServiceEvent(Event, frozen=True, kw_only=True, tag="service"):
    """``service.started`` / ``exited`` / ``restarted`` / ``broken`` / ``stopped``.

    ``instance`` is the instance's index, or -1 for ``service.stopped`` (the whole service).
    """

    service: str
    instance: int
    worker_id: int | None = None
    reason: str | None = None
    attempt: int = 0
    delay: float = 0.0


AnyEvent: TypeAlias = TaskEvent | WorkerEvent | WorkerLogEvent | PoolEvent | HookErrorEvent | UserEvent | ServiceEvent
