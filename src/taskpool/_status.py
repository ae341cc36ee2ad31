"""Status and snapshots: a read-only view of a pool's core, for callers and dashboards.

Counts are O(1) (the scheduler keeps them); records and snapshots are built on demand.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ._scheduler import FIELDS
from ._types import PoolSnapshot, PoolState, StatusType, TaskRecord, TaskState, WorkerSnapshot

if TYPE_CHECKING:
    from ._core import PoolCore

__all__ = ["has_available_worker", "raw", "snapshot", "status", "worker_snapshots"]


def status(core: PoolCore, field: str, kind: StatusType | str) -> Any:
    """See ``FunctionPool.status``.

    Raises:
        ValueError: unknown ``field`` or ``kind``.
    """
    try:
        kind = StatusType(kind)
    except ValueError:
        raise ValueError(f"unknown status kind {kind!r}; accepted: {', '.join(k.value for k in StatusType)}") from None
    sched = core.sched
    core.sync_starts()
    if field == "*":
        if kind is StatusType.RAW:
            return {f: raw(core, f) for f in FIELDS}
        counts = {f: sched.count(f) for f in FIELDS}
        if kind is StatusType.COUNT:
            return counts
        total = sched.n_total
        return {f: 100.0 * n / total if total else 0.0 for f, n in counts.items()}
    n = sched.count(field)  # validates the field
    if kind is StatusType.COUNT:
        return n
    if kind is StatusType.PERCENT:
        return 100.0 * n / sched.n_total if sched.n_total else 0.0
    return raw(core, field)


def raw(core: PoolCore, field: str) -> list[TaskRecord]:
    """The records behind a status field (completed ones: the last ``keep_records``)."""
    sched = core.sched
    core.sync_starts()
    done = sched.records
    if field in ("succeeded", "failed", "cancelled"):
        state = TaskState(field)
        return [r for r in done if r.state is state]
    queued = [t.record for t in sched.queued_tasks()]
    active = [t.record for t in sched.active_tasks() if not t.done()]
    return {
        "completed": done,
        "queued": queued,
        "active": active,
        "remaining": queued + active,
        "started": [r for r in done if r.started_at is not None] + [r for r in active if r.started_at is not None],
        "total": done + active + queued,
    }[field]


def worker_snapshots(core: PoolCore, now: float | None = None) -> list[WorkerSnapshot]:
    """Each of the core's own workers, then those of the extras tied to it."""
    now = time.time() if now is None else now
    kind = core.options.worker
    caps = core.capabilities
    own_name = core.name if core.role != "pool" else None
    core.sync_starts()
    out = []
    for slot in core.sched.slots:
        w = slot.worker
        cur = slot.current()
        out.append(
            WorkerSnapshot(
                id=slot.id,
                kind=kind,
                pid=w.pid if w is not None and caps.has_pid else None,
                thread_name=w.thread_name if w is not None else None,
                state=slot.state,
                tasks_done=slot.tasks_done,
                restarts=slot.restarts,
                current_task=cur.id if cur is not None else None,
                role=core.role,
                name=own_name,
                utilisation=round(slot.utilisation(now), 4),
                node=w.node if w is not None and caps.remote else None,
            )
        )
    for extra in core.extras:
        out.extend(extra.snapshot_workers())
    return out


def snapshot(core: PoolCore) -> PoolSnapshot:
    """See ``FunctionPool.snapshot``."""
    now = time.time()
    workers = worker_snapshots(core, now)
    own = [w.utilisation for w in workers[: len(core.sched.slots)]]
    return PoolSnapshot(
        name=core.name,
        kind=core.options.worker,
        pool_size=core.options.pool_size,
        state=core.state,
        time=now,
        counts={f: core.sched.count(f) for f in FIELDS},
        queue_depth=core.sched.n_queued,
        workers=workers,
        utilisation=round(sum(own) / len(own), 4) if own else 0.0,
    )


def has_available_worker(core: PoolCore) -> bool:
    """True when a task added now would start at once (an idle worker, nothing queued)."""
    sched = core.sched
    if core.state is not PoolState.RUNNING or sched.n_queued:
        return False
    return any(s.accepting and not s.inflight for s in sched.slots)
