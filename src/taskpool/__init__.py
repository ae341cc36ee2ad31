"""taskpool: an asyncio task pool for process, thread and inline workers.

Everything public is importable from here; the implementation lives in private
modules, and each public name's ``__module__`` is rewritten to ``taskpool`` so
tracebacks, reprs and pickles show ``taskpool.Task``, not ``taskpool._task.Task``.

The pool itself (and with it anyio and structlog) is imported on first use of
``FunctionPool``, ``import_persistent_worker``, ``PersistentWorker`` or ``Service``:
a process worker imports ``taskpool`` for its errors and wire format only, and
starts in a fraction of the time.
"""

from __future__ import annotations

from importlib import import_module as _import_module
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

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
from ._memory import tune_malloc
from ._progress import Progress
from ._restart import RestartPolicy
from ._task import Task
from ._types import (
    AnyEvent,
    Event,
    HookErrorEvent,
    PoolEvent,
    PoolSnapshot,
    PoolState,
    ServiceEvent,
    ServiceState,
    StatusType,
    TaskEvent,
    TaskRecord,
    TaskState,
    UserEvent,
    WorkerEvent,
    WorkerLogEvent,
    WorkerSnapshot,
    WorkerState,
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
    "PoolState",
    "Progress",
    "QueueFull",
    "RemoteTraceback",
    "RestartPolicy",
    "SerializationError",
    "Service",
    "ServiceEvent",
    "ServiceState",
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
    "WorkerState",
    "import_persistent_worker",
    "publish",
    "tune_malloc",
]


if _TYPE_CHECKING:
    from ._persistent import PersistentWorker, import_persistent_worker
    from ._pool import FunctionPool
    from ._service import Service

# Imported on first access (PEP 562): these pull in anyio and structlog.
_LAZY = {
    "FunctionPool": "._pool",
    "PersistentWorker": "._persistent",
    "import_persistent_worker": "._persistent",
    "Service": "._service",
}


def _public(obj: _Any) -> _Any:
    # Like trio: public names claim to live in ``taskpool`` itself.
    if getattr(obj, "__module__", "").startswith("taskpool._"):
        try:
            obj.__module__ = "taskpool"
        except (AttributeError, TypeError):  # some typing aliases are read-only
            pass
    return obj


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'taskpool' has no attribute {name!r}")
    value = _public(getattr(_import_module(module, __name__), name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _publish_names() -> None:
    for name in __all__:
        if name not in _LAZY:
            _public(globals()[name])


_publish_names()
