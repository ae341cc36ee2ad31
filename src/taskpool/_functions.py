"""How functions travel to a process worker: by reference or by value, once per worker.

A function goes by reference (:class:`FnRef`: module + qualname) when looking that name
up in an importable module gives back the very same object (bound methods of
module-level objects too, compared by value); anything else (lambdas, closures, local
functions, ``__main__``, ``functools.partial``) goes by value (:class:`FnValue`: pickle,
or cloudpickle when plain pickle refuses; in a multiprocessing spawning context, so a
``partial`` may hold a spawn-context lock: see :mod:`taskpool._mppickle`). The parent gives every distinct function a
small integer id (:class:`FunctionTable`); the first ``Call`` of an id to a worker
carries the definition, later ones only the id. Each worker remembers at most
``capacity`` ids; the parent evicts least recently used ones and tells the worker in
``Call.drop``, so the two sides never disagree.
"""

from __future__ import annotations

import collections
import functools
import importlib
import inspect
import itertools
import pickle
import sys
import types
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, Final, TypeAlias

from taskpool._errors import SerializationError
from taskpool._frames import Message
from taskpool._mppickle import dumps

__all__ = [
    "FnDef",
    "FnRef",
    "FnSlot",
    "FnValue",
    "FunctionTable",
    "define_function",
    "is_async_callable",
    "load_function",
]


class FnRef(Message, tag=100):
    """A function by reference: ``import module`` then follow ``qualname``."""

    module: str
    qualname: str


class FnValue(Message, tag=101):
    """A function by value: (cloud)pickle bytes (lambdas, closures, ``__main__``)."""

    pickle: bytes


FnDef: TypeAlias = FnRef | FnValue


class _Entry:
    __slots__ = ("__weakref__", "define", "fn_id")

    def __init__(self, fn_id: int, define: FnDef) -> None:
        self.fn_id = fn_id
        self.define = define


class FunctionTable:
    """Parent side, one per worker: which functions that worker already holds.

    :meth:`prepare` returns ``(fn_id, define, drop)`` for a :class:`Call`. Definitions are
    computed once per function object for the whole process (cached weakly, so a
    lambda made per task does not pile up); the per-worker part is an LRU of ids.

    Every prepared call must be sent, in the order prepared (the worker's table mirrors
    this one); prepare args first (:func:`taskpool._wire.dump_args`) so a failure there
    leaves no trace.
    """

    _ids = itertools.count(1)  # process-wide, never reused; next() is atomic
    _by_fn: ClassVar[weakref.WeakKeyDictionary[Any, _Entry]] = weakref.WeakKeyDictionary()
    _pinned: ClassVar[dict[Any, _Entry]] = {}  # by-reference callables that take no weakref

    def __init__(self, capacity: int = 512) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        self.capacity = capacity
        self._held: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._last: Any = None  # the function of the call before, when sent by reference
        self._last_id = 0

    def __len__(self) -> int:
        return len(self._held)

    @classmethod
    def _entry(cls, fn: Callable[..., Any]) -> tuple[int, FnDef]:
        try:
            e = cls._by_fn.get(fn)
        except TypeError:  # no weakref or unhashable
            try:
                e = cls._pinned.get(fn)
            except TypeError:
                return 0, define_function(fn)
        if e is not None:
            return e.fn_id, e.define
        d = define_function(fn)
        fn_id = next(cls._ids)
        entry = _Entry(fn_id, d)
        try:
            cls._by_fn[fn] = entry
        except TypeError:
            if not isinstance(d, FnRef):
                return 0, d  # neither weakref-able nor long-lived: a one-off
            cls._pinned[fn] = entry
        return fn_id, d

    def prepare(self, fn: Callable[..., Any]) -> tuple[int, FnDef | None, list[int]]:
        """``(fn_id, define, drop)`` for a Call of ``fn`` to this worker.

        Raises SerializationError when ``fn`` can be sent neither by reference nor by
        value."""
        if fn is self._last:  # the same function as the call before: held already, newest
            return self._last_id, None, []
        self._last = None  # (another function may evict it below)
        fn_id, d = self._entry(fn)
        if fn_id == 0:
            return 0, d, []
        held = self._held
        if type(d) is FnRef:  # module-level: alive anyway, so holding it keeps nothing alive
            self._last, self._last_id = fn, fn_id
        if fn_id in held:
            held.move_to_end(fn_id)
            return fn_id, None, []
        held[fn_id] = None
        drop: list[int] = []
        while len(held) > self.capacity:
            drop.append(held.popitem(last=False)[0])
        return fn_id, d, drop


def _lookup(module: str, qualname: str) -> Any:
    """The object at ``module.qualname`` in this process, or None."""
    obj: Any = sys.modules.get(module)
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
    except Exception:  # a module __getattr__ may raise anything: not by reference
        return None
    return obj


def define_function(fn: Callable[..., Any]) -> FnDef:
    """How ``fn`` travels: :class:`FnRef` when ``module`` + ``qualname`` (or plain name)
    looks up to this very object in an importable module, else :class:`FnValue`.

    Raises SerializationError when it cannot be pickled by value either."""
    if not callable(fn):
        raise SerializationError(f"cannot send function {fn!r}: {type(fn).__qualname__} is not callable")
    module = getattr(fn, "__module__", None)
    owner = getattr(fn, "__self__", None)
    if module is None and owner is not None:
        module = getattr(type(owner), "__module__", None)  # a builtin bound method: random.random
    if isinstance(module, str) and module != "__main__" and module in sys.modules and not _by_value_module(module):
        for name in (getattr(fn, "__qualname__", None), getattr(fn, "__name__", None)):
            if isinstance(name, str) and "<" not in name and _same(_lookup(module, name), fn):
                return FnRef(module, name)
    # Plain pickle first (taskpool._mppickle): a functools.partial of an importable function
    # (what keyword arguments become) pickles in ~1 us there, ~10 us with cloudpickle.
    try:
        return FnValue(dumps(fn))
    except Exception as exc:
        why = str(exc) if type(exc) is SerializationError else f"{type(exc).__name__}: {exc}"
        raise SerializationError(f"cannot send function {fn!r}: {why}") from exc


def _same(found: Any, fn: Any) -> bool:
    if found is fn:
        return True
    # Bound methods (``random.random`` is one, of a module-level instance) are made
    # afresh on every attribute access: compare those by value (same self, same function).
    if getattr(fn, "__self__", None) is None or not isinstance(found, _METHOD_TYPES):
        return False
    try:
        return bool(found == fn)
    except Exception:
        return False


_METHOD_TYPES: Final = (types.MethodType, types.BuiltinMethodType)


def _by_value_module(module: str) -> bool:
    # Honour cloudpickle.register_pickle_by_value() without importing cloudpickle.
    cp = sys.modules.get("cloudpickle.cloudpickle")
    registered: Any = getattr(cp, "_PICKLE_BY_VALUE_MODULES", ())
    return any(module == m or module.startswith(m + ".") for m in registered)


def load_function(define: FnDef) -> Callable[..., Any]:
    """Rebuild a function in the worker. Raises ImportError/AttributeError/unpickling
    errors as they come (the worker reports them as ``ERR_LOAD``)."""
    if isinstance(define, FnRef):
        obj: Any = importlib.import_module(define.module)
        for part in define.qualname.split("."):
            obj = getattr(obj, part)
        return obj  # type: ignore[no-any-return]
    fn = pickle.loads(define.pickle)  # noqa: S301 - our own parent
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    return fn  # type: ignore[no-any-return]


class FnSlot:
    """A worker's entry for a function definition received once, loaded on first use (so
    an import error fails the call that needs it, and later calls the same way)."""

    __slots__ = ("define", "error", "fn", "is_async", "quick", "runs", "tb")

    def __init__(self, define: FnDef | None, error: BaseException | None = None) -> None:
        self.define = define
        self.fn: Callable[..., Any] | None = None
        self.error = error
        self.tb = None if error is None else error.__traceback__
        self.is_async = False
        # Run time of its sync calls (seconds, averaged) and how many were timed: a function
        # known to be quick (see QUICK_CALL) does not get the output flushed before it.
        self.quick = float("inf")
        self.runs = 0

    def timed(self, seconds: float) -> None:
        """Count one sync call of ``seconds``."""
        self.runs += 1
        self.quick = seconds if self.runs == 1 else 0.7 * self.quick + 0.3 * seconds

    def resolve(self) -> Callable[..., Any]:
        if self.fn is not None:
            return self.fn
        if self.error is None:
            assert self.define is not None
            try:
                self.fn = load_function(self.define)
                self.is_async = is_async_callable(self.fn)
                self.define = None
                return self.fn
            except BaseException as exc:
                self.error, self.tb = exc, exc.__traceback__
        # Each raise adds a frame to __traceback__: start from the original every time.
        raise self.error.with_traceback(self.tb)


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` gives a coroutine: a coroutine function, possibly inside
    ``functools.partial`` (what keyword arguments become). Never raises."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn)
