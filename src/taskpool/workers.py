"""Worker kinds, for packages that add one: the protocol, the capabilities, the registry.

A kind is a :class:`Worker` subclass that declares its :class:`Capabilities` and talks to
its pool through :class:`WorkerHost`. Register it under a name with an entry point in the
``taskpool.workers`` group of your package's metadata::

    [project.entry-points."taskpool.workers"]
    mykind = "mypackage.workers:MyWorker"

or at run time with :func:`register_kind`; then ``FunctionPool(worker="mykind")`` uses it.
The pool decides by the capabilities, never by the kind's name, so a kind gets the same
hooks, status, events, timeouts, cancellation and supervision as the built-in ones.
"""

from __future__ import annotations

from ._workers import (
    ENTRY_POINT_GROUP,
    CancelResult,
    Capabilities,
    Worker,
    WorkerExit,
    WorkerHost,
    WorkerSpec,
    kind_names,
    register_kind,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Capabilities",
    "CancelResult",
    "Worker",
    "WorkerExit",
    "WorkerHost",
    "WorkerSpec",
    "kind_names",
    "register_kind",
]
