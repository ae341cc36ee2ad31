"""FastAPI: the pool lives in the app's lifespan; its status page is mounted at ``/taskpool``.

Run it (any ASGI server works; the token comes from the environment)::

    TASKPOOL_STATUS_TOKEN=secret uvicorn taskpool.examples.web.fastapi_app:app

then ``curl -X POST localhost:8000/fib/25`` and open ``http://localhost:8000/taskpool/?token=secret``.

The lifespan yields the pool and its status app as the app's state; endpoints get the
pool through a dependency, and the ``/taskpool`` mount forwards to the status app. See
:mod:`taskpool.examples.web.service` for what a real service adds (a bounded queue,
timeouts, cancelling the work of a client that left, a bounded shutdown).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator
from typing import Annotated, TypedDict

from fastapi import Depends, FastAPI, Path, Request
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
async def lifespan(app: FastAPI) -> AsyncIterator[State]:
    """Start the pool before the first request; close it after the last one."""
    token = TOKEN or secrets.token_urlsafe(18)
    if not TOKEN:
        print(f"taskpool status page: /taskpool/?token={token}", file=sys.stderr, flush=True)
    async with FunctionPool(2, name="fastapi-demo") as pool:  # process workers
        yield {"pool": pool, "status": status_app(pool, token=token)}


def get_pool(request: Request) -> FunctionPool:
    """The dependency endpoints take the pool from."""
    pool: FunctionPool = request.state.pool
    return pool


Pool = Annotated[FunctionPool, Depends(get_pool)]
app: FastAPI = FastAPI(title="taskpool on FastAPI", lifespan=lifespan)


@app.post("/fib/{n}")
async def add_fib(n: Annotated[int, Path(ge=0, le=MAX_FIB)], pool: Pool) -> dict[str, int]:
    """Compute ``fib(n)`` on a worker and answer with the result."""
    task = pool.add_task(fib, n, meta=f"fib({n})")
    return {"task": task.id, "n": n, "result": await task}


async def taskpool_status(scope: Scope, receive: Receive, send: Send) -> None:
    """The ``/taskpool`` mount: the status app the lifespan made (it needs the running pool)."""
    await scope["state"]["status"](scope, receive, send)


app.mount("/taskpool", taskpool_status)
