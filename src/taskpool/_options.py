"""Options and their checks, in one place: every boundary validates through these.

Each check raises ``TypeError`` for a value of the wrong type and ``ValueError`` for one
out of range, with a message naming the argument and what is accepted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import msgspec

from ._restart import RestartPolicy

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "MAX_WORKERS",
    "ON_WORKER_CRASH",
    "START_WORKERS",
    "WORKER_OUTPUTS",
    "PoolOptions",
    "OnWorkerCrash",
    "StartWorkers",
    "KindSettings",
    "WorkerOutput",
    "check_callable",
    "check_choice",
    "check_count",
    "check_grace",
    "check_name",
    "check_restart",
    "check_timeout",
    "check_worker_output",
    "default_pool_size",
    "inherit_kind",
    "split_worker",
]

#: Default bound on one message (frame or out-of-band segment) from a worker: 1 GiB.
DEFAULT_MAX_MESSAGE = 2**30

#: Upper bound on ``pool_size`` (and service ``instances``): far above what one machine
#: runs usefully, low enough that a typo cannot spawn a million workers.
MAX_WORKERS = 1024

#: Where a worker's stdout/stderr go (``worker_output=``): ``"log"`` (the ``taskpool.worker``
#: logger, ``worker.log`` events and ``log_dir``), ``"inherit"`` (the parent's own
#: stdout/stderr, and ``log_dir``) or ``"events"`` (``worker.log`` events and ``log_dir``).
WorkerOutput = Literal["log", "inherit", "events"]
WORKER_OUTPUTS: tuple[str, ...] = get_args(WorkerOutput)

#: What a worker's unclean death does (``on_worker_crash=``): ``"isolate"`` fails only the
#: tasks that worker held and replaces it; ``"break"`` fails every task and breaks the pool.
OnWorkerCrash = Literal["isolate", "break"]
ON_WORKER_CRASH: tuple[str, ...] = get_args(OnWorkerCrash)

#: When workers start (``start_workers=``): ``"eager"`` all of them with the pool;
#: ``"on_demand"`` one more whenever a task waits and no started worker is idle.
StartWorkers = Literal["eager", "on_demand"]
START_WORKERS: tuple[str, ...] = get_args(StartWorkers)


def default_pool_size() -> int:
    """``$TASKPOOL_WORKERS`` if set, else the number of CPUs this process may use.

    Raises:
        ValueError: ``TASKPOOL_WORKERS`` is set but is not an integer in 1..MAX_WORKERS.
    """
    env = os.environ.get("TASKPOOL_WORKERS")
    if env is not None and env.strip():
        try:
            n = int(env)
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_WORKERS:
            raise ValueError(f"TASKPOOL_WORKERS must be an integer >= 1 and <= {MAX_WORKERS}, got {env!r}")
        return n
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def check_timeout(name: str, value: float | None) -> float | None:
    """A timeout in seconds: a finite number > 0, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0 or None, got {value!r}")
    return float(value)


def check_grace(name: str, value: float | None, *, optional: bool = True) -> float | None:
    """A grace period in seconds: a finite number >= 0 (or None when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        what = "a number of seconds or None" if optional else "a number of seconds"
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        also = " or None" if optional else ""
        raise ValueError(f"{name} must be a finite number of seconds >= 0{also}, got {value!r}")
    return float(value)


def check_count(name: str, value: int | None, minimum: int = 1, maximum: int | None = None) -> int | None:
    """An int in ``minimum..maximum``, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        accepted = f">= {minimum}" if maximum is None else f">= {minimum} and <= {maximum}"
        raise ValueError(f"{name} must be {accepted} or None, got {value!r}")
    return value


def check_callable(what: str, fn: Any) -> Callable[..., Any]:
    """``fn`` itself when callable."""
    if not callable(fn):
        raise TypeError(f"{what} needs a callable, got {type(fn).__name__}")
    return fn  # type: ignore[no-any-return]


def check_restart(value: RestartPolicy | None, default: RestartPolicy) -> RestartPolicy:
    """A RestartPolicy, or ``default`` for None."""
    if value is None:
        return default
    if not isinstance(value, RestartPolicy):
        raise TypeError(f"restart must be a RestartPolicy or None, got {type(value).__name__}")
    return value


def check_worker_output(value: str) -> WorkerOutput:
    """One of :data:`WORKER_OUTPUTS`.

    Raises:
        TypeError: ``value`` is not a str.
        ValueError: ``value`` is not ``"log"``, ``"inherit"`` or ``"events"``.
    """
    if not isinstance(value, str):
        raise TypeError(f"worker_output must be a str, got {type(value).__name__}")
    if value not in WORKER_OUTPUTS:
        accepted = ", ".join(repr(v) for v in WORKER_OUTPUTS)
        raise ValueError(f"worker_output must be one of {accepted}, got {value!r}")
    return value  # type: ignore[return-value]


@runtime_checkable
class KindSettings(Protocol):
    """Settings for a worker kind, passed as ``worker=`` instead of the kind's name (for
    example :class:`taskpool.ray.RayWorkers`): ``kind`` names the kind, and the object
    travels to each worker as ``WorkerSpec.kind_options``."""

    @property
    def kind(self) -> str:
        """The name of the kind these settings are for."""
        ...


def split_worker(worker: str | KindSettings) -> tuple[str, Any]:
    """``(kind name, kind settings or None)`` for a ``worker=`` argument.

    Anything else is passed on as the name: looking the kind up then raises ``ValueError``
    naming the kinds there are.
    """
    kind = getattr(worker, "kind", None)
    if isinstance(worker, str) or not isinstance(kind, str):
        return worker, None  # type: ignore[return-value]
    return kind, worker


def inherit_kind(worker: str | KindSettings, parent: PoolOptions | None) -> tuple[str, Any]:
    """:func:`split_worker` for an extra tied to a pool (a persistent worker, a service):
    a kind named as the pool's own gets the pool's settings (its cluster, say)."""
    kind, settings = split_worker(worker)
    if settings is None and parent is not None and kind == parent.worker:
        settings = parent.kind_options
    return kind, settings


def check_choice(name: str, value: str, accepted: tuple[str, ...]) -> Any:
    """``value`` when it is one of ``accepted``.

    Raises:
        TypeError: ``value`` is not a str.
        ValueError: ``value`` is not one of ``accepted``.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if value not in accepted:
        raise ValueError(f"{name} must be one of {', '.join(repr(v) for v in accepted)}, got {value!r}")
    return value


def check_initializer(initializer: Callable[..., Any] | None, initargs: Any) -> tuple[Any, ...]:
    """``initargs`` as a tuple, once ``initializer`` is a callable or None.

    Raises:
        TypeError: ``initializer`` is not callable, or ``initargs`` is not a tuple or list.
    """
    if initializer is not None and not callable(initializer):
        raise TypeError(f"initializer must be a callable or None, got {type(initializer).__name__}")
    if not isinstance(initargs, (tuple, list)):
        raise TypeError(f"initargs must be a tuple, got {type(initargs).__name__}")
    return tuple(initargs)


def check_name(what: str, value: str | None) -> str | None:
    """A non-empty str, or None."""
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{what} must be a non-empty str or None, got {value!r}")
    return value


class PoolOptions(msgspec.Struct, frozen=True, kw_only=True):
    """A pool's options, checked (see :meth:`checked`)."""

    pool_size: int
    worker: str
    max_queue: int | None = None
    task_timeout: float | None = None
    max_tasks_per_worker: int | None = None
    max_memory_per_worker: int | None = None
    restart: RestartPolicy = RestartPolicy()
    log_dir: str | None = None
    keep_records: int = 10_000
    name: str
    concurrency: int = 1
    max_message_size: int = DEFAULT_MAX_MESSAGE
    worker_output: WorkerOutput = "log"
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()
    on_worker_crash: OnWorkerCrash = "isolate"
    start_workers: StartWorkers = "eager"
    thread_name_prefix: str | None = None
    #: The logger a worker logs a failed initializer on (the executors: "concurrent.futures").
    init_logger: str = "taskpool"
    #: Hand workers calls beyond those they run (their kind's window). The executors turn
    #: it off: a call behind a blocking one in a process worker's window waits for it,
    #: where concurrent.futures gives it to the next idle worker.
    prefetch: bool = True
    #: The kind's settings object when ``worker=`` was one (e.g. ``RayWorkers``), else None.
    kind_options: Any = None

    @classmethod
    def checked(
        cls,
        *,
        pool_size: int | None,
        worker: str | KindSettings,
        max_queue: int | None,
        task_timeout: float | None,
        max_tasks_per_worker: int | None,
        max_memory_per_worker: int | None,
        restart: RestartPolicy | None,
        log_dir: str | os.PathLike[str] | None,
        keep_records: int,
        name: str,
        concurrency: int,
        max_message_size: int = 2**30,
        worker_output: str = "log",
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        on_worker_crash: str = "isolate",
        start_workers: str = "eager",
        thread_name_prefix: str | None = None,
        init_logger: str = "taskpool",
        prefetch: bool = True,
    ) -> PoolOptions:
        """Check every option; raise on the first bad one.

        Raises:
            TypeError: an option has the wrong type.
            ValueError: an option is out of range (the message names it and what is accepted).
        """
        if pool_size is None:
            pool_size = default_pool_size()
        elif isinstance(pool_size, bool) or not isinstance(pool_size, int):
            raise TypeError(f"pool_size must be an int >= 1 or None, got {type(pool_size).__name__}")
        elif not 1 <= pool_size <= MAX_WORKERS:
            raise ValueError(f"pool_size must be an int >= 1 and <= {MAX_WORKERS} or None, got {pool_size!r}")
        if isinstance(keep_records, bool) or not isinstance(keep_records, int) or keep_records < 0:
            raise ValueError(f"keep_records must be an int >= 0, got {keep_records!r}")
        worker, kind_options = split_worker(worker)
        if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(f"log_dir must be a path or None, got {type(log_dir).__name__}")
        return cls(
            pool_size=pool_size,
            worker=worker,
            max_queue=check_count("max_queue", max_queue),
            task_timeout=check_timeout("task_timeout", task_timeout),
            max_tasks_per_worker=check_count("max_tasks_per_worker", max_tasks_per_worker),
            max_memory_per_worker=check_count("max_memory_per_worker", max_memory_per_worker),
            restart=check_restart(restart, RestartPolicy()),
            log_dir=os.fspath(log_dir) if log_dir is not None else None,
            keep_records=keep_records,
            name=name,
            concurrency=check_count("concurrency", concurrency, maximum=MAX_WORKERS) or 1,
            max_message_size=check_count("max_message_size", max_message_size, minimum=2**16, maximum=2**32 - 1)
            or DEFAULT_MAX_MESSAGE,
            worker_output=check_worker_output(worker_output),
            initializer=initializer,
            initargs=check_initializer(initializer, initargs),
            on_worker_crash=check_choice("on_worker_crash", on_worker_crash, ON_WORKER_CRASH),
            start_workers=check_choice("start_workers", start_workers, START_WORKERS),
            thread_name_prefix=_check_prefix(thread_name_prefix),
            init_logger=init_logger,
            prefetch=bool(prefetch),
            kind_options=kind_options,
        )


def _check_prefix(value: str | None) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"thread_name_prefix must be a str or None, got {type(value).__name__}")
    return value or None
