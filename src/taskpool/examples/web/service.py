"""The recipe for a web service that runs its heavy work on a pool (FastAPI).

Run it (``--timeout-graceful-shutdown`` bounds how long in-flight requests may finish)::

    TASKPOOL_STATUS_TOKEN=secret uvicorn taskpool.examples.web.service:app --timeout-graceful-shutdown 10

What it shows, each next to the code that does it:

* **The lifespan owns the pool**: started before the first request, closed after the
  last one. Requests reach it through a dependency.
* **A bounded queue sheds load**: ``max_queue`` caps the tasks waiting to start, and
  ``add_task`` raises :class:`~taskpool.QueueFull` at once instead of waiting: that
  answers ``503`` with ``Retry-After``. (``await pool.submit()`` would wait for room,
  moving the queue into the server's open connections, where no one can see it.)
* **Timeouts**: every task has one (the pool's ``task_timeout``, or the request's
  ``?timeout=``); a task that overruns is stopped in its worker and the request answers
  ``504``.
* **A client that goes away cancels its task**: while the handler awaits the task, a
  watcher waits for the ASGI ``http.disconnect``; the task is cancelled, and so is one
  whose handler is cancelled (by the server's graceful-shutdown timeout, say).
* **A bounded graceful shutdown**: on SIGTERM uvicorn stops accepting, lets in-flight
  requests finish (up to ``--timeout-graceful-shutdown``), then runs the lifespan's
  exit, where ``pool.aclose(grace=...)`` gives background jobs ``grace`` seconds to
  settle before cancelling them. Open status-page streams end at once (``taskpool.web``
  sees to it), so a dashboard left open never holds the shutdown.
* **The status page** at ``/taskpool/`` (token from ``TASKPOOL_STATUS_TOKEN``).

Settings come from the environment: ``SERVICE_WORKERS`` (default: the CPUs),
``SERVICE_WORKER`` (kind, default ``process``), ``SERVICE_MAX_QUEUE`` (64),
``SERVICE_TIMEOUT`` (seconds per task, 30), ``SERVICE_GRACE`` (seconds, 10).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import secrets
import sys
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypedDict, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from taskpool import FunctionPool, PoolClosed, QueueFull, Task, TaskCancelled, TaskTimeout
from taskpool.examples.web.jobs import MAX_FIB, fib, slow
from taskpool.web import StatusApp, status_app

T = TypeVar("T")

#: What a 503 tells clients to wait before trying again (seconds).
RETRY_AFTER = 1
#: Background jobs remembered for ``GET /jobs/{id}`` (the oldest settled ones are forgotten).
JOBS_KEPT = 10_000


@dataclasses.dataclass(frozen=True)
class Settings:
    """The service's settings (see the module docstring for the variables)."""

    workers: int | None = None
    worker: str = "process"
    max_queue: int = 64
    timeout: float = 30.0
    grace: float = 10.0
    token: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default ``os.environ``).

        Raises:
            ValueError: a variable is not a number, or out of range.
        """
        env = dict(os.environ if env is None else env)
        try:
            settings = cls(
                workers=int(env["SERVICE_WORKERS"]) if env.get("SERVICE_WORKERS") else None,
                worker=env.get("SERVICE_WORKER") or "process",
                max_queue=int(env.get("SERVICE_MAX_QUEUE") or 64),
                timeout=float(env.get("SERVICE_TIMEOUT") or 30.0),
                grace=float(env.get("SERVICE_GRACE") or 10.0),
                token=env.get("TASKPOOL_STATUS_TOKEN") or "",
            )
        except ValueError as exc:
            raise ValueError(f"bad SERVICE_* setting: {exc}") from None
        if settings.max_queue < 1 or settings.timeout <= 0 or settings.grace < 0:
            raise ValueError(f"SERVICE_MAX_QUEUE >= 1, SERVICE_TIMEOUT > 0, SERVICE_GRACE >= 0: {settings}")
        return settings


class Jobs:
    """Background tasks by id, for ``GET /jobs/{id}``; bounded (see :data:`JOBS_KEPT`)."""

    def __init__(self, kept: int = JOBS_KEPT) -> None:
        self.kept = kept
        self.tasks: collections.OrderedDict[int, Task[Any]] = collections.OrderedDict()

    def add(self, task: Task[Any]) -> None:
        """Remember ``task``, forgetting the oldest settled job when full."""
        self.tasks[task.id] = task
        if len(self.tasks) > self.kept:
            oldest = next((i for i, t in self.tasks.items() if t.done()), None)
            if oldest is not None:
                del self.tasks[oldest]


class State(TypedDict):
    """What the lifespan hands every request (``request.state`` / ``scope["state"]``)."""

    pool: FunctionPool
    status: StatusApp
    jobs: Jobs


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[State]:
    """Own the pool: start it before the first request, close it (with grace) after the last."""
    settings = Settings.from_env()
    token = settings.token or secrets.token_urlsafe(18)
    if not settings.token:
        print(f"taskpool status page: /taskpool/?token={token}", file=sys.stderr, flush=True)
    pool = FunctionPool(
        settings.workers,
        worker=settings.worker,
        max_queue=settings.max_queue,  # tasks waiting to start, wherever they wait
        task_timeout=settings.timeout,  # every task has a bound, counted from its start
        name="service",
    )
    await pool.start()
    try:
        yield {"pool": pool, "status": status_app(pool, token=token), "jobs": Jobs()}
    finally:
        # The server has finished (or, past its graceful timeout, cancelled) every request
        # by now: what is left are background jobs. They get `grace` seconds, then are cancelled.
        await pool.aclose(grace=settings.grace)


app: FastAPI = FastAPI(title="taskpool service recipe", lifespan=lifespan)


def get_pool(request: Request) -> FunctionPool:
    """The dependency endpoints take the pool from."""
    pool: FunctionPool = request.state.pool
    return pool


def get_jobs(request: Request) -> Jobs:
    """The dependency endpoints take the background jobs from."""
    jobs: Jobs = request.state.jobs
    return jobs


Pool = Annotated[FunctionPool, Depends(get_pool)]
Timeout = Annotated[float | None, Query(gt=0, le=300, description="seconds; default: the pool's")]


async def result_or_cancel(request: Request, task: Task[T]) -> T:
    """``await task``, cancelling it if the client disconnects first or this handler is cancelled.

    Raises:
        BaseException: what awaiting the task raises (``TaskCancelled`` once the client left).
    """
    watcher = asyncio.create_task(_cancel_on_disconnect(request.receive, task))
    try:
        return await task
    finally:
        watcher.cancel()
        task.cancel()  # does nothing once it settled; else nobody wants the result any more


async def _cancel_on_disconnect(receive: Receive, task: Task[Any]) -> None:
    # Once the request body is read (these endpoints take none), the next ASGI message is
    # the disconnect: waiting for it costs nothing, no polling of request.is_disconnected().
    while (await receive())["type"] != "http.disconnect":
        pass
    task.cancel()


# --- endpoints -------------------------------------------------------------------------------


@app.post("/fib/{n}")
async def compute_fib(
    request: Request, n: Annotated[int, Path(ge=0, le=MAX_FIB)], pool: Pool, timeout: Timeout = None
) -> dict[str, int]:
    """Compute ``fib(n)`` on a worker (CPU work) and answer with it."""
    task = pool.add_task(fib, n, meta=f"fib({n})", timeout=timeout)  # QueueFull -> 503
    return {"task": task.id, "n": n, "result": await result_or_cancel(request, task)}


@app.post("/slow")
async def run_slow(
    request: Request, pool: Pool, seconds: Annotated[float, Query(ge=0, le=60)] = 1.0, timeout: Timeout = None
) -> dict[str, float]:
    """Run a slow call (``seconds`` long) on a worker and answer when it is done."""
    task = pool.add_task(slow, seconds, meta=f"slow({seconds:g})", timeout=timeout)
    return {"task": task.id, "slept": await result_or_cancel(request, task)}


@app.post("/jobs/slow", status_code=202)
async def start_job(
    pool: Pool, jobs: Annotated[Jobs, Depends(get_jobs)], seconds: Annotated[float, Query(ge=0, le=60)] = 1.0
) -> dict[str, Any]:
    """Start a background job and answer at once (``202``); ``GET /jobs/{id}`` tells how it went."""
    task = pool.add_task(slow, seconds, meta=f"job slow({seconds:g})")
    jobs.add(task)
    return {"id": task.id, "url": f"/jobs/{task.id}"}


@app.get("/jobs/{job_id}")
async def job(job_id: int, jobs: Annotated[Jobs, Depends(get_jobs)]) -> dict[str, Any]:
    """A background job's state, and its result or error once it settled."""
    task = jobs.tasks.get(job_id)
    if task is None:
        raise HTTPException(404, f"no job {job_id}")
    out: dict[str, Any] = {"id": job_id, "state": str(task.state)}
    if task.done():
        exc = task.exception()
        out["result" if exc is None else "error"] = task.result() if exc is None else repr(exc)
    return out


# --- the pool's errors as HTTP answers -------------------------------------------------------


@app.exception_handler(QueueFull)
async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
    """Too much work waiting already: 503, come back later."""
    headers = {"Retry-After": str(RETRY_AFTER)}
    return JSONResponse({"error": "busy: too many tasks waiting, retry later"}, status_code=503, headers=headers)


@app.exception_handler(PoolClosed)
async def pool_closed(request: Request, exc: PoolClosed) -> JSONResponse:
    """Shutting down: 503 (another instance may take it)."""
    headers = {"Retry-After": str(RETRY_AFTER), "Connection": "close"}
    return JSONResponse({"error": "shutting down"}, status_code=503, headers=headers)


@app.exception_handler(TaskTimeout)
async def task_timeout(request: Request, exc: TaskTimeout) -> JSONResponse:
    """The task overran its timeout (its work was stopped): 504."""
    return JSONResponse({"error": f"timed out: {exc}"}, status_code=504)


@app.exception_handler(TaskCancelled)
async def task_cancelled(request: Request, exc: TaskCancelled) -> JSONResponse:
    """Cancelled: its client left (who will never read this), or the pool is closing."""
    return JSONResponse({"error": "cancelled"}, status_code=503)


# --- the status page -------------------------------------------------------------------------


async def taskpool_status(scope: Scope, receive: Receive, send: Send) -> None:
    """The ``/taskpool`` mount: the status app the lifespan made (it needs the running pool)."""
    await scope["state"]["status"](scope, receive, send)


app.mount("/taskpool", taskpool_status)
