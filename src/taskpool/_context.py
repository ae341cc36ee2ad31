"""What code running inside a task can learn about where it runs, and ``publish``.

Every worker kind runs a task with :data:`current` set to a :class:`TaskContext`. It is a
context variable, so it follows the task into the coroutines it awaits, the asyncio tasks
it creates and the threads it starts with a copy of its context (``asyncio.to_thread``);
a thread started plainly (``threading.Thread``) starts with an empty context and is
outside the task. :func:`publish` reads :data:`current` and nothing else.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

__all__ = ["TaskContext", "attach_trace", "current", "detach_trace", "publish"]


class TaskContext:
    """Where the current code runs, and how it publishes.

    Attributes:
        send: ``send(topic, data, task_id)`` hands a published event to the pool; it must
            not block and may be called from any thread.
        worker_id: the worker's id in its pool (None where it is not known: in a process
            worker the parent tags the event with it).
        task_id: the running task's id (None between tasks).
        owner: the pool, for inline tasks.
    """

    __slots__ = ("owner", "send", "task_id", "worker_id")

    def __init__(
        self,
        send: Callable[[str, Any, int | None], None],
        worker_id: int | None,
        owner: object = None,
        task_id: int | None = None,
    ) -> None:
        self.send = send
        self.worker_id = worker_id
        self.task_id = task_id
        self.owner = owner


#: The context of the task running here, or None outside any task.
current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("taskpool_current", default=None)


def publish(topic: str, data: Any = None) -> None:
    """Publish an event on the bus of the pool running the current task.

    Works from plain and async code on every worker kind and never blocks; the event
    is a ``UserEvent`` tagged with the task's and the worker's id. Outside a task (no
    :data:`current` context, e.g. in a thread the task started without copying its
    context) it does nothing and returns.

    Raises:
        TypeError: ``topic`` is not a ``str``.
        ValueError: ``topic`` is empty.
        SerializationError: (process workers) ``data`` cannot be sent to the pool.
    """
    if not isinstance(topic, str):
        raise TypeError(f"publish() topic must be str, got {type(topic).__name__}")
    if not topic:
        raise ValueError("publish() topic must not be empty")
    ctx = current.get()
    if ctx is not None:
        ctx.send(topic, data, ctx.task_id)


#: taskpool.otel once a traced task needed it here; False where it does not import.
_otel: Any = None


def attach_trace(carrier: dict[str, str]) -> object:
    """Make a traced task's context (its submit span's, ``taskpool.otel``) current, on any
    worker kind; returns the token for :func:`detach_trace`. None (nothing to undo) where
    opentelemetry is not installed, say in a worker process: the call runs untraced."""
    global _otel
    if _otel is None:
        try:
            from taskpool import otel
        except ImportError:
            _otel = False
        else:
            _otel = otel
    return _otel.attach(carrier) if _otel else None


def detach_trace(token: object) -> None:
    """Undo :func:`attach_trace` (a None token: nothing to undo)."""
    if token is not None and _otel:
        _otel.detach(token)
