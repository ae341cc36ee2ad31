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

Stopping cancels each instance's task: an async instance is cancelled in its worker and
gets the service's ``grace`` (set as its workers' cancel grace) before the worker is
killed; a blocking one is killed at once (a process) or abandoned (a thread).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import anyio
import msgspec

from ._errors import TaskCancelled
from ._pool import FunctionPool
from ._restart import Backoff, RestartPolicy
from ._task import Task, describe_error
from ._types import ServiceEvent, WorkerSnapshot

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
            concurrency=1,  # one instance per worker
            restart=RestartPolicy(mode="on-failure", delay=0.0, limit=None),
            keep_records=0,
            name=f"{parent.name}:{name}",
            log_dir=parent.log_dir,
        )
        # A cancelled async instance gets the whole stop grace before its worker is killed.
        self._pool._spec = msgspec.structs.replace(self._pool._spec, cancel_grace=grace)
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
        """Run the service until stopped (the parent pool runs this in its task group).

        Never raises (but for cancellation): a service that cannot start is broken, and
        says why in ``service.broken``; it never takes its pool down with it.
        """
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
        except Exception as exc:
            self._state = "broken"
            self._emit("service.broken", -1, reason=describe_error(exc) or "failed")
            self._parent._log.error("service failed", service=self.name, exc_info=exc)
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
            except BaseException:  # we are being stopped
                task.cancel()
                self._emit("service.exited", i, reason="stopped", worker_id=task.worker_id)
                raise
            self._emit("service.exited", i, reason=reason, worker_id=task.worker_id)
            if self._stop_asked():  # (a method: an await above may have changed it)
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

    def _set_grace(self, grace: float) -> None:
        # The workers read the cancel grace from their spec when they cancel a call.
        self.grace = grace
        self._pool._spec = msgspec.structs.replace(self._pool._spec, cancel_grace=grace)
        for slot in self._pool._sched.slots:
            if slot.worker is not None:
                slot.worker.spec = msgspec.structs.replace(slot.worker.spec, cancel_grace=grace)

    def _stop_asked(self) -> bool:
        return self._stopping

    async def stop(self, *, grace: float | None = None) -> None:
        """Stop every instance and wait until they are gone.

        Async instances are cancelled in their workers; an instance that does not stop
        within ``grace`` seconds (default: the service's) has its worker killed. A
        blocking (plain) instance cannot be interrupted: a process worker is killed at
        once, a thread is abandoned.

        Raises:
            ValueError: ``grace`` is negative.
        """
        if grace is not None:
            if not math.isfinite(grace) or grace < 0:
                raise ValueError(f"grace must be a finite number of seconds >= 0, got {grace!r}")
            self._set_grace(grace)
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

    def kill(self) -> None:
        """Kill every instance's worker now, without grace (a second Ctrl-C).

        The service then stops as :meth:`stop` does; await :meth:`wait` for it. Threads
        cannot be killed: a thread instance stuck in blocking code is abandoned.
        """
        self._stopping = True
        self._set_grace(0.0)
        if self._state == "running":
            self._state = "stopping"
        for slot in self._pool._sched.slots:
            if slot.worker is not None:
                slot.worker.kill()
        if self._scope is not None:
            self._scope.cancel()

    def instance_of(self, worker_id: int) -> int | None:
        """The instance running on worker ``worker_id`` now (None: none or not known)."""
        for i, task in enumerate(self._tasks):
            if task is not None and task.worker_id == worker_id and not task.done():
                return i
        return None

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
