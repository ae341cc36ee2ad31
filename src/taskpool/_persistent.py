"""Persistent workers: a module kept alive in a worker of its own, called through a proxy.

A proxy is a private one-worker :class:`FunctionPool` of the chosen kind; each call is a
task running ``getattr(module, name)(*args)`` in that worker. So calls through one proxy
run one at a time in call order (one worker, a FIFO queue), and timeouts, crashes and
restarts behave exactly as they do for pool tasks::

    proxy.add(1, 2) ──► private pool (1 worker) ──► worker: module.add(1, 2) ──► 3
                         FIFO queue, window 2          process: the child's import
                                                       thread/inline: a private copy

On a process worker the module is imported in the child (its ``sys.modules`` is its
own); on a thread or inline worker the module is executed afresh into a private module
object that is not put in ``sys.modules``, so each proxy has state of its own and the
module's top-level code runs only for the proxy (on the worker's thread).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import itertools
import threading
from collections.abc import Awaitable, Callable, Generator
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

from ._errors import PoolClosed, TaskpoolError, WorkerCrashed
from ._restart import RestartPolicy
from ._types import WorkerSnapshot

if TYPE_CHECKING:
    from ._pool import FunctionPool
    from ._task import Task

__all__ = ["PersistentWorker", "import_persistent_worker"]

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M")

_FUNCTION = "function"
_VALUE = "value"
_numbers = itertools.count(1)


# --- what runs in the worker -----------------------------------------------------------


def _exports(module: ModuleType) -> dict[str, str]:
    """The module's public names: ``"function"`` for callables, ``"value"`` for the rest."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    out = {}
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, ModuleType):
            continue
        out[name] = _FUNCTION if callable(value) else _VALUE
    return out


def remote_describe(module: str) -> dict[str, str]:
    """(In a process worker) import ``module`` and list its public names."""
    return _exports(importlib.import_module(module))


def remote_call(module: str, name: str, /, *args: Any, **kwargs: Any) -> Any:
    """(In a process worker) call ``module.name(*args)``; a coroutine is awaited by the worker."""
    return getattr(importlib.import_module(module), name)(*args, **kwargs)


def remote_getattr(module: str, name: str) -> Any:
    """(In a process worker) the current value of ``module.name``."""
    return getattr(importlib.import_module(module), name)


class PrivateModule:
    """A private copy of a module for thread and inline workers (not in ``sys.modules``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._module: ModuleType | None = None
        self._lock = threading.Lock()

    def load(self) -> ModuleType:
        """Execute the module afresh (once) and return it."""
        with self._lock:
            if self._module is None:
                spec = importlib.util.find_spec(self.name)
                if spec is None or spec.loader is None:
                    raise ModuleNotFoundError(f"no module named {self.name!r}", name=self.name)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                self._module = module
            return self._module

    def describe(self) -> dict[str, str]:
        return _exports(self.load())

    def call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.load(), name)(*args, **kwargs)

    def getattr(self, name: str) -> Any:
        return getattr(self.load(), name)


# --- the proxy ---------------------------------------------------------------------------


class PersistentWorker(Generic[M]):
    """An async proxy of a module living in a worker of its own.

    Functions of the module become async calls (``await proxy.add(1, 2)``); other public
    attributes are awaitable values (``await proxy.counter``). Unknown attributes raise
    ``AttributeError`` at once. Calls run one at a time, in the order they were made.
    Use :meth:`call` for a type-checked call: ``await proxy.call(mathmod.add, 1, 2)``.

    Raises (from calls):
        TaskTimeout: the call overran ``timeout`` (a process worker is then killed).
        WorkerCrashed: the worker died; every call pending on it fails the same way.
        PoolClosed: the proxy was terminated (a :class:`TaskpoolError`).
    """

    def __init__(
        self,
        module: str | ModuleType,
        *,
        worker: str = "process",
        timeout: float | None = None,
        restart: RestartPolicy | None = None,
        parent: FunctionPool | None = None,
    ) -> None:
        from ._pool import FunctionPool

        if isinstance(module, ModuleType):
            module_name = module.__name__
        elif isinstance(module, str) and module:
            module_name = module
        else:
            raise TypeError(f"module must be a dotted module name or a module, got {module!r}")
        if module_name == "__main__":
            raise ValueError("a persistent worker cannot import __main__; move the code to a module")
        if restart is not None and not isinstance(restart, RestartPolicy):
            raise TypeError(f"restart must be a RestartPolicy or None, got {type(restart).__name__}")
        self.module_name = module_name
        self.worker_kind = worker
        self._parent = parent
        number = next(_numbers)
        name = f"{parent.name if parent else 'persistent'}:{module_name}#{number}"
        self._pool = FunctionPool(
            1,
            worker=worker,
            task_timeout=timeout,
            restart=restart or RestartPolicy(mode="never"),
            keep_records=0,
            name=name,
            log_dir=parent.log_dir if parent is not None else None,
        )
        self._pool._role = "persistent"
        if parent is not None:
            self._pool._worker_buses.append(parent.events)
            self._pool._rebase(parent._next_worker_id(1))
        self._private = PrivateModule(module_name) if worker != "process" else None
        self._exports: dict[str, str] = {}
        self._pending: set[Task[Any]] = set()
        self._state = "new"
        self._pool.catch(self._on_failure)

    # --- lifecycle ------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The proxy's name in logs, events and snapshots."""
        return self._pool.name

    @property
    def exports(self) -> dict[str, str]:
        """The module's public names: ``"function"`` or ``"value"``."""
        return dict(self._exports)

    async def start(self) -> PersistentWorker[M]:
        """Start the worker and import the module there; returns the proxy.

        Raises:
            ImportError: the module cannot be found (``ModuleNotFoundError``) or imported.
            Exception: whatever the module's own top-level code raised while importing.
            RuntimeError: the proxy was already started.
            PoolBroken: the worker could not be started.
        """
        if self._state != "new":
            raise RuntimeError(f"persistent worker {self.name!r} was already started")
        self._state = "starting"
        try:
            await self._pool.start()
            if self._private is not None:
                task = self._pool.add_task(self._private.describe)
            else:
                task = self._pool.add_task(remote_describe, self.module_name)
            self._exports = await task
        except BaseException:
            self._state = "terminated"
            await self._pool.aclose(cancel=True)
            raise
        self._state = "running"
        if self._parent is not None:
            self._parent._extras.append(self)
        return self

    async def terminate(self) -> None:
        """Stop the worker; pending calls are cancelled, later calls raise ``PoolClosed``."""
        if self._state == "terminated":
            return
        self._state = "terminated"
        await self._pool.aclose(cancel=True)
        if self._parent is not None and self in self._parent._extras:
            self._parent._extras.remove(self)

    aclose = terminate

    async def __aenter__(self) -> PersistentWorker[M]:
        if self._state == "new":
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.terminate()

    # --- calls ----------------------------------------------------------------------

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Task[Any]:
        if self._state != "running":
            raise PoolClosed(f"persistent worker {self.name!r} is {self._state}")
        task = self._pool.add_task(fn, *args)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _call(self, name: str, *args: Any) -> Any:
        if self._private is not None:
            return await self._submit(functools.partial(self._private.call, name), *args)
        return await self._submit(remote_call, self.module_name, name, *args)

    async def _get(self, name: str) -> Any:
        if self._private is not None:
            return await self._submit(self._private.getattr, name)
        return await self._submit(remote_getattr, self.module_name, name)

    async def call(self, fn: Callable[P, Awaitable[R]] | Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the module's function ``fn`` (the function object or its name) in the worker.

        Typed: ``await proxy.call(mymodule.add, 1, 2)`` is checked against ``add``'s
        signature and returns its (awaited) return type. Keyword arguments are passed.

        Raises:
            AttributeError: the module has no such function.
        """
        name = fn if isinstance(fn, str) else getattr(fn, "__name__", None)
        if not isinstance(name, str) or self._exports.get(name) != _FUNCTION:
            raise AttributeError(f"module {self.module_name!r} has no function {name!r}")
        if self._private is not None:
            target = functools.partial(self._private.call, name, **kwargs)
        else:
            target = functools.partial(remote_call, self.module_name, name, **kwargs)
        return await self._submit(target, *args)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_exports", "_state", "_pool", "_private"):
            raise AttributeError(name)
        kind = self._exports.get(name)
        if kind is None:
            if self._state == "new":
                raise AttributeError(f"persistent worker for {self.module_name!r} is not started yet")
            raise AttributeError(f"module {self.module_name!r} has no attribute {name!r}")
        if kind == _FUNCTION:
            return functools.partial(self._call, name)
        return _Value(self, name)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._exports})

    def _on_failure(self, exc: BaseException, task: Task[Any]) -> None:
        # A crash loses the worker's state: calls queued behind the crashed one must not
        # silently run on a fresh worker as if nothing happened.
        if isinstance(exc, WorkerCrashed):
            for other in list(self._pending):
                if other is not task and not other.done():
                    self._pool._cancel_task(
                        other,
                        WorkerCrashed(
                            f"persistent worker {self.name!r} crashed before this call ran: {exc}",
                            worker_id=exc.worker_id,
                            exitcode=exc.exitcode,
                            signal=exc.signal,
                        ),
                    )

    def snapshot_workers(self) -> list[WorkerSnapshot]:
        """The proxy's worker, for its parent pool's snapshot."""
        return self._pool.snapshot().workers

    def __repr__(self) -> str:
        return f"<PersistentWorker {self.module_name!r} {self.worker_kind} {self._state}>"


class _Value:
    """``await proxy.attr``: the attribute's current value in the worker."""

    __slots__ = ("_name", "_proxy")

    def __init__(self, proxy: PersistentWorker[Any], name: str) -> None:
        self._proxy = proxy
        self._name = name

    def __await__(self) -> Generator[Any, None, Any]:
        return self._proxy._get(self._name).__await__()

    def __repr__(self) -> str:
        return f"<awaitable {self._proxy.module_name}.{self._name}>"


class _Starter(Generic[M]):
    """What ``import_persistent_worker`` returns: await it, or ``async with`` it."""

    __slots__ = ("_proxy",)

    def __init__(self, proxy: PersistentWorker[M]) -> None:
        self._proxy = proxy

    def __await__(self) -> Generator[Any, None, PersistentWorker[M]]:
        return self._proxy.start().__await__()

    async def __aenter__(self) -> PersistentWorker[M]:
        return await self._proxy.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._proxy.terminate()


def import_persistent_worker(
    module: str | M,
    *,
    worker: Literal["process", "thread", "inline"] | str = "process",
    timeout: float | None = None,
    restart: RestartPolicy | None = None,
) -> _Starter[M]:
    """Import ``module`` in a worker of its own and return an async proxy to it.

    ``await import_persistent_worker("pkg.mod")`` returns a started
    :class:`PersistentWorker`; ``async with import_persistent_worker("pkg.mod") as mod:``
    also terminates it at the end. ``timeout`` bounds each call; ``restart`` (default:
    never) replaces a crashed worker, whose state then starts over.

    Raises:
        TypeError: ``module`` is neither a dotted name nor a module.
        ValueError: bad ``worker``, ``timeout``, or ``module`` is ``__main__``.
    """
    return _Starter(PersistentWorker(module, worker=worker, timeout=timeout, restart=restart))  # type: ignore[arg-type]

