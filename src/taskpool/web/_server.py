"""Serving the status app: in the pool's own loop with uvicorn, and uvicorn's shutdown.

``pool.serve_status()`` runs a uvicorn server as a task in the pool's loop, on a socket
bound before it returns (so ``url`` works at once, ``port=0`` included), without taking
over the program's signal handlers, logging configuration or lifespan. It is tied to
the pool (one of the core's extras): closing the pool closes it.

uvicorn's graceful shutdown waits for every open response to finish, and an event
stream never does: one dashboard left open would hold a service's shutdown for as long
as uvicorn's ``timeout_graceful_shutdown`` (forever by default). So this module wraps
``uvicorn.Server.shutdown`` once, when ``taskpool.web`` is imported: before uvicorn waits,
the event streams of status apps served by that server are ended (each client gets
``event: end``). Any server can do the same by calling :meth:`StatusApp.close`.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import socket
import sys
from typing import TYPE_CHECKING, Any

from .._errors import PoolClosed
from .._types import PoolState, WorkerSnapshot
from ._app import _APPS, StatusApp

if TYPE_CHECKING:
    from ._report import PoolLike

__all__ = ["StatusServer", "patch_uvicorn", "serve_status"]


def _uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(
            "serving the status page needs uvicorn: install the extra with pip install 'taskpool[web]'"
        ) from exc
    return uvicorn


class StatusServer:
    """A status app served over HTTP in the pool's loop (see :meth:`FunctionPool.serve_status`).

    Attributes:
        url: where it listens, e.g. ``http://127.0.0.1:41234/`` (without the token).
        token: the token it asks for (``None``: open).
        app: the :class:`~taskpool.web.StatusApp` it serves.
    """

    def __init__(self, app: StatusApp, url: str, server: Any, task: asyncio.Task[None]) -> None:
        self.app: StatusApp = app
        self.url: str = url
        self.token: str | None = app.token
        self._server = server
        self._task = task
        self._closed = False

    @property
    def url_with_token(self) -> str:
        """:attr:`url` with ``?token=...`` (what to open in a browser)."""
        return self.url if self.token is None else f"{self.url}?token={self.token}"

    async def aclose(self) -> None:
        """Stop serving: event streams end first, then the server closes (within ~1 s)."""
        if self._closed:
            return
        self._closed = True
        core = self.app._core
        if self in core.extras:
            core.extras.remove(self)
        self.app.close()
        self._server.should_exit = True
        if not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 2.0)
            except TimeoutError:
                self._server.force_exit = True
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)

    def snapshot_workers(self) -> list[WorkerSnapshot]:
        """No workers of its own (part of the pool's extras protocol)."""
        return []

    def __repr__(self) -> str:
        return f"<StatusServer {self.url} {'closed' if self._closed else 'serving'}>"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto
    # says TCP; without it Nagle holds each response's body behind its headers (~40 ms a request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)  # connections queue from now on, before uvicorn accepts
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_status(
    pool: PoolLike,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    *,
    title: str | None = None,
    announce: bool = True,
) -> StatusServer:
    """See :meth:`FunctionPool.serve_status`."""
    uvicorn = _uvicorn()
    if not isinstance(host, str) or not host:
        raise TypeError(f"host must be a non-empty str, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    if token is not None and not isinstance(token, str):
        raise TypeError(f"token must be a str or None, got {type(token).__name__}")
    core = pool._core
    if core.state in (PoolState.CLOSING, PoolState.CLOSED):
        raise PoolClosed(f"pool {pool.name!r} is {core.state}: cannot serve its status")
    made_token = token is None
    app = StatusApp(pool, token=secrets.token_hex(16) if token is None else (token or None), title=title)
    sock = _bind(host, port)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    url = f"http://{shown}:{bound[1]}/"

    class _Server(uvicorn.Server):  # type: ignore[misc,name-defined]
        def capture_signals(self) -> Any:  # the program's signals stay the program's
            import contextlib

            return contextlib.nullcontext()

    config = uvicorn.Config(
        app,
        log_config=None,  # leave the program's logging alone
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1.0,
        server_header=False,
    )
    server = _Server(config)
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    original_startup = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original_startup(sockets)
        if not ready.done():
            ready.set_result(None)

    server.startup = startup
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name=f"taskpool status {url}")
    try:
        await asyncio.wait({ready, task}, return_when="FIRST_COMPLETED")
    finally:
        if not ready.done():
            ready.cancel()
    if task.done():
        sock.close()
        exc = task.exception() if not task.cancelled() else None
        raise OSError(f"the status server at {url} did not start: {exc!r}")
    status = StatusServer(app, url, server, task)
    core.extras.append(status)  # closed with the pool
    if announce and made_token:
        print(f"taskpool: status of pool {pool.name!r} at {status.url_with_token}", file=sys.stderr, flush=True)
    return status


def patch_uvicorn() -> None:
    """Make uvicorn end status apps' event streams before its graceful shutdown waits."""
    try:
        from uvicorn.server import Server
    except ImportError:
        return
    if getattr(Server.shutdown, "_taskpool", False):
        return
    original = Server.shutdown

    @functools.wraps(original)
    async def shutdown(self: Any, sockets: list[socket.socket] | None = None) -> None:
        tasks = getattr(getattr(self, "server_state", None), "tasks", None)
        listening: set[object] = set()
        for srv in getattr(self, "servers", None) or ():
            for sock in getattr(srv, "sockets", None) or ():
                name = sock.getsockname()
                listening.add(name[1] if isinstance(name, tuple) else name)  # port, or a Unix path
        for app in list(_APPS):
            app.end_streams_in(tasks, listening)
        await original(self, sockets)

    shutdown._taskpool = True  # type: ignore[attr-defined]
    Server.shutdown = shutdown  # type: ignore[method-assign]
