"""The status app: routes, token, JSON, paging, Server-Sent Events, metrics, serving and shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import taskpool
import taskpool.web
from taskpool import FunctionPool, PoolClosed
from taskpool._recorder import BUCKETS, Histogram, quantile, restart_reason
from taskpool.testing import block_gate
from taskpool.web import StatusApp, status_app

from ._funcs import crash_worker, fail, square
from ._sse import SSE
from ._support import WAIT, Gate


async def all_pages(client: httpx.AsyncClient, state: str, limit: int) -> list[int]:
    """The ids ``/tasks?state=`` lists, following ``next`` page by page."""
    seen: list[int] = []
    params: dict[str, Any] = {"state": state, "limit": limit}
    while True:
        page = (await client.get("/tasks", params=params)).json()
        seen += [t["id"] for t in page["tasks"]]
        if page["next"] is None:
            return seen
        params["after"] = page["next"]


async def served(pool: FunctionPool, **kw: Any) -> tuple[taskpool.web.StatusServer, httpx.AsyncClient]:
    server = await pool.serve_status(announce=False, **kw)
    headers = {"Authorization": f"Bearer {server.token}"} if server.token else {}
    return server, httpx.AsyncClient(base_url=server.url, headers=headers, timeout=WAIT)


@pytest.mark.asyncio
async def test_status_json_counts_workers_and_etag() -> None:
    async with FunctionPool(2, worker="thread", name="web-a") as pool:
        server, client = await served(pool, title="Render farm")
        async with client:
            await asyncio.gather(*(pool.add_task(square, i, meta=f"sq{i}") for i in range(20)))
            failed = pool.add_task(fail, "boom", meta="the bad one")
            with pytest.raises(ValueError):
                await failed
            r = await client.get("/status")
            assert r.status_code == 200
            doc = r.json()
            assert doc["name"] == "web-a" and doc["title"] == "Render farm"
            assert doc["kind"] == "thread" and doc["pool_size"] == 2 and doc["state"] == "running"
            assert doc["counts"]["succeeded"] == 20 and doc["counts"]["failed"] == 1 and doc["counts"]["total"] == 21
            assert [w["id"] for w in doc["workers"]] == [0, 1]
            assert doc["run_seconds"]["count"] == 21 and doc["wait_seconds"]["count"] == 21
            assert doc["run_seconds"]["p50"] is not None
            assert doc["failures"][0]["id"] == failed.id and doc["failures"][0]["meta"] == "the bad one"
            assert "boom" in doc["failures"][0]["error"]
            assert set(doc["rates"]) == {"added", "completed", "failed"}
            assert doc["queue_depth"] == 0 and doc["queue_oldest_age"] == 0.0
            etag = r.headers["etag"]
            assert (await client.get("/status", headers={"If-None-Match": etag})).status_code == 304
            assert r.headers["cache-control"] == "no-store"
            await server.aclose()


@pytest.mark.asyncio
async def test_token_header_query_and_open_health() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        server = await pool.serve_status(token="s3cret", announce=False)
        async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as c:
            assert (await c.get("/status")).status_code == 401
            assert (await c.get("/status", headers={"Authorization": "Bearer nope"})).status_code == 401
            assert (await c.get("/status?token=nope")).status_code == 401
            assert (await c.get("/status", headers={"Authorization": "Bearer s3cret"})).status_code == 200
            assert (await c.get("/status?token=s3cret")).status_code == 200
            page = await c.get("/")
            assert page.status_code == 401 and "Token needed" in page.text
            assert (await c.get("/?token=s3cret")).status_code == 200
            health = await c.get("/healthz")
            assert health.status_code == 200 and health.json() == {"ok": True, "state": "running"}
            assert (await c.post("/status?token=s3cret")).status_code == 405
            assert (await c.get("/nothing?token=s3cret")).status_code == 404
        assert server.token == "s3cret"


@pytest.mark.asyncio
async def test_page_is_self_contained_and_escapes_title() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        server, client = await served(pool, title="<b>x</b>")
        async with client:
            page = await client.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert "<b>x</b>" not in page.text and "&lt;b&gt;x&lt;/b&gt;" in page.text
            # no external assets (an SVG namespace URI is not a fetch)
            assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import""", page.text)
            assert "default-src 'none'" in page.headers["content-security-policy"]


@pytest.mark.asyncio
async def test_random_token_is_made_and_printed(capsys: pytest.CaptureFixture[str]) -> None:
    async with FunctionPool(1, worker="inline", name="printed") as pool:
        server = await pool.serve_status()
        assert server.token and len(server.token) >= 20
        assert server.url.startswith("http://127.0.0.1:")
        err = capsys.readouterr().err
        assert server.url_with_token in err and "printed" in err
        open_server = await pool.serve_status(token="", announce=False)
        assert open_server.token is None
        async with httpx.AsyncClient(timeout=WAIT) as c:
            assert (await c.get(open_server.url + "status")).status_code == 200


@pytest.mark.asyncio
async def test_tasks_pages_and_bad_queries() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        server, client = await served(pool)
        async with client:
            await asyncio.gather(*(pool.add_task(square, i) for i in range(25)))
            seen = await all_pages(client, "succeeded", 10)
            assert sorted(seen) == list(range(1, 26)) and len(seen) == 25
            record = (await client.get("/tasks", params={"limit": 1})).json()["tasks"][0]
            assert set(record) >= {"id", "meta", "state", "worker_id", "queued_at", "started_at", "finished_at"}
            for bad in ({"state": "nope"}, {"limit": 0}, {"limit": 5000}, {"limit": "x"}, {"after": "y"}):
                r = await client.get("/tasks", params=bad)
                assert r.status_code == 400 and "error" in r.json()


@pytest.mark.asyncio
async def test_tasks_shows_queued_and_active() -> None:
    async with FunctionPool(1, worker="thread") as pool, Gate() as gate:
        server, client = await served(pool)
        async with client:
            held = pool.add_task(block_gate, gate.path, "held")
            await gate.arrived("held")
            queued = [pool.add_task(square, i) for i in range(3)]
            active = (await client.get("/tasks", params={"state": "active"})).json()["tasks"]
            assert [t["id"] for t in active] == [held.id] and active[0]["state"] == "running"
            q = (await client.get("/tasks", params={"state": "queued"})).json()["tasks"]
            assert [t["id"] for t in q] == [t.id for t in queued]
            doc = (await client.get("/status")).json()
            assert doc["queue_depth"] == 3 and doc["queue_oldest_age"] >= 0.0
            gate.open()
            await asyncio.gather(held, *queued)


@pytest.mark.asyncio
async def test_events_stream_status_worker_and_failure_events() -> None:
    async with FunctionPool(1, worker="process", name="sse") as pool:
        server, client = await served(pool)
        async with client, client.stream("GET", "/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            sse = SSE(r)
            first = await sse.until("status")
            assert first["name"] == "sse"
            bad = pool.add_task(fail, "nope", meta="m")
            failed = await sse.until("task.failed")
            event_id = sse.last_id
            assert failed["task_id"] == bad.id and "nope" in failed["error"] and failed["kind"] == "task"
            assert event_id is not None and re.fullmatch(r"[0-9a-f]+-[1-9][0-9]*", event_id)
            with pytest.raises(ValueError, match="nope"):
                await bad
            # a worker crash: worker.exited/restarted events, then the status shows the restart
            crash = pool.add_task(crash_worker)
            with pytest.raises(taskpool.WorkerCrashed):
                await crash
            restarted = await sse.until("worker.restarted")
            assert restarted["worker_id"] == 0
            doc = await sse.until("status", lambda d: d["restarts"].get("crashed") == 1)
            assert doc["counts"]["failed"] == 2
            await server.aclose()


@pytest.mark.asyncio
async def test_events_ids_increase_and_resume_with_last_event_id() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        server, client = await served(pool)
        async with client:
            ids = []
            async with client.stream("GET", "/events", params={"topics": "demo.*"}) as r:
                sse = SSE(r)
                pool.events.publish("demo.a", 1)
                pool.events.publish("demo.b", 2)
                for want in ("demo.a", "demo.b"):
                    event_id, name, data = await sse.next()
                    assert name == want
                    ids.append(event_id or "")
            epoch, _, first = ids[0].partition("-")
            assert ids[1].startswith(epoch + "-") and int(first) < int(ids[1].partition("-")[2])
            pool.events.publish("demo.c", 3)  # while nobody listens: kept by the feed
            headers = {"Last-Event-ID": ids[0]}
            async with client.stream("GET", "/events", params={"topics": "demo.*"}, headers=headers) as r:
                sse = SSE(r)
                got = [(await sse.next())[1] for _ in range(2)]
                assert got == ["demo.b", "demo.c"]  # resumed: nothing missed, nothing repeated


@pytest.mark.asyncio
async def test_events_reset_when_resume_point_is_gone() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        server, client = await served(pool)
        async with client:
            async with client.stream("GET", "/events", params={"topics": "x.*"}) as r:
                sse = SSE(r)
                pool.events.publish("x.1")
                first_id, _, _ = await sse.next()
            for i in range(2100):  # more than the feed keeps
                pool.events.publish("x.more", i)
            headers = {"Last-Event-ID": first_id or ""}
            async with client.stream("GET", "/events", params={"topics": "x.*"}, headers=headers) as r:
                sse = SSE(r)
                assert (await sse.next())[1] == "reset"


@pytest.mark.asyncio
async def test_events_end_when_pool_closes() -> None:
    pool = FunctionPool(1, worker="inline")
    await pool.start()
    server, client = await served(pool)
    async with client, client.stream("GET", "/events") as r:
        sse = SSE(r)
        await sse.until("status")
        closing = asyncio.create_task(pool.aclose())
        last: dict[str, Any] = {}
        while True:
            _, name, data = await sse.next()
            if name == "end":
                break
            if name == "status":
                last = json.loads(data)
        assert last["state"] in ("closing", "closed") and last["counts"]["total"] == 0
        with pytest.raises(EOFError):
            await sse.next()
        await closing
    assert server.app.streams == 0


@pytest.mark.asyncio
async def test_server_aclose_ends_streams_quickly() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        server, client = await served(pool)
        async with client, client.stream("GET", "/events") as r:
            sse = SSE(r)
            await sse.until("status")
            t0 = time.monotonic()
            await server.aclose()
            assert time.monotonic() - t0 < 2.0
            assert set(await sse.names_until_end()) <= {"status", "end"}
        await server.aclose()  # twice is fine
        with pytest.raises(httpx.ConnectError):
            await httpx.AsyncClient().get(server.url + "healthz")


@pytest.mark.asyncio
async def test_heartbeats_on_an_idle_stream() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        app = StatusApp(pool, heartbeat=0.05)
        sent: list[bytes] = []
        got_ping = asyncio.Event()
        leave = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await leave.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            body = message.get("body", b"")
            sent.append(body)
            if b": ping" in body and sum(b": ping" in s for s in sent) >= 2:
                got_ping.set()

        scope = {"type": "http", "method": "GET", "path": "/events", "query_string": b"topics=none", "headers": []}
        serving = asyncio.create_task(app(scope, receive, send))
        async with asyncio.timeout(WAIT):
            await got_ping.wait()
        leave.set()
        async with asyncio.timeout(WAIT):
            await serving
        assert app.streams == 0


@pytest.mark.asyncio
async def test_metrics_names_and_values() -> None:
    pytest.importorskip("prometheus_client")
    async with FunctionPool(2, worker="thread", name="met") as pool:
        server, client = await served(pool)
        async with client:
            await asyncio.gather(*(pool.add_task(square, i) for i in range(5)))
            text = (await client.get("/metrics")).text
    for name in (
        'taskpool_tasks_total{outcome="succeeded",pool="met"} 5.0',
        'taskpool_task_run_seconds_count{pool="met"} 5.0',
        'taskpool_task_wait_seconds_bucket{le="+Inf",pool="met"} 5.0',
        'taskpool_queue_depth{pool="met"} 0.0',
        "taskpool_queue_oldest_age_seconds",
        'taskpool_workers{pool="met",state="idle"} 2.0',
        'taskpool_worker_utilisation{pool="met",worker="0"}',
        "taskpool_worker_restarts_total",
    ):
        assert name in text, name


@pytest.mark.asyncio
async def test_collector_registers_and_reads_from_another_thread() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    import taskpool.metrics

    registry = prometheus_client.CollectorRegistry()
    async with FunctionPool(1, worker="inline", name="col") as pool:
        taskpool.metrics.collector(pool, registry)
        await pool.add_task(square, 3)
        # prometheus_client's HTTP server scrapes from its own thread: values are read in the loop
        text = await asyncio.to_thread(prometheus_client.generate_latest, registry)
        assert b'taskpool_tasks_total{outcome="succeeded",pool="col"} 1.0' in text
        with pytest.raises(ValueError, match="Duplicated"):
            taskpool.metrics.collector(pool, registry)
    with pytest.raises(TypeError):
        taskpool.metrics.collector(object(), registry)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_bad_arguments_and_closed_pool() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        with pytest.raises(TypeError):
            status_app(object())  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            status_app(pool, token=3)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            status_app(pool, token="")
        with pytest.raises(ValueError):
            await pool.serve_status(port=70000)
        with pytest.raises(TypeError):
            await pool.serve_status(host=None)  # type: ignore[arg-type]
    with pytest.raises(PoolClosed):
        await pool.serve_status()


@pytest.mark.asyncio
async def test_served_app_stops_with_its_pool() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        server = await pool.serve_status(announce=False)
    async with httpx.AsyncClient(timeout=WAIT) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get(server.url + "healthz")


# --- the recorder ---------------------------------------------------------------------------


def test_histogram_and_quantiles() -> None:
    h = Histogram()
    for v in [0.001] * 90 + [1.0] * 10:
        h.observe(v)
    h.observe(-1.0)  # clock skew counts as 0
    assert h.n == 101 and h.cumulative()[-1] == 101
    assert quantile(h.counts, 0.5) is not None and quantile(h.counts, 0.5) <= 0.001
    q99 = quantile(h.counts, 0.99)
    assert q99 is not None and 0.5 <= q99 <= 1.0
    assert quantile([0] * (len(BUCKETS) + 1), 0.5) is None
    big = Histogram()
    big.observe(10_000.0)
    assert quantile(big.counts, 0.5) == BUCKETS[-1]


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("recycled", "recycled"),
        ("exited with code 3", "crashed"),
        ("killed by SIGKILL", "killed"),
        ("exited with code 1 before its handshake", "start_failed"),
        ("thread died: RuntimeError()", "crashed"),
        (None, "other"),
        ("something new", "other"),
    ],
)
def test_restart_reasons_are_a_bounded_set(reason: str | None, label: str) -> None:
    assert restart_reason(reason) == label


@pytest.mark.asyncio
async def test_recorder_memory_is_flat() -> None:
    async with FunctionPool(1, worker="inline", keep_records=10) as pool:
        app = status_app(pool)
        rec = app._reporter.recorder
        await asyncio.gather(*(pool.add_task(fail, "x") for _ in range(200)), return_exceptions=True)
        rec.catch_up()
        # 200 settled, 10 records kept: each kept one stands for 20, so the count stays exact
        assert len(rec.failures) == 10 and rec.run.n == pytest.approx(200)
        assert sum(rec.run.counts) == pytest.approx(200)
        assert len(rec.wait.counts) == len(BUCKETS) + 1


@pytest.mark.asyncio
async def test_recorder_counts_each_task_when_no_records_are_kept() -> None:
    async with FunctionPool(1, worker="inline", keep_records=0) as pool:
        rec = status_app(pool)._reporter.recorder
        assert rec.per_task and pool._core.recorder is rec
        await asyncio.gather(*(pool.add_task(fail, "x") for _ in range(30)), return_exceptions=True)
        assert rec.run.n == 30 and len(rec.failures) == 20
        assert rec.failures[-1]["error"] == "ValueError: x"


@pytest.mark.asyncio
async def test_recorder_catches_up_by_itself() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        rec = status_app(pool)._reporter.recorder
        assert pool._core.recorder is None  # nothing on the hot path
        await asyncio.gather(*(pool.add_task(square, i) for i in range(50)))
        async with asyncio.timeout(WAIT):  # the periodic catch-up, not a read, counts them
            while rec.run.n < 50:
                await asyncio.sleep(0.05)
        assert rec.run.n == 50


# --- uvicorn: a service whose shutdown an open stream must not hold -------------------------

SERVICE = textwrap.dedent(
    """
    import contextlib, os, sys
    from starlette.applications import Starlette
    from starlette.routing import Mount
    import taskpool, taskpool.web

    pool = taskpool.FunctionPool(1, worker="inline", name="svc")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with pool:
            yield

    middleware = []
    if os.environ.get("WITH_MIDDLEWARE"):  # runs the app in a task of its own
        from starlette.middleware import Middleware
        from starlette.middleware.base import BaseHTTPMiddleware

        async def passthrough(request, call_next):
            return await call_next(request)

        middleware = [Middleware(BaseHTTPMiddleware, dispatch=passthrough)]
    app = Starlette(
        routes=[Mount("/taskpool", taskpool.web.status_app(pool))], lifespan=lifespan, middleware=middleware
    )
    """
)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("middleware", [False, True])
async def test_uvicorn_shutdown_is_not_held_by_an_open_stream(tmp_path: Any, middleware: bool) -> None:
    pytest.importorskip("starlette")
    (tmp_path / "svc.py").write_text(SERVICE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "svc:app", "--port", "0", "--log-level", "info"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path), **({"WITH_MIDDLEWARE": "1"} if middleware else {})},
    )
    try:
        url = await asyncio.to_thread(_uvicorn_url, proc)
        async with httpx.AsyncClient(timeout=WAIT) as c, c.stream("GET", url + "/taskpool/events") as r:
            sse = SSE(r)
            await sse.until("status")
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert set(await sse.names_until_end()) <= {"status", "end"}
            rc = await asyncio.to_thread(proc.wait, 20)
            took = time.monotonic() - t0
        # without the stream ending first, uvicorn waits forever
        assert rc in (0, -signal.SIGTERM) and took < 10.0, took
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _uvicorn_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if "Uvicorn running on" in line:
            return line.split("running on ")[1].split()[0]
    raise AssertionError("uvicorn did not start")


async def _aiter(xs: list[Any]) -> AsyncIterator[Any]:
    for x in xs:
        yield x


@pytest.mark.asyncio
async def test_recorder_samples_past_its_limit_but_lists_every_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    import taskpool._recorder as recorder_module

    monkeypatch.setattr(recorder_module, "SAMPLE_LIMIT", 10)
    async with FunctionPool(1, worker="inline") as pool:
        rec = status_app(pool)._reporter.recorder
        bad = [pool.add_task(fail, f"no {i}") for i in range(3)]
        good = [pool.add_task(square, i) for i in range(50)]  # the 3 failures are older than the sample
        await asyncio.gather(*bad, *good, return_exceptions=True)
        rec.catch_up()
        assert rec.run.n == pytest.approx(53) and sum(rec.run.counts) == pytest.approx(53)
        assert [f["id"] for f in rec.failures] == [t.id for t in bad]
        assert rec.failures[-1]["error"] == "ValueError: no 2"


MISSING_EXTRA = textwrap.dedent(
    """
    import asyncio, importlib, sys
    sys.modules["uvicorn"] = None            # as if the web extra were not installed
    sys.modules["prometheus_client"] = None
    import taskpool, taskpool.web            # the ASGI app itself needs neither

    async def main():
        async with taskpool.FunctionPool(1, worker="inline") as pool:
            taskpool.web.status_app(pool)
            try:
                await pool.serve_status()
            except ImportError as exc:
                print("serve:", exc)
        try:
            importlib.import_module("taskpool.metrics")
        except ImportError as exc:
            print("metrics:", exc)

    asyncio.run(main())
    """
)


def test_a_missing_extra_is_named() -> None:
    out = subprocess.run([sys.executable, "-c", MISSING_EXTRA], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("serve:") and "pip install 'taskpool[web]'" in lines[0]
    assert lines[1].startswith("metrics:") and "pip install 'taskpool[web]'" in lines[1]


# --- resumption edge cases, and what the review found ---------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("last", ["feedface-5", "not-an-id", "{epoch}-999999"])
async def test_a_foreign_or_future_last_event_id_gets_one_reset(last: str) -> None:
    async with FunctionPool(1, worker="inline") as pool:
        server, client = await served(pool)
        async with client:
            headers = {"Last-Event-ID": last.format(epoch=server.app._hub.epoch)}
            async with client.stream("GET", "/events", params={"topics": "y.*"}, headers=headers) as r:
                sse = SSE(r)
                assert (await sse.next())[1] == "reset"
                pool.events.publish("y.next", 1)
                assert (await sse.next())[1] == "y.next"  # straight on: no flood of resets


@pytest.mark.asyncio
async def test_resuming_a_dropped_feed_gets_one_reset_and_goes_on() -> None:
    import taskpool.web._sse as sse_module

    async with FunctionPool(1, worker="inline") as pool:
        server, client = await served(pool)
        hub = server.app._hub
        async with client:
            async with client.stream("GET", "/events", params={"topics": "z.*"}) as r:
                sse = SSE(r)
                pool.events.publish("z.1")
                seen, _, _ = await sse.next()
            async with asyncio.timeout(WAIT):  # the stream's end reaches the app
                while server.app.streams:
                    await asyncio.sleep(0.01)
            for feed in hub.feeds.values():  # nobody listened for longer than LINGER
                feed.idle_since = time.monotonic() - sse_module.LINGER - 1
            hub.tick()
            assert not hub.feeds
            pool.events.publish("z.lost")  # nobody follows z.* now: this one is gone
            async with client.stream("GET", "/events", params={"topics": "z.*"}, headers={"Last-Event-ID": seen}) as r:
                sse = SSE(r)
                assert (await sse.next())[1] == "reset"
                pool.events.publish("z.2")
                assert (await sse.next())[1] == "z.2"


@pytest.mark.asyncio
async def test_events_after_close_end_at_once_and_make_no_feed() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        server, client = await served(pool)
        server.app.close()
        async with client:
            for _ in range(5):
                async with client.stream("GET", "/events", params={"topics": f"t{_}.*"}) as r:
                    assert await SSE(r).names_until_end() == ["end"]
            head = await client.head("/events")
            assert head.status_code == 200 and head.content == b""
        assert not server.app._hub.feeds and pool.events.hot == frozenset()


def test_a_topic_cannot_forge_lines_in_the_stream() -> None:
    from taskpool.web._sse import frame

    out = frame("e-1", 'pool.x\n\nevent: status\ndata: {"forged": 1}', b"{}")
    assert out.count(b"\n\n") == 1 and out.startswith(b"id: e-1\nevent: pool.x  event: status data:")


@pytest.mark.asyncio
async def test_oldest_age_drops_settled_tasks_from_the_queue_head() -> None:
    async with FunctionPool(1, worker="thread") as pool, Gate() as gate:
        app = status_app(pool)
        held = pool.add_task(block_gate, gate.path, "held")
        await gate.arrived("held")
        gone = [pool.add_task(square, i) for i in range(1000)]
        for t in gone:
            t.cancel()
        waiting = pool.add_task(square, 7)
        rec = app._reporter.recorder
        assert len(pool._core.sched.queue) == 1001
        assert rec.oldest_queued_age(time.time()) >= 0.0
        assert len(pool._core.sched.queue) == 1  # the cancelled heads were dropped on the way
        gate.open()
        await asyncio.gather(held, waiting)


@pytest.mark.asyncio
async def test_tasks_pages_from_active_into_a_long_queue() -> None:
    async with FunctionPool(1, worker="thread") as pool, Gate() as gate:
        server, client = await served(pool)
        async with client:
            held = pool.add_task(block_gate, gate.path, "held")
            await gate.arrived("held")
            queued = [pool.add_task(square, i) for i in range(30)]
            seen = await all_pages(client, "remaining", 7)
            assert seen == [held.id, *(t.id for t in queued)]
            gate.open()
            await asyncio.gather(held, *queued)
