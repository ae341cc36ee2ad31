"""Pool-level hooks (then, catch, race, all_settled) and user callbacks, run safely.

A callback that raises is logged and published as ``pool.hook_error``; it never breaks
the pool or changes a task's outcome. An async callback runs in the pool's task group,
inside a cancel scope of its own, so closing can cancel one that never returns (it is
then reported as a ``pool.hook_error`` too). Async callbacks made before the pool starts
wait for it.
"""

from __future__ import annotations

import contextvars
import inspect
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from ._loop import in_asyncio, out_of_asyncio
from ._types import HookErrorEvent

if TYPE_CHECKING:
    import anyio.abc

    from ._events import EventBus
    from ._log import Logger
    from ._task import Task

__all__ = ["KINDS", "Hooks", "in_hook"]

#: The hook lists a pool has, by the name of the method that adds to each.
KINDS = ("then", "catch", "race", "all_settled")

#: Set inside a pool's async hooks to the pool's core: work they add while it drains is accepted.
in_hook: contextvars.ContextVar[object] = contextvars.ContextVar("taskpool_in_hook", default=None)


class Hooks:
    """One pool's hooks, and the runner of every user callback it makes.

    Attributes:
        running: async callbacks started and not finished (drain waits for them).
        depth: sync callbacks running right now (intake stays open for them while closing).
    """

    def __init__(self, owner: object, bus: EventBus, log: Logger) -> None:
        self._owner = owner
        self._bus = bus
        self._log = log
        self.lists: dict[str, list[Callable[..., Any]]] = {k: [] for k in KINDS}
        #: Whether a then/catch/race hook exists (settling skips them all otherwise).
        self.per_task: bool = False
        #: Whether a round's tasks must be remembered (an ``all_settled`` hook exists).
        self.wants_rounds: bool = False
        self.running: int = 0
        self.depth: int = 0
        self._tg: anyio.abc.TaskGroup | None = None
        self._pending: list[tuple[str, Awaitable[Any], int | None]] = []
        self._scopes: set[anyio.CancelScope] = set()
        self._closed_reason: str | None = None
        self.on_finished: Callable[[], None] = _nothing  # the core re-checks drain

    def add(self, kind: str, cb: Callable[..., Any]) -> None:
        """Register ``cb`` as a ``kind`` hook.

        Raises:
            TypeError: ``cb`` is not callable.
        """
        if not callable(cb):
            raise TypeError(f"{kind}() needs a callable, got {type(cb).__name__}")
        self.lists[kind].append(cb)
        if kind == "all_settled":
            self.wants_rounds = True
        else:
            self.per_task = True

    # --- the pool's task group -----------------------------------------------------------

    def bind(self, tg: anyio.abc.TaskGroup) -> None:
        """Run async callbacks in ``tg`` from now on (and those made before start)."""
        self._tg = tg
        pending, self._pending = self._pending, []
        for kind, awaitable, task_id in pending:
            self._start(kind, awaitable, task_id)

    def unbind(self, reason: str) -> None:
        """The task group is gone: async callbacks made from now on cannot run."""
        self._tg = None
        self._closed_reason = reason

    def cancel_running(self, why: str) -> int:
        """Cancel every async callback still running; each reports ``pool.hook_error``.

        Returns how many were cancelled.
        """
        scopes = list(self._scopes)
        for scope in scopes:
            scope.cancel()
        self._closed_reason = why
        return len(scopes)

    # --- running callbacks -----------------------------------------------------------------

    def run(self, kind: str, cb: Callable[..., Any], args: tuple[Any, ...], task: Task[Any] | None) -> None:
        """Call ``cb(*args)``; an awaitable it returns runs in the pool's task group."""
        self.depth += 1
        try:
            ret = cb(*args)
        except Exception as exc:
            self.error(kind, exc, task.id if task is not None else None)
            return
        finally:
            self.depth -= 1
        if inspect.isawaitable(ret):
            task_id = task.id if task is not None else None
            if self._tg is not None:
                self._start(kind, ret, task_id)
            elif self._closed_reason is None:
                self._pending.append((kind, ret, task_id))  # before start: run once started
            else:
                if inspect.iscoroutine(ret):
                    ret.close()
                self.error(kind, RuntimeError(f"async {kind} could not run: {self._closed_reason}"), task_id)

    def _start(self, kind: str, awaitable: Awaitable[Any], task_id: int | None) -> None:
        assert self._tg is not None
        self.running += 1
        token = in_asyncio()  # hooks run from loop callbacks (a worker's batch of answers)
        try:
            self._tg.start_soon(self._await, kind, awaitable, task_id)
        finally:
            out_of_asyncio(token)

    async def _await(self, kind: str, awaitable: Awaitable[Any], task_id: int | None) -> None:
        in_hook.set(self._owner)
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                await awaitable
        except Exception as exc:
            self.error(kind, exc, task_id)
        finally:
            self._scopes.discard(scope)
            self.running -= 1
            if scope.cancelled_caught:
                self.error(kind, TimeoutError(f"async {kind} was cancelled: {self._closed_reason}"), task_id)
            self.on_finished()

    def error(self, kind: str, exc: BaseException, task_id: int | None) -> None:
        """Log and publish a callback's failure as ``pool.hook_error``."""
        self._log.error("hook raised", hook=kind, task_id=task_id, exc_info=exc)
        if self._bus.wants("pool.hook_error"):
            self._bus.emit(
                HookErrorEvent(
                    topic="pool.hook_error",
                    time=time.time(),
                    hook=kind,
                    error="".join(traceback.format_exception_only(type(exc), exc)).strip(),
                    task_id=task_id,
                )
            )

    # --- the pool's hooks --------------------------------------------------------------

    def settled(self, task: Task[Any], outcome: Any, ok: bool, first: bool) -> None:
        """Run ``race`` (for the first task of a round), then ``then`` or ``catch``."""
        lists = self.lists
        if first:
            for cb in lists["race"]:
                self.run("race", cb, (outcome, task), task)
        kind = "then" if ok else "catch"
        for cb in lists[kind]:
            self.run(kind, cb, (outcome, task), task)

    def drained(self, tasks: list[Task[Any]]) -> None:
        """Run ``all_settled`` with the round's tasks."""
        for cb in self.lists["all_settled"]:
            self.run("all_settled", cb, (tasks,), None)


def _nothing() -> None:
    return None
