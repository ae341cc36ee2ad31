"""Litestar: the pool lives in the app's lifespan; its status page is mounted at ``/taskpool``.

Run it (any ASGI server works; the token comes from the environment)::

    TASKPOOL_STATUS_TOKEN=secret uvicorn taskpool.examples.web.litestar_app:app

then ``curl -X POST localhost:8000/fib/25`` and open ``http://localhost:8000/taskpool/?token=secret``.

Litestar mounts an ASGI app with ``@asgi(path, is_mount=True)``, but unlike Starlette it
hands the app the path *after* the prefix, with a ``/`` appended (``/taskpool/status``
arrives as ``/status/``), and leaves ``root_path`` alone. :func:`mounted_scope` gives the
status app what the ASGI spec describes instead: the full path, and the prefix as
``root_path``, so its routes match, it redirects ``/taskpool`` to ``/taskpool/`` and the
page's relative URLs resolve under ``/taskpool/``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Litestar, asgi, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import Parameter
from litestar.types import Receive, Scope, Send

from taskpool import FunctionPool
from taskpool.examples.web.jobs import MAX_FIB, fib
from taskpool.web import status_app

#: The status page's token: from the environment, else a fresh one printed at startup.
TOKEN = os.environ.get("TASKPOOL_STATUS_TOKEN") or ""
#: Where the status app is mounted.
PREFIX = "/taskpool"


@contextlib.asynccontextmanager
async def taskpool_lifespan(app: Litestar) -> AsyncIterator[None]:
    """Start the pool before the first request; close it after the last one."""
    token = TOKEN or secrets.token_urlsafe(18)
    if not TOKEN:
        print(f"taskpool status page: {PREFIX}/?token={token}", file=sys.stderr, flush=True)
    async with FunctionPool(2, name="litestar-demo") as pool:  # process workers
        app.state.pool = pool
        app.state.status = status_app(pool, token=token)
        yield


@post("/fib/{n:int}", status_code=200)
async def add_fib(n: Annotated[int, Parameter(ge=0, le=MAX_FIB)], state: State) -> dict[str, int]:
    """Compute ``fib(n)`` on a worker and answer with the result."""
    pool: FunctionPool = state.pool
    task = pool.add_task(fib, n, meta=f"fib({n})")
    return {"task": task.id, "n": n, "result": await task}


def mounted_scope(scope: Scope, prefix: str = PREFIX) -> dict[str, Any]:
    """A copy of a Litestar mount's ``scope`` with the full path and ``root_path`` set to the mount.

    Litestar gives a mounted app ``path`` without the prefix and with a ``/`` appended; the
    request's own path is still in ``raw_path``. A request for the prefix itself (no
    trailing ``/``) gets the bare prefix back, so the status app answers with its redirect.

    Raises:
        NotFoundException: the path only starts with the prefix's letters (Litestar also
            routes ``/taskpoolx`` to a mount at ``/taskpool``).
    """
    root = scope.get("root_path", "") + prefix
    rest = scope["path"].rstrip("/") or "/"
    if not rest.startswith("/"):
        raise NotFoundException()
    raw = scope.get("raw_path") or b""
    if rest == "/" and not raw.endswith(b"/"):
        rest = ""
    return {**scope, "root_path": root, "path": root + rest}


@asgi(PREFIX, is_mount=True, copy_scope=True)
async def taskpool_status(scope: Scope, receive: Receive, send: Send) -> None:
    """The ``/taskpool`` mount: the status app the lifespan made (it needs the running pool)."""
    status = Litestar.from_scope(scope).state.status
    await status(mounted_scope(scope), receive, send)


app: Litestar = Litestar(route_handlers=[add_fib, taskpool_status], lifespan=[taskpool_lifespan])
