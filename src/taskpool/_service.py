"""Kept-alive services: long-lived functions run in dedicated workers and kept running.

A service is a private pool with one worker per instance; each instance is one long
task (a server, a queue consumer) that is run again, per the service's
:class:`RestartPolicy`, whenever it returns or its worker dies::

    pool.keep_alive(serve, name="api", instances=2)
        └─ Service ── private pool (2 workers, role "service")
              ├─ instance 0: run serve() ─ ends ─ delay/backoff ─ run serve() ─ ...
              └─ instance 1: run serve() ─ ...

Events: ``service.started`` / ``exited`` / ``restarted`` / ``stopped`` (and ``broken``
when the restart limit is spent) on the parent pool's bus, plus the workers' own
``worker.*`` and ``worker.log`` events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from ._errors import TaskCancelled
from ._restart import Backoff, RestartPolicy
from ._task import Task, describe_error
from ._types import ServiceEvent, WorkerSnapshot

if TYPE_CHECKING:
    from ._pool import FunctionPool

__all__ = ["Service"]


class Service:
    """A function kept running in ``instances`` dedicated workers (``pool.keep_alive``).

    Attributes:
        name: the service's name.
        instances: how many copies run at once, each in a worker of its own.
        restart: the policy applied when an instance returns or its worker dies.
        runs: how many times each instance was started (index = instance).
    """

    def __init__(
        self,
        parent: FunctionPool,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        name: str,
        instances: int,
        restart: RestartPolicy,
        worker: str,
        grace: float,
    ) -> None:
        from ._pool import FunctionPool

        self.name = name
        self.instances = instances
        self.restart = restart
        self.worker_kind = worker
        self.grace = grace
        self._fn = fn
        self._args = args
        self._parent = parent
        self._pool = FunctionPool(
            instances,
            worker=worker,
            restart=RestartPolicy(mode="on-failure", delay=0.0, limit=None),
            keep_records=0,
            name=f"{parent.name}:{name}",
            log_dir=parent.log_dir,
        )
        self._pool._role = "service"
        self._pool._worker_buses.append(parent.events)
        self._pool._rebase(parent._next_worker_id(instances))
        self.runs = [0] * instances
        self._tasks: list[Task[Any] | None] = [None] * instances
        self._state = "new"
        self._stopping = False
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        self._broken: list[int] = []

    @property
    def state(self) -> str:
        """``"new"``, ``"running"``, ``"stopping"``, ``"stopped"`` or ``"broken"``."""
        return self._state

    async def run(self) -> None:
        """Run the service until stopped (the parent pool runs this in its task group)."""
        if self._state != "new":
            return
        self._state = "running"
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._stopping:
                    scope.cancel()
                await self._pool.start()
                async with anyio.create_task_group() as tg:
                    for i in range(self.instances):
                        tg.start_soon(self._instance, i)
        finally:
            with anyio.CancelScope(shield=True):
                await self._pool.aclose(cancel=True, grace=self.grace)
            if self._state != "broken":
                self._state = "stopped"
            self._emit("service.stopped", -1, reason=self._state)
            self._stopped.set()

    async def _instance(self, i: int) -> None:
        backoff = Backoff(self.restart)
        while not self._stopping:
            task = self._pool.add_task(self._fn, *self._args, meta={"service": self.name, "instance": i})
            self._tasks[i] = task
            self.runs[i] += 1
            backoff.up(time.monotonic())
            self._emit("service.started", i, attempt=backoff.attempt)
            try:
                await task
                failed, reason = False, "returned"
            except TaskCancelled:
                failed, reason = False, "cancelled"
            except Exception as exc:
                failed, reason = True, describe_error(exc) or "failed"
            except BaseException:
                task.cancel()  # we are being stopped
                raise
            self._emit("service.exited", i, reason=reason, worker_id=task.worker_id)
            if self._stopping:
                return
            delay = backoff.down(time.monotonic(), failed=failed, reason=reason)
            if delay is None:
                if backoff.exhausted:
                    self._broken.append(i)
                    self._emit("service.broken", i, reason="; ".join(backoff.last_failures))
                    self._parent._log.error(
                        "service instance broken", service=self.name, instance=i, failures=backoff.last_failures
                    )
                    if len(self._broken) == self.instances:
                        self._state = "broken"
                return
            await anyio.sleep(delay)
            self._emit("service.restarted", i, attempt=backoff.attempt, delay=delay, reason=reason)

    async def stop(self, *, grace: float | None = None) -> None:
        """Stop every instance and wait until they are gone.

        Async instances are cancelled in their workers; an instance that does not stop
        within ``grace`` seconds (default: the service's) has its worker killed.
        """
        if grace is not None:
            self.grace = grace
        self._stopping = True
        if self._state == "new":
            self._state = "stopped"
            self._stopped.set()
            return
        if self._state == "running":
            self._state = "stopping"
        if self._scope is not None:
            self._scope.cancel()
        await self._stopped.wait()

    aclose = stop

    async def wait(self) -> None:
        """Wait until the service has stopped (or broke)."""
        await self._stopped.wait()

    def _emit(self, topic: str, instance: int, **fields: Any) -> None:
        bus = self._parent.events
        if bus.wants(topic):
            bus.emit(ServiceEvent(topic=topic, time=time.time(), service=self.name, instance=instance, **fields))

    def snapshot_workers(self) -> list[WorkerSnapshot]:
        """The service's workers, for its parent pool's snapshot."""
        return self._pool.snapshot().workers

    def __repr__(self) -> str:
        return f"<Service {self.name!r} x{self.instances} {self._state} runs={self.runs}>"

