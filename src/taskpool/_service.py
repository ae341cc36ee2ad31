"""Kept-alive services: long-lived functions run in dedicated workers and kept running.

A service runs a private pool core with one worker per instance; each instance is one long
task (a server, a queue consumer) that is run again, per the service's
:class:`RestartPolicy`, whenever it returns or its worker dies::

    pool.keep_alive(serve, name="api", instances=2)
        └─ Service ── private core (2 workers, role "service")
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

import time
from collections.abc import Callable
from typing import Any

import anyio

from ._core import PoolCore
from ._errors import TaskCancelled
from ._options import MAX_WORKERS, KindSettings, PoolOptions, check_count, check_grace, inherit_kind
from ._restart import Backoff, RestartPolicy
from ._status import worker_snapshots
from ._task import Task, describe_error
from ._types import ServiceEvent, ServiceState, WorkerSnapshot

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
        parent: PoolCore,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        name: str,
        instances: int,
        restart: RestartPolicy,
        worker: str | KindSettings,
        grace: float,
    ) -> None:
        instances = check_count("instances", instances, maximum=MAX_WORKERS) or 1
        self.name: str = name
        self.instances: int = instances
        self.restart: RestartPolicy = restart
        kind, kind_options = inherit_kind(worker, parent.options)
        self.worker_kind: str = kind
        self.grace: float = grace
        self._fn = fn
        self._args = args
        self._parent = parent
        options = PoolOptions(
            pool_size=instances,
            worker=kind,
            kind_options=kind_options,
            concurrency=1,  # one instance per worker
            restart=RestartPolicy(mode="on-failure", delay=0.0, limit=None),
            keep_records=0,
            name=f"{parent.name}:{name}",
            log_dir=parent.options.log_dir,
            worker_output=parent.options.worker_output,
        )
        # A cancelled async instance gets the whole stop grace before its worker is killed.
        self._core = PoolCore(
            options,
            role="service",
            first_worker_id=parent.reserve_worker_ids(instances),
            worker_buses=(parent.events,),
            cancel_grace=grace,
        )
        self.runs: list[int] = [0] * instances
        self._tasks: list[Task[Any] | None] = [None] * instances
        self._state = ServiceState.NEW
        self._stopping = False
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        self._broken: list[int] = []

    @property
    def state(self) -> ServiceState:
        """The :class:`ServiceState` (a str: ``"new"``, ``"running"``, ``"stopping"``,
        ``"stopped"`` or ``"broken"``)."""
        return self._state

    async def run(self) -> None:
        """Run the service until stopped (the parent pool runs this in its task group).

        Never raises (but for cancellation): a service that cannot start is broken, and
        says why in ``service.broken``; it never takes its pool down with it.
        """
        if self._state is not ServiceState.NEW:
            return
        self._state = ServiceState.RUNNING
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._stopping:
                    scope.cancel()
                await self._core.start()
                async with anyio.create_task_group() as tg:
                    for i in range(self.instances):
                        tg.start_soon(self._instance, i)
        except Exception as exc:
            self._state = ServiceState.BROKEN
            self._emit("service.broken", -1, reason=describe_error(exc) or "failed")
            self._parent.log.exception("service failed", service=self.name, exc_info=exc)
        finally:
            with anyio.CancelScope(shield=True):
                await self._core.aclose(cancel=True, grace=self.grace)
            if self._state is not ServiceState.BROKEN:
                self._state = ServiceState.STOPPED
            self._emit("service.stopped", -1, reason=self._state)
            self._stopped.set()

    async def _instance(self, i: int) -> None:
        backoff = Backoff(self.restart)
        while not self._stopping:
            task = self._core.add(self._fn, self._args, {"service": self.name, "instance": i}, None)
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
                    self._parent.log.error(
                        "service instance broken", service=self.name, instance=i, failures=backoff.last_failures
                    )
                    if len(self._broken) == self.instances:
                        self._state = ServiceState.BROKEN
                return
            await anyio.sleep(delay)
            self._emit("service.restarted", i, attempt=backoff.attempt, delay=delay, reason=reason)

    def _set_grace(self, grace: float) -> None:
        self.grace = grace
        self._core.sup.set_cancel_grace(grace)

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
        grace = check_grace("grace", grace)
        if grace is not None:
            self._set_grace(grace)
        self._stopping = True
        if self._state is ServiceState.NEW:
            self._state = ServiceState.STOPPED
            self._stopped.set()
            return
        if self._state is ServiceState.RUNNING:
            self._state = ServiceState.STOPPING
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
        if self._state is ServiceState.RUNNING:
            self._state = ServiceState.STOPPING
        self._core.sup.kill_all()
        if self._scope is not None:
            self._scope.cancel()

    @property
    def first_worker_id(self) -> int:
        """The id of instance 0's worker (instance ``i`` runs on ``first_worker_id + i``)."""
        return self._core.sched.slots[0].id

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
        return worker_snapshots(self._core)

    def __repr__(self) -> str:
        return f"<Service {self.name!r} x{self.instances} {self._state} runs={self.runs}>"
