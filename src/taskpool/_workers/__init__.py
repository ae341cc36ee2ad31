"""Worker kinds: one module each behind the :class:`~taskpool._workers._base.Worker` protocol.

Kinds are found by name in a registry. The built-in kinds are registered here, imported
on first use (so a kind's dependencies load only if it is used); a third-party package
adds a kind with an entry point in the ``taskpool.workers`` group whose value is
``"module:Class"`` (a :class:`Worker` subclass), or at run time with :func:`register_kind`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading

from ._base import CancelResult, Capabilities, Worker, WorkerExit, WorkerHost, WorkerSpec

__all__ = [
    "ENTRY_POINT_GROUP",
    "Capabilities",
    "CancelResult",
    "Worker",
    "WorkerExit",
    "WorkerHost",
    "WorkerSpec",
    "backend",
    "kind_names",
    "register_kind",
]

ENTRY_POINT_GROUP = "taskpool.workers"

# kind -> "module:Class" (not imported yet) or the class itself.
_REGISTRY: dict[str, str | type[Worker]] = {
    "process": "taskpool._workers._process:ProcessWorker",
    "thread": "taskpool._workers._thread:ThreadWorker",
    "inline": "taskpool._workers._inline:InlineWorker",
    "ray": "taskpool._ray_worker:RayWorker",
}
_lock = threading.Lock()
_entry_points_read = False


def register_kind(name: str, target: str | type[Worker]) -> None:
    """Register a worker kind under ``name``: a :class:`Worker` subclass or ``"module:Class"``.

    Raises:
        TypeError: ``name`` is not a str, or ``target`` is neither a Worker subclass nor a str.
        ValueError: ``name`` is empty, or already names a different kind.
    """
    if not isinstance(name, str):
        raise TypeError(f"a worker kind's name must be a str, got {type(name).__name__}")
    if not name:
        raise ValueError("a worker kind's name must not be empty")
    if not (isinstance(target, str) or (isinstance(target, type) and issubclass(target, Worker))):
        raise TypeError(f"a worker kind must be a Worker subclass or 'module:Class', got {target!r}")
    with _lock:
        known = _REGISTRY.get(name)
        if known is not None and known != target:
            raise ValueError(f"worker kind {name!r} is already registered ({known!r})")
        _REGISTRY[name] = target


def _read_entry_points() -> None:
    global _entry_points_read
    with _lock:
        if _entry_points_read:
            return
        _entry_points_read = True
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            _REGISTRY.setdefault(ep.name, ep.value)


def kind_names() -> list[str]:
    """Every registered kind's name (built-in ones first)."""
    _read_entry_points()
    return list(_REGISTRY)


def backend(kind: str) -> type[Worker]:
    """The :class:`Worker` class registered as ``kind``.

    Raises:
        ValueError: no kind of that name is registered (the message lists those that are),
            or its target does not load as a Worker subclass.
    """
    if not isinstance(kind, str):  # the contract: any bad ``worker=`` is a ValueError
        raise ValueError(f"worker must be one of {', '.join(map(repr, kind_names()))}; got {kind!r}")  # noqa: TRY004
    target = _REGISTRY.get(kind)
    if target is None:
        _read_entry_points()
        target = _REGISTRY.get(kind)
    if target is None:
        raise ValueError(f"worker must be one of {', '.join(map(repr, kind_names()))}; got {kind!r}")
    if isinstance(target, str):
        module, _, name = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"worker kind {kind!r} could not be loaded from {target!r}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Worker)):
            # A bad registration, reported as a bad ``worker=``.
            raise ValueError(f"worker kind {kind!r} ({target!r}) is not a Worker subclass")  # noqa: TRY004
        with _lock:
            _REGISTRY[kind] = cls
        return cls
    return target
