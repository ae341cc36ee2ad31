"""The public surface (like trio's test_exports) and the exception hierarchy."""

from __future__ import annotations
import __future__

import asyncio
import inspect
import pickle
import subprocess
import sys
import types

import pytest

import taskpool

INTENDED = {
    # pool, tasks and their data
    "FunctionPool", "Task", "TaskState", "TaskRecord", "StatusType", "PoolSnapshot", "WorkerSnapshot",
    "PoolState", "WorkerState", "ServiceState", "RestartPolicy", "publish",
    # progress display for map and batches of tasks
    "Progress",
    # event bus
    "EventBus", "Subscription", "Event", "AnyEvent", "TaskEvent", "WorkerEvent", "WorkerLogEvent",
    "PoolEvent", "HookErrorEvent", "UserEvent", "ServiceEvent",
    # errors
    "TaskpoolError", "TaskFailed", "WorkerCrashed", "TaskTimeout", "TaskCancelled", "SerializationError",
    "PoolClosed", "QueueFull", "PoolBroken", "RemoteTraceback",
    # persistent workers and supervision
    "import_persistent_worker", "PersistentWorker", "Service",
    # large payloads: glibc's mmap threshold in the pool's own process (opt-in)
    "tune_malloc",
}  # fmt: skip

TYPE_ALIASES = {"AnyEvent"}  # unions cannot carry a module or a docstring of their own


def test_all_is_exactly_the_intended_surface() -> None:
    assert set(taskpool.__all__) == INTENDED
    assert len(taskpool.__all__) == len(INTENDED)  # no duplicates


def test_nothing_public_is_left_out_of_all() -> None:
    for name in taskpool.__all__:  # the pool's names are imported lazily: resolve them
        getattr(taskpool, name)
    public = {
        name
        for name, value in vars(taskpool).items()
        if not name.startswith("_") and not isinstance(value, (types.ModuleType, __future__._Feature))
    }
    assert public == set(taskpool.__all__)


@pytest.mark.parametrize("name", sorted(INTENDED - TYPE_ALIASES))
def test_public_names_live_in_taskpool_and_are_documented(name: str) -> None:
    obj = getattr(taskpool, name)
    assert obj.__module__ == "taskpool"
    doc = inspect.getdoc(obj)
    assert doc and doc.strip()
    if isinstance(obj, type):
        assert obj.__doc__ is not None and obj.__doc__ is not type(obj).__doc__  # its own docstring


def test_any_event_is_the_union_of_concrete_events() -> None:
    members = set(taskpool.AnyEvent.__args__)
    assert members == {
        taskpool.TaskEvent, taskpool.WorkerEvent, taskpool.WorkerLogEvent, taskpool.PoolEvent,
        taskpool.HookErrorEvent, taskpool.UserEvent, taskpool.ServiceEvent,
    }  # fmt: skip
    assert all(issubclass(m, taskpool.Event) for m in members)


def test_public_classes_pickle_by_their_public_name() -> None:
    err = taskpool.TaskTimeout("too slow")
    assert pickle.loads(pickle.dumps(err)).args == ("too slow",)
    assert pickle.loads(pickle.dumps(taskpool.TaskState.RUNNING)) is taskpool.TaskState.RUNNING
    assert b"taskpool._" not in pickle.dumps(taskpool.TaskState.RUNNING)


# --- errors --------------------------------------------------------------------------------

ERRORS = [
    "TaskFailed", "WorkerCrashed", "TaskTimeout", "TaskCancelled", "SerializationError",
    "PoolClosed", "QueueFull", "PoolBroken",
]  # fmt: skip


@pytest.mark.parametrize("name", ERRORS)
def test_every_error_is_a_taskpool_error(name: str) -> None:
    assert issubclass(getattr(taskpool, name), taskpool.TaskpoolError)
    assert issubclass(taskpool.TaskpoolError, Exception)


def test_errors_also_subclass_the_builtin_they_are() -> None:
    assert issubclass(taskpool.TaskTimeout, TimeoutError)
    assert issubclass(taskpool.SerializationError, TypeError)
    assert issubclass(taskpool.PoolClosed, RuntimeError)
    assert issubclass(taskpool.PoolBroken, RuntimeError)
    # Cancelling a task must not look like the awaiting code being cancelled.
    assert not issubclass(taskpool.TaskCancelled, asyncio.CancelledError)
    with pytest.raises(TimeoutError):
        raise taskpool.TaskTimeout("x")


def test_error_attributes_survive_pickling() -> None:
    crashed = taskpool.WorkerCrashed("died", worker_id=3, exitcode=-9, signal=9)
    back = pickle.loads(pickle.dumps(crashed))
    assert (str(back), back.worker_id, back.exitcode, back.signal) == ("died", 3, -9, 9)
    failed = taskpool.TaskFailed("mod.Weird", "it broke", "Traceback...")
    back = pickle.loads(pickle.dumps(failed))
    assert (back.type_name, back.message, back.traceback, str(back)) == (
        "mod.Weird", "it broke", "Traceback...", "mod.Weird: it broke",
    )  # fmt: skip
    remote = taskpool.RemoteTraceback("Traceback (most recent call last):\n  ...")
    assert "Traceback" in str(remote)


def test_importing_taskpool_does_not_import_the_pool() -> None:
    # A process worker imports taskpool for its errors and wire format: keep it light.
    code = (
        "import sys, taskpool, taskpool._child; "
        "print(sorted(m for m in ('anyio', 'structlog', 'taskpool._pool') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- taskpool.testing ----------------------------------------------------------------------

TESTING = {"Gate", "wait_gate", "block_gate"}


def test_taskpool_testing_surface_is_exactly_the_gate_and_its_task_functions() -> None:
    import taskpool.testing

    assert set(taskpool.testing.__all__) == TESTING
    public = {
        name
        for name, value in vars(taskpool.testing).items()
        if not name.startswith("_")
        and getattr(value, "__module__", None) == "taskpool.testing"
        and (callable(value) or isinstance(value, type))
    }
    assert public == TESTING  # no public helper left out of __all__
    for name in TESTING:
        obj = getattr(taskpool.testing, name)
        assert obj.__module__ == "taskpool.testing"
        doc = inspect.getdoc(obj)
        assert doc and doc.strip()


def test_gate_task_functions_travel_by_reference() -> None:
    # A process worker imports them: they must pickle as taskpool.testing.NAME.
    import taskpool.testing

    for fn in (taskpool.testing.wait_gate, taskpool.testing.block_gate):
        assert pickle.loads(pickle.dumps(fn)) is fn
        assert b"taskpool.testing" in pickle.dumps(fn)


def test_importing_taskpool_testing_does_not_import_the_pool() -> None:
    # It is imported inside worker processes (by the gate's task functions): keep it light.
    code = (
        "import sys, taskpool.testing; "
        "print(sorted(m for m in ('anyio', 'structlog', 'taskpool._pool', 'taskpool._core') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
