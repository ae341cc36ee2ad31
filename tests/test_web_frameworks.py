"""The status app mounted in real frameworks, and the web-service recipe, each under a real uvicorn.

Every test runs an example of ``taskpool.examples.web`` as its own server process
(``python -m uvicorn MODULE:app --port 0``; the bound port is read from uvicorn's
"Uvicorn running on ..." line) and talks to it over loopback with httpx: the page and its
token, the JSON status, an event stream, the example's endpoint, and a SIGTERM with a
stream open. A framework that is not installed skips its tests (CI installs them all).

No test sleeps to wait for something: each waits for the event that says it happened
(a ``task.started`` or ``status`` event on the stream, a response, the process's exit),
bounded by a deadline. The sleeps happen in the workers: they are the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from ._sse import SSE
from .conftest import KINDS

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif("process" not in KINDS, reason="the web examples run process workers"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT = 15.0  # seconds: only reached when something is broken (a cold interpreter imports a framework)
SIGTERM_EXIT = 5.0  # seconds from SIGTERM to exit with a stream open (the benchmark measures ~0.2 s)

# (the module to import or skip, the ASGI app, the pool's name in the example)
FRAMEWORKS = {
    "starlette": ("starlette", "taskpool.examples.web.starlette_app:app", "starlette-demo"),
    "fastapi": ("fastapi", "taskpool.examples.web.fastapi_app:app", "fastapi-demo"),
    "litestar": ("litestar", "taskpool.examples.web.litestar_app:app", "litestar-demo"),
    "django": ("django", "taskpool.examples.web.django_asgi:application", "django-demo"),
}


# --- a server process and an event-stream reader ---------------------------------------------


@dataclass
class Server:
    """A uvicorn process serving one example."""

    proc: asyncio.subprocess.Process
    url: str
    log: list[str] = field(default_factory=list)

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=WAIT, **kw)

    async def terminate(self) -> tuple[int, float]:
        """SIGTERM; the exit code and the seconds it took to exit."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT):
            rc = await self.proc.wait()
        return rc, time.monotonic() - t0

    def output(self) -> str:
        return "".join(self.log[-60:])


@contextlib.asynccontextmanager
async def uvicorn(app: str, *args: str, **env: str) -> AsyncIterator[Server]:
    """Serve ``app`` with uvicorn on a free loopback port; killed on the way out if still running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", app, "--port", "0", "--no-access-log", *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TASKPOOL_STATUS_TOKEN": TOKEN, **env},
    )  # fmt: skip
    assert proc.stderr is not None
    log: list[str] = []
    drain: asyncio.Task[None] | None = None
    try:
        url = None
        async with asyncio.timeout(WAIT):
            while url is None:
                line = (await proc.stderr.readline()).decode(errors="replace")
                if not line:
                    raise AssertionError(f"uvicorn exited before serving:\n{''.join(log)}")
                log.append(line)
                if "Uvicorn running on " in line:
                    url = line.split("Uvicorn running on ")[1].split()[0]
        drain = asyncio.create_task(_drain(proc.stderr, log))  # a full pipe would block the server
        yield Server(proc, url, log)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if drain is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(drain, WAIT)


async def _drain(stream: asyncio.StreamReader, log: list[str]) -> None:
    while line := await stream.readline():
        log.append(line.decode(errors="replace"))


def _skip_unless(framework: str) -> str:
    module, app, name = FRAMEWORKS[framework]
    pytest.importorskip(module)
    return app


# --- the four frameworks: mount, token, status, events, endpoint, shutdown --------------------


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
async def test_status_app_mounted_in(framework: str) -> None:
    app = _skip_unless(framework)
    name = FRAMEWORKS[framework][2]
    async with uvicorn(app) as server, server.client() as client:
        # the page: needs the token, and /taskpool redirects to /taskpool/ (relative URLs)
        page = await client.get("/taskpool/")
        assert page.status_code == 401 and "Token needed" in page.text
        page = await client.get("/taskpool/", params={"token": TOKEN})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert f"<title>{name} · taskpool</title>" in page.text
        bare = await client.get("/taskpool", params={"token": TOKEN})
        assert bare.status_code in (307, 308) and bare.headers["location"].endswith(f"/taskpool/?token={TOKEN}")
        assert (await client.get("/taskpool/status")).status_code == 401
        assert (await client.get("/taskpool/healthz")).json() == {"ok": True, "state": "running"}

        status = await client.get("/taskpool/status", headers=AUTH)
        assert status.status_code == 200, server.output()
        doc = status.json()
        assert doc["name"] == name and doc["state"] == "running" and doc["kind"] == "process"
        assert doc["pool_size"] == 2 and len(doc["workers"]) == 2

        async with client.stream("GET", "/taskpool/events", params={"token": TOKEN}) as stream:
            sse = SSE(stream)
            first = await sse.until("status")
            assert first["name"] == name and first["counts"]["succeeded"] == 0
            answer = await client.post("/fib/20")
            assert answer.status_code == 200, answer.text
            assert answer.json()["result"] == 6765
            seen = await sse.until("status", lambda d: d["counts"]["succeeded"] == 1)
            assert seen["counts"]["total"] == 1 and seen["run_seconds"]["count"] == 1
            records = (await client.get("/taskpool/tasks", params={"state": "succeeded"}, headers=AUTH)).json()
            assert [r["meta"] for r in records["tasks"]] == ["fib(20)"]

            # SIGTERM with the stream open: the stream ends, the server exits promptly
            rc, took = await server.terminate()
            assert set(await sse.names_until_end()) <= {"status", "end"}
        assert rc in (0, -signal.SIGTERM), server.output()
        assert took < SIGTERM_EXIT, (took, server.output())


# --- the web-service recipe -------------------------------------------------------------------

SERVICE = "taskpool.examples.web.service:app"


async def _post(server: Server, path: str) -> httpx.Response:
    async with server.client() as client:
        return await client.post(path)


async def test_service_sheds_load_times_out_and_cancels_when_the_client_leaves() -> None:
    pytest.importorskip("fastapi")
    async with (
        uvicorn(SERVICE, SERVICE_WORKERS="1", SERVICE_MAX_QUEUE="2") as server,
        server.client(headers=AUTH) as client,
        client.stream("GET", "/taskpool/events", params={"topics": "status,task.*"}) as stream,
    ):
        sse = SSE(stream)
        await sse.until("status")

        # a task overrunning its timeout: 504 (its work was stopped)
        t0 = time.monotonic()
        late = await client.post("/slow", params={"seconds": 20, "timeout": 0.2})
        assert late.status_code == 504 and "timed out" in late.json()["error"]
        assert time.monotonic() - t0 < 10.0

        # one task running, two waiting (max_queue=2): the next request gets 503 at once
        held = [asyncio.create_task(_post(server, "/slow?seconds=30"))]
        try:
            running = await sse.until("task.started", lambda d: d["meta"] == "slow(30)")
            held += [asyncio.create_task(_post(server, "/slow?seconds=30")) for _ in range(2)]
            waiting = [(await sse.until("task.queued", lambda d: d["meta"] == "slow(30)"))["task_id"] for _ in range(2)]
            full = await client.post("/slow", params={"seconds": 0})
            assert full.status_code == 503 and full.headers["retry-after"] == "1"
            assert "busy" in full.json()["error"]
        finally:  # the three clients leave: their tasks are cancelled, the running one too
            for request in held:
                request.cancel()
            await asyncio.gather(*held, return_exceptions=True)
        ids = {running["task_id"], *waiting}
        cancelled: set[int] = set()
        while cancelled != ids:
            cancelled.add((await sse.until("task.cancelled"))["task_id"])
        doc = await sse.until("status", lambda d: d["counts"]["cancelled"] == 3)
        assert doc["counts"]["remaining"] == 0 and doc["counts"]["failed"] == 1  # the timed-out one
        records = (await client.get("/taskpool/tasks", params={"state": "cancelled"})).json()["tasks"]
        assert {r["id"] for r in records} == ids

        # room again: the service answers
        ok = await client.post("/fib/15")
        assert ok.status_code == 200 and ok.json()["result"] == 610


async def test_service_shutdown_finishes_in_flight_requests_within_grace() -> None:
    pytest.importorskip("fastapi")
    grace = 1.0  # the pool's, for background jobs
    drain = 2  # uvicorn's, for requests (whole seconds)
    async with (
        uvicorn(SERVICE, "--timeout-graceful-shutdown", str(drain), SERVICE_WORKERS="3", SERVICE_GRACE=str(grace))
        as server,
        server.client(headers=AUTH) as client,
        client.stream("GET", "/taskpool/events", params={"topics": "status,task.*"}) as stream,
    ):  # fmt: skip
        sse = SSE(stream)
        await sse.until("status")
        short = asyncio.create_task(_post(server, "/slow?seconds=0.5"))  # finishes within the drain time
        long = asyncio.create_task(_post(server, "/slow?seconds=30"))  # cut at the drain time
        job = await client.post("/jobs/slow", params={"seconds": 30})  # cut at the pool's grace
        assert job.status_code == 202
        started: set[str] = set()
        while len(started) < 3:
            started.add((await sse.until("task.started"))["meta"])
        assert started == {"slow(0.5)", "slow(30)", "job slow(30)"}

        rc, took = await server.terminate()
        assert set(await sse.names_until_end()) <= {"status", "task.succeeded", "task.started", "end"}
    answer = await short
    assert answer.status_code == 200 and answer.json()["slept"] == 0.5  # finished after SIGTERM
    cut = await asyncio.gather(long, return_exceptions=True)
    assert isinstance(cut[0], httpx.HTTPError) or cut[0].status_code == 500, cut
    assert rc in (0, -signal.SIGTERM), server.output()
    # bounded by the drain time plus the pool's grace (plus stopping), never by the 30 s calls
    assert drain <= took < drain + grace + 4.0, (took, server.output())
    assert "timeout graceful shutdown exceeded" in server.output()
