"""Starlette: the pool lives in the app's lifespan; its status page is mounted at ``/taskpool``.

Run it (any ASGI server works; the token comes from the environment)::

    TASKPOOL_STATUS_TOKEN=secret uvicorn taskpool.examples.web.starlette_app:app

then ``curl -X POST localhost:8000/fib/25`` and open ``http://localhost:8000/taskpool/?token=secret``.

The status app needs the running pool, and the pool is made in the lifespan, so the
lifespan yields both as the app's state, and the ``/taskpool`` mount forwards to the
status app found there. Starlette passes the mount's prefix as ``root_path``, which the
status app strips; it redirects ``/taskpool`` to ``/taskpool/`` itself.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator
from typing import TypedDict

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from taskpool import FunctionPool
from taskpool.examples.web.jobs import MAX_FIB, fib
from taskpool.web import StatusApp, status_app

#: The status page's token: from the environment, else a fresh one printed at startup.
TOKEN = os.environ.get("TASKPOOL_STATUS_TOKEN") or ""


class State(TypedDict):
    """What the lifespan hands every request (``request.state`` / ``scope["state"]``)."""

    pool: FunctionPool
    status: StatusApp


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[State]:
    """Start the pool before the first request; close it after the last one."""
    token = TOKEN or secrets.token_urlsafe(18)
    if not TOKEN:
        print(f"taskpool status page: /taskpool/?token={token}", file=sys.stderr, flush=True)
    async with FunctionPool(2, name="starlette-demo") as pool:  # process workers
        yield {"pool": pool, "status": status_app(pool, token=token)}


async def add_fib(request: Request) -> JSONResponse:
    """``POST /fib/{n}``: compute ``fib(n)`` on a worker and answer with the result."""
    n: int = request.path_params["n"]
    if n > MAX_FIB:
        return JSONResponse({"error": f"n must be <= {MAX_FIB}"}, status_code=422)
    pool: FunctionPool = request.state.pool
    task = pool.add_task(fib, n, meta=f"fib({n})")
    return JSONResponse({"task": task.id, "n": n, "result": await task})


async def taskpool_status(scope: Scope, receive: Receive, send: Send) -> None:
    """The ``/taskpool`` mount: the status app the lifespan made (it needs the running pool)."""
    await scope["state"]["status"](scope, receive, send)


app: Starlette = Starlette(
    routes=[
        Route("/fib/{n:int}", add_fib, methods=["POST"]),
        Mount("/taskpool", app=taskpool_status),
    ],
    lifespan=lifespan,
)
