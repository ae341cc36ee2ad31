"""taskpool: an asyncio task pool for process, thread and inline workers.

Everything public is importable from here; the implementation lives in private
modules, and each public name's ``__module__`` is rewritten to ``taskpool`` so
tracebacks, reprs and pickles show ``taskpool.Task``, not ``taskpool._task.Task``.
"""

from __future__ import annotations

from ._context import publish
from ._errors import (
    PoolBroken,
    PoolClosed,
    QueueFull,
    RemoteTraceback,
    SerializationError,
    TaskCancelled,
    TaskFailed,
    TaskpoolError,
    TaskTimeout,
    WorkerCrashed,
)
from ._events import EventBus, Subscription
from ._persistent import PersistentWorker, import_persistent_worker
from ._pool import FunctionPool
from ._restart import RestartPolicy
from ._service import Service
from ._task import Task
from ._types import (
    AnyEvent,
    Event,
    HookErrorEvent,
    PoolEvent,
    PoolSnapshot,
    ServiceEvent,
    StatusType,
    TaskEvent,
    TaskRecord,
    TaskState,
    UserEvent,
    WorkerEvent,
    WorkerLogEvent,
    WorkerSnapshot,
)

__version__ = "0.1.0"

__all__ = [
    "AnyEvent",
    "Event",
    "EventBus",
    "FunctionPool",
    "HookErrorEvent",
    "PersistentWorker",
    "PoolBroken",
    "PoolClosed",
    "PoolEvent",
    "PoolSnapshot",
    "QueueFull",
    "RemoteTraceback",
    "RestartPolicy",
    "SerializationError",
    "Service",
    "ServiceEvent",
    "StatusType",
    "Subscription",
    "Task",
    "TaskCancelled",
    "TaskEvent",
    "TaskFailed",
    "TaskRecord",
    "TaskState",
    "TaskTimeout",
    "TaskpoolError",
    "UserEvent",
    "WorkerCrashed",
    "WorkerEvent",
    "WorkerLogEvent",
    "WorkerSnapshot",
    "import_persistent_worker",
    "publish",
]


def _fixup_module_metadata() -> None:
    # Like trio: public names claim to live in ``taskpool`` itself.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("taskpool._"):
            try:
                obj.__module__ = "taskpool"
            except (AttributeError, TypeError):  # some typing aliases are read-only
                pass


_fixup_module_metadata()
del _fixup_module_metadata
