"""What code running inside a task can learn about where it runs, and ``publish``."""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["TaskContext", "current", "publish"]


class TaskContext:
    """Where the current code runs: set once per worker, updated per task (cheap)."""

    __slots__ = ("owner", "send", "task_id", "worker_id")

    def __init__(
        self,
        send: Callable[[str, Any, int | None], None],
        worker_id: int | None,
        owner: object = None,
    ) -> None:
        self.send = send
        self.worker_id = worker_id
        self.task_id: int | None = None
        self.owner = owner  # the pool, for inline tasks


current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("taskpool_current", default=None)


def publish(topic: str, data: Any = None) -> None:
    """Publish an event on the bus of the pool running the current task.

    Works from plain and async code on every worker kind and never blocks; the event
    is a ``UserEvent`` tagged with the task's and the worker's id. Outside a task it
    does nothing and returns.

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
        return
    # In a process worker the child's channel carries it (tagged with the call's id).
    child = sys.modules.get("taskpool._child")
    if child is not None and child._worker is not None:
        child.child_publish(topic, data)
