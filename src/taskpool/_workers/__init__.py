"""Worker kinds: one module each behind the :class:`~taskpool._workers._base.Worker` protocol."""

from __future__ import annotations

import importlib

from ._base import CancelResult, Worker, WorkerExit, WorkerHost, WorkerSpec

__all__ = ["KINDS", "CancelResult", "Worker", "WorkerExit", "WorkerHost", "WorkerSpec", "backend"]

# kind -> "module:class", imported on first use so a kind's dependencies load only if used.
KINDS: dict[str, str] = {
    "process": "taskpool._workers._process:ProcessWorker",
    "thread": "taskpool._workers._thread:ThreadWorker",
    "inline": "taskpool._workers._inline:InlineWorker",
}


def backend(kind: str) -> type[Worker]:
    """The :class:`Worker` class of ``kind``.

    Raises:
        ValueError: ``kind`` is not one of :data:`KINDS`.
    """
    try:
        target = KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"worker must be one of {', '.join(map(repr, KINDS))}; got {kind!r}") from None
    module, _, name = target.partition(":")
    cls: type[Worker] = getattr(importlib.import_module(module), name)
    return cls
