"""What a pool has tied to it, beside its tasks: persistent workers, kept-alive services,
the status server, and executors (a base of :class:`~taskpool.FunctionPool`)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVarTuple

from ._options import KindSettings, check_callable, check_grace, check_name, check_restart
from ._persistent import PersistentWorker, PersistentWorkerStarter
from ._restart import RestartPolicy
from ._service import Service

if TYPE_CHECKING:
    from ._core import PoolCore
    from .executor import PoolExecutor
    from .web._server import StatusServer

__all__ = ["PoolAttachments"]

Ts = TypeVarTuple("Ts")


class PoolAttachments:
    """The methods of :class:`~taskpool.FunctionPool` that tie things to its life."""

    _core: PoolCore
    name: str

    async def serve_status(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        *,
        title: str | None = None,
        announce: bool = True,
    ) -> StatusServer:
        """Serve :func:`taskpool.web.status_app` for this pool over HTTP, in this event loop.

        Listens on ``host``:``port`` (loopback and a free port by default) before it
        returns. ``token=None`` makes a random token (printed to stderr with the URL
        unless ``announce=False``); ``token=""`` serves without one. The server is
        closed with the pool, or by ``await server.aclose()``; its event streams end
        first, so closing never waits on a dashboard left open.

        Raises:
            ImportError: the ``taskpool[web]`` extra (uvicorn) is not installed.
            PoolClosed: the pool is closing or closed.
            TypeError, ValueError: a bad ``host``, ``port`` or ``token``.
            OSError: the address cannot be bound.
        """
        from .web._server import serve_status

        return await serve_status(self, host, port, token, title=title, announce=announce)

    # --- persistent workers and services ---------------------------------------------------

    def import_persistent_worker(
        self,
        module: str | ModuleType,
        *,
        worker: str | KindSettings = "process",
        timeout: float | None = None,
        restart: RestartPolicy | None = None,
    ) -> PersistentWorkerStarter[Any]:
        """Like :func:`taskpool.import_persistent_worker`, tied to this pool's life.

        The worker does not count toward ``pool_size``; it shows in :meth:`snapshot`,
        publishes its ``worker.*`` events on this pool's bus, and is terminated when the
        pool closes.

        Raises:
            PoolClosed: the pool is closing or closed.
            TypeError, ValueError: as :func:`taskpool.import_persistent_worker`.
        """
        self._core.check_open()
        return PersistentWorkerStarter(
            PersistentWorker(module, worker=worker, timeout=timeout, restart=restart, parent=self._core)
        )

    def keep_alive(
        self,
        fn: Callable[[*Ts], Any],
        /,
        *args: *Ts,
        name: str,
        instances: int = 1,
        restart: RestartPolicy | None = None,
        worker: str | KindSettings = "process",
        grace: float = 5.0,
    ) -> Service:
        """Run ``fn(*args)`` in ``instances`` dedicated workers and keep it running.

        Each instance is run again per ``restart`` (default
        ``RestartPolicy(mode="always")``) whenever it returns or its worker dies, until
        ``await service.stop()`` or the pool closes. The service's workers do not count
        toward ``pool_size``; they show in :meth:`snapshot`, and ``service.*`` events are
        published on this pool's bus.

        Raises:
            TypeError: ``fn`` is not callable, or ``restart`` is not a RestartPolicy.
            ValueError: ``name`` is empty or taken, ``instances`` out of 1..1024, bad
                ``worker`` or ``grace``.
            PoolClosed: the pool is closing or closed.
        """
        check_callable("keep_alive()", fn)
        if check_name("keep_alive() name", name) is None:
            raise ValueError("keep_alive() name must be a non-empty str, got None")
        core = self._core
        if any(isinstance(e, Service) and e.name == name for e in core.extras):
            raise ValueError(f"keep_alive() name {name!r} is already used by a service of this pool")
        restart = check_restart(restart, RestartPolicy(mode="always"))
        grace = check_grace("grace", grace, optional=False) or 0.0
        core.check_open()
        service = Service(core, fn, args, name=name, instances=instances, restart=restart, worker=worker, grace=grace)
        core.attach(service, run=service.run)
        return service

    def executor(self) -> PoolExecutor:
        """A :class:`concurrent.futures.Executor` running calls on this (started) pool.

        For ``loop.run_in_executor``, ``loop.set_default_executor`` and libraries that
        take an executor; usable from any thread, the pool's own included (its
        ``submit`` never blocks). Its futures follow ``concurrent.futures``: ``running()``
        once the call started, ``cancel()`` True only when the call will never run. Its
        ``shutdown()`` ends its own intake (and waits for its own calls when asked) and
        leaves the pool running.

        Raises:
            RuntimeError: the pool was not started.
            PoolClosed: the pool is closing or closed.
        """
        from .executor import PoolExecutor

        return PoolExecutor(self)
