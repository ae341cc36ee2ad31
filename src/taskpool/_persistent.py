"""Persistent workers: a module kept alive in a worker of its own, called through a proxy.

A proxy runs a private one-worker pool core of the chosen kind; each call is a task
running ``getattr(module, name)(*args, **kwargs)`` in that worker. So calls through
one proxy run one at a time in the order they were made (one worker, a FIFO queue), and
timeouts and restarts behave as they do for pool tasks::

    proxy.add(1, 2) ──► private pool (1 worker) ──► worker: module.add(1, 2) ──► 3
      submitted at          FIFO queue                process: the child's own import
      call time                                       thread/inline: a private copy

On a kind whose workers are isolated interpreters (process) the module is imported in
the worker (its ``sys.modules`` is its own). On a kind sharing the pool's interpreter
(thread, inline) the module's source is executed afresh, on the worker, into a private
copy registered under a name of its own (``pkg.mod<taskpool-N>``, so dataclasses and
pickling work) and never under ``pkg.mod``: each proxy has state of its own, and the
parent's ``pkg.mod`` is untouched.

The proxy hears its worker's events as they happen (a listener of the private core):
when the worker dies, the calls still pending fail with :class:`WorkerCrashed` (they
must not silently run on a fresh worker whose state started over), and without a
restart policy the proxy is broken from then on, so later calls fail at once instead
of waiting for a worker that will never come. When the worker is
replaced (after a crash with a restart policy, or after a call that could not be
stopped overran its timeout), the next worker starts with a fresh copy of the module.
"""

from __future__ import annotations
import __future__

import functools
import importlib
import importlib.machinery
import importlib.util
import itertools
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

import anyio

from ._core import PoolCore
from ._errors import PoolBroken, PoolClosed, TaskCancelled, WorkerCrashed
from ._options import KindSettings, PoolOptions, check_restart, check_timeout, inherit_kind
from ._restart import RestartPolicy
from ._status import worker_snapshots
from ._types import PoolState, ProxyState, WorkerEvent, WorkerSnapshot
from ._wire import is_async_callable

if TYPE_CHECKING:
    from ._events import EventBus
    from ._task import Task

__all__ = ["PersistentWorker", "PersistentWorkerStarter", "import_persistent_worker"]

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M")

FUNCTION = "function"
COROUTINE = "coroutine"  # a coroutine function: a process worker can cancel it without a kill
VALUE = "value"
_FEATURE = type(__future__.annotations)  # `from __future__ import x` leaves these behind
_numbers = itertools.count(1)
_copies = itertools.count(1)


# --- what runs in the worker -----------------------------------------------------------


def exports_of(module: ModuleType) -> dict[str, str]:
    """The module's public names (its ``__all__``, else every name without a leading
    underscore), each ``"function"``, ``"coroutine"`` or ``"value"``.

    Submodules and ``__future__`` features are left out: they are not the module's API.
    """
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    out: dict[str, str] = {}
    for name in names:
        try:
            value = getattr(module, name)
        except AttributeError:  # __all__ names something the module lacks
            continue
        if isinstance(value, (ModuleType, _FEATURE)):
            continue
        if is_async_callable(value):
            out[name] = COROUTINE
        elif callable(value):
            out[name] = FUNCTION
        else:
            out[name] = VALUE
    return out


def remote_describe(module: str) -> dict[str, str]:
    """(In a process worker) import ``module`` and list its public names."""
    return exports_of(importlib.import_module(module))


def remote_call(module: str, name: str, /, *args: Any, **kwargs: Any) -> Any:
    """(In a process worker) call ``module.name(*args, **kwargs)``."""
    return getattr(importlib.import_module(module), name)(*args, **kwargs)


async def remote_acall(module: str, name: str, /, *args: Any, **kwargs: Any) -> Any:
    """(In a process worker) await ``module.name(*args, **kwargs)``; being a coroutine
    function itself, it tells the worker the call can be cancelled without a kill."""
    return await getattr(importlib.import_module(module), name)(*args, **kwargs)


def remote_getattr(module: str, name: str) -> Any:
    """(In a process worker) the current value of ``module.name``."""
    return getattr(importlib.import_module(module), name)


class PrivateModule:
    """A private copy of a module for thread and inline workers.

    The copy is executed on first use (on the worker), from the module's source file,
    under the name ``<name><taskpool-N>`` which it is registered under in
    ``sys.modules`` while it lives: classes defined in it resolve their module
    (dataclasses, ``typing.get_type_hints``, pickling), while ``sys.modules[name]`` is
    never touched. A module that is not a Python file (built-in or extension) cannot be
    copied: it is executed from its spec unregistered, and shares what the interpreter
    shares. :meth:`reset` drops the copy; the next use executes a fresh one.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._module: ModuleType | None = None
        self._key: str | None = None
        self._lock = threading.Lock()

    def load(self) -> ModuleType:
        """The copy, executed now if there is none yet."""
        with self._lock:
            if self._module is None:
                self._module = self._execute()
            return self._module

    def _execute(self) -> ModuleType:
        spec = importlib.util.find_spec(self.name)
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(f"no module named {self.name!r}", name=self.name)
        if spec.origin and isinstance(
            spec.loader, (importlib.machinery.SourceFileLoader, importlib.machinery.SourcelessFileLoader)
        ):
            key = f"{self.name}<taskpool-{next(_copies)}>"
            private = importlib.util.spec_from_file_location(
                key, spec.origin, submodule_search_locations=spec.submodule_search_locations
            )
            assert private is not None
            assert private.loader is not None
            module = importlib.util.module_from_spec(private)
            sys.modules[key] = module
            try:
                private.loader.exec_module(module)
            except BaseException:
                _forget(key)
                raise
            self._key = key
            return module
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def reset(self) -> None:
        """Drop the copy (its worker is gone); the next use executes a fresh one."""
        with self._lock:
            key, self._key, self._module = self._key, None, None
        if key is not None:
            _forget(key)

    def describe(self) -> dict[str, str]:
        return exports_of(self.load())

    def call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.load(), name)(*args, **kwargs)

    def getattr(self, name: str) -> Any:
        return getattr(self.load(), name)


def _forget(key: str) -> None:
    """Take a private copy (and submodules it imported relatively) out of ``sys.modules``."""
    prefix = key + "."
    for name in [n for n in sys.modules if n == key or n.startswith(prefix)]:
        sys.modules.pop(name, None)


# --- the proxy ---------------------------------------------------------------------------


class PersistentWorker(Generic[M]):
    """An async proxy of a module living in a worker of its own.

    Functions of the module become async calls (``await proxy.add(1, 2)``); other public
    attributes are awaitable values (``await proxy.counter``). Unknown attributes raise
    ``AttributeError`` at once. A call is submitted when it is made (not when it is
    awaited), and calls run one at a time, in the order they were made. Use :meth:`call`
    for a type-checked call: ``await proxy.call(mymodule.add, 1, 2)``.

    The proxy's own attributes (``name``, ``exports``, ``events``, ``start``,
    ``terminate``, ``aclose``, ``call``, ``module_name``, ``worker_kind``,
    ``snapshot_workers``) shadow module names that are the same: reach such a function
    with ``proxy.call("name")`` (a warning is logged at start).

    Raises (from calls):
        TaskTimeout: the call overran ``timeout`` (a call that cannot be stopped, such
            as blocking code, costs the worker: it is replaced and the state starts over).
        WorkerCrashed: the worker died; every call pending on it fails the same way.
        PoolBroken: the worker died earlier and there is no restart policy (or its limit
            is spent).
        PoolClosed: the proxy was terminated (a :class:`TaskpoolError`).
    """

    def __init__(
        self,
        module: str | ModuleType,
        *,
        worker: str | KindSettings = "process",
        timeout: float | None = None,
        restart: RestartPolicy | None = None,
        parent: PoolCore | None = None,
    ) -> None:
        if isinstance(module, ModuleType):
            module_name = module.__name__
        elif isinstance(module, str) and module:
            module_name = module
        else:
            raise TypeError(f"module must be a dotted module name or a module, got {module!r}")
        if module_name == "__main__":
            raise ValueError("a persistent worker cannot import __main__; move the code to a module")
        if "<taskpool-" in module_name:
            module_name = module_name.partition("<taskpool-")[0]  # a private copy: the real module
        restart = check_restart(restart, RestartPolicy(mode="never"))
        self.module_name = module_name
        kind, kind_options = inherit_kind(worker, parent.options if parent is not None else None)
        self.worker_kind: str = kind
        self._parent = parent
        name = f"{parent.name if parent else 'persistent'}:{module_name}#{next(_numbers)}"
        options = PoolOptions(
            pool_size=1,
            worker=kind,
            kind_options=kind_options,
            task_timeout=check_timeout("timeout", timeout),
            concurrency=1,  # one call at a time: the proxy's order guarantee
            restart=restart,
            keep_records=0,
            name=name,
            log_dir=parent.options.log_dir if parent is not None else None,
            worker_output=parent.options.worker_output if parent is not None else "log",
        )
        self._core = PoolCore(
            options,
            role="persistent",
            first_worker_id=parent.reserve_worker_ids(1) if parent is not None else 0,
            worker_buses=(parent.events,) if parent is not None else (),
        )
        self._core.worker_listeners.append(self._worker_event)
        if not self._core.capabilities.keeps_order:
            raise ValueError(
                f"worker={worker!r} does not run calls in the order they were made; a persistent worker needs that"
            )
        # A kind sharing the pool's interpreter gets a private copy of the module.
        self._private = None if self._core.capabilities.isolated else PrivateModule(module_name)
        self._exports: dict[str, str] = {}
        self._pending: set[Task[Any]] = set()
        self._state = ProxyState.NEW
        self._broken: str | None = None

    # --- lifecycle ------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The proxy's name in logs, events and snapshots."""
        return self._core.name

    @property
    def exports(self) -> dict[str, str]:
        """The module's public names, each ``"function"`` or ``"value"`` (learned at start)."""
        return {n: VALUE if k == VALUE else FUNCTION for n, k in self._exports.items()}

    @property
    def events(self) -> EventBus:
        """The proxy's own event bus: its worker's ``worker.*`` and ``worker.log`` events
        (a pool-bound proxy also publishes them on its pool's bus)."""
        return self._core.events

    async def start(self) -> PersistentWorker[M]:
        """Start the worker and import the module there; returns the proxy.

        Raises:
            ImportError: the module cannot be found (``ModuleNotFoundError``) or imported.
            Exception: whatever the module's own top-level code raised while importing.
            WorkerCrashed: the worker died while importing the module.
            RuntimeError: the proxy was already started.
            PoolClosed: the pool it is tied to is closing or closed.
            PoolBroken: the worker could not be started.
        """
        if self._state is not ProxyState.NEW:
            raise RuntimeError(f"persistent worker {self.name!r} was already started")
        parent = self._parent
        if parent is not None and parent.state not in (PoolState.NEW, PoolState.RUNNING, PoolState.CLOSING):
            raise PoolClosed(f"pool {parent.name!r} is {parent.state}")
        self._state = ProxyState.STARTING
        core = self._core
        try:
            await core.start()
            if self._private is not None:
                task = core.add(self._private.describe, (), None, None)
            else:
                task = core.add(remote_describe, (self.module_name,), None, None)
            self._exports = await task
        except BaseException:
            self._state = ProxyState.TERMINATED
            with anyio.CancelScope(shield=True):
                await core.aclose(cancel=True)
            if self._private is not None:
                self._private.reset()
            raise
        if self._state is not ProxyState.STARTING:  # terminate() was called meanwhile
            raise PoolClosed(f"persistent worker {self.name!r} was terminated while starting")
        self._state = ProxyState.RUNNING
        shadowed = sorted(n for n in self._exports if n in _OWN)
        if shadowed:
            core.log.warning(
                "module names shadowed by the proxy's own attributes; call them with proxy.call(name)",
                module=self.module_name,
                names=shadowed,
            )
        if parent is not None:
            if parent.state in (PoolState.CLOSED, PoolState.BROKEN) or parent.stopping:
                # The pool began stopping its workers while we started: it would never stop us.
                await self.terminate()
                raise PoolClosed(f"pool {parent.name!r} is {parent.state}")
            parent.attach(self)
        return self

    async def terminate(self) -> None:
        """Stop the worker; pending calls are cancelled, later calls raise ``PoolClosed``.

        Safe to call more than once. A blocking call running on a thread worker cannot
        be stopped: the thread is abandoned and ends when the call returns.
        """
        if self._state is not ProxyState.TERMINATED:
            self._state = ProxyState.TERMINATED
            for task in list(self._pending):
                if not task.done():
                    self._core.cancel_task(task, TaskCancelled(f"persistent worker {self.name!r} was terminated"))
        with anyio.CancelScope(shield=True):
            await self._core.aclose(cancel=True)
        if self._private is not None:
            self._private.reset()
        if self._parent is not None:
            self._parent.detach(self)

    aclose = terminate

    async def __aenter__(self) -> PersistentWorker[M]:
        if self._state is ProxyState.NEW:
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
        if self._state is not ProxyState.RUNNING:
            what = "not started yet" if self._state in (ProxyState.NEW, ProxyState.STARTING) else self._state
            raise PoolClosed(f"persistent worker {self.name!r} is {what}")
        if self._broken is not None:
            raise PoolBroken(self._broken)
        task = self._core.add(fn, args, None, None)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    def _invoke(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Coroutine[Any, Any, Any]:
        """Submit ``module.name(*args, **kwargs)`` now; the coroutine returned waits for it."""
        try:
            if self._private is not None:
                task = self._submit(functools.partial(self._private.call, name, **kwargs), *args)
            else:
                fn = remote_acall if self._exports.get(name) == COROUTINE else remote_call
                if kwargs:
                    task = self._submit(functools.partial(fn, self.module_name, name, **kwargs), *args)
                else:
                    task = self._submit(fn, self.module_name, name, *args)
        except Exception as exc:
            return _raise(exc)
        return _wait(task)

    def _read(self, name: str) -> Coroutine[Any, Any, Any]:
        try:
            if self._private is not None:
                task = self._submit(self._private.getattr, name)
            else:
                task = self._submit(remote_getattr, self.module_name, name)
        except Exception as exc:
            return _raise(exc)
        return _wait(task)

    @overload
    def call(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]: ...
    @overload
    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]: ...
    @overload
    def call(self, fn: str, /, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]: ...

    def call(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Call the module's function ``fn`` (the function object or its name) in the worker.

        Typed: ``await proxy.call(mymodule.add, 1, 2)`` is checked against ``add``'s
        signature (a type checker sees the parent's ``mymodule``) and gives its return
        type, awaited for a coroutine function. The function is looked up by
        ``__name__`` in the worker's module. Keyword arguments are passed.

        Raises:
            AttributeError: the module has no such function (at once, not when awaited).
        """
        name = fn if isinstance(fn, str) else getattr(fn, "__name__", None)
        if not isinstance(name, str) or self._exports.get(name) not in (FUNCTION, COROUTINE):
            if self._state in (ProxyState.NEW, ProxyState.STARTING):
                raise AttributeError(f"persistent worker for {self.module_name!r} is not started yet")
            raise AttributeError(f"module {self.module_name!r} has no function {name!r}")
        return self._invoke(name, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "_exports" not in self.__dict__:
            raise AttributeError(name)
        kind = self._exports.get(name)
        if kind is None:
            if self._state in (ProxyState.NEW, ProxyState.STARTING):
                raise AttributeError(f"persistent worker for {self.module_name!r} is not started yet")
            raise AttributeError(f"module {self.module_name!r} has no attribute {name!r}")
        if kind == VALUE:
            return _Value(self, name)
        return _Method(self, name)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._exports})

    def _worker_event(self, event: WorkerEvent) -> None:
        """The worker ended (called while the core puts its books right)."""
        if event.topic != "worker.exited":
            return
        if self._private is not None:
            self._private.reset()  # the worker's copy goes with it: a new worker starts over
        if self._state is not ProxyState.RUNNING or event.reason in ("retired", "recycled"):
            # Terminating; or replaced at once because a call overran its timeout and
            # could not be stopped: the calls behind it run on the fresh worker.
            return
        why = f"persistent worker {self.name!r} died ({event.reason})"
        for task in list(self._pending):  # the running call already failed the same way
            if not task.done():
                self._core.cancel_task(
                    task,
                    WorkerCrashed(
                        f"{why} before this call ran",
                        worker_id=event.worker_id,
                        exitcode=event.exitcode,
                        signal=event.signal,
                    ),
                )
        if not self._core.options.restart.should_restart(failed=True):
            self._broken = (
                f"{why} and it has no restart policy: pass restart=RestartPolicy() to get a fresh "
                "worker after a crash, or start a new proxy"
            )

    def snapshot_workers(self) -> list[WorkerSnapshot]:
        """The proxy's worker, for its parent pool's snapshot."""
        return worker_snapshots(self._core)

    def __repr__(self) -> str:
        state: str = self._state
        if state == ProxyState.RUNNING and (self._broken is not None or self._core.state is PoolState.BROKEN):
            state = "broken"
        return f"<PersistentWorker {self.module_name!r} {self.worker_kind} {state}>"


_OWN = frozenset(n for n in dir(PersistentWorker) if not n.startswith("_")) | {"module_name", "worker_kind"}


async def _wait(task: Task[Any]) -> Any:
    return await task


async def _raise(exc: BaseException) -> Any:
    raise exc


class _Method:
    """``proxy.fn``: calling it submits the call at once and returns a coroutine for its result."""

    __slots__ = ("_name", "_proxy")

    def __init__(self, proxy: PersistentWorker[Any], name: str) -> None:
        self._proxy = proxy
        self._name = name

    @property
    def __name__(self) -> str:
        return self._name

    def __call__(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        return self._proxy._invoke(self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<persistent function {self._proxy.module_name}.{self._name}>"


class _Value:
    """``await proxy.attr``: the attribute's current value in the worker."""

    __slots__ = ("_name", "_proxy")

    def __init__(self, proxy: PersistentWorker[Any], name: str) -> None:
        self._proxy = proxy
        self._name = name

    def __await__(self) -> Generator[Any, None, Any]:
        return self._proxy._read(self._name).__await__()

    def __repr__(self) -> str:
        return f"<awaitable {self._proxy.module_name}.{self._name}>"


class PersistentWorkerStarter(Generic[M]):
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


@overload
def import_persistent_worker(
    module: str,
    *,
    worker: str | KindSettings = ...,
    timeout: float | None = ...,
    restart: RestartPolicy | None = ...,
) -> PersistentWorkerStarter[Any]: ...
@overload
def import_persistent_worker(
    module: M,
    *,
    worker: str | KindSettings = ...,
    timeout: float | None = ...,
    restart: RestartPolicy | None = ...,
) -> PersistentWorkerStarter[M]: ...


def import_persistent_worker(
    module: str | Any,
    *,
    worker: str | KindSettings = "process",
    timeout: float | None = None,
    restart: RestartPolicy | None = None,
) -> PersistentWorkerStarter[Any]:
    """Import ``module`` in a worker of its own and return an async proxy to it.

    ``await import_persistent_worker("pkg.mod")`` returns a started
    :class:`PersistentWorker`; ``async with import_persistent_worker("pkg.mod") as mod:``
    also terminates it at the end. ``timeout`` bounds each call; ``restart`` (default:
    none) replaces a crashed worker, whose state then starts over.

    Raises:
        TypeError: ``module`` is neither a dotted name nor a module.
        ValueError: bad ``worker``, ``timeout``, or ``module`` is ``__main__``.
    """
    return PersistentWorkerStarter(PersistentWorker(module, worker=worker, timeout=timeout, restart=restart))
