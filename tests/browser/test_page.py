"""The live status page (``GET /`` of ``taskpool.web.status_app``) in a real headless Chromium.

Each test runs a real pool and ``await pool.serve_status()`` on the test's own loop, and drives
the browser with Playwright's async API on that same loop, so the server keeps serving while the
test waits on the page. Waits are Playwright's ``expect`` (polling the DOM until a deadline),
never sleeps. ``TASKPOOL_SCREENSHOTS=docs/images`` makes :func:`test_full_page_and_screenshots`
write the documentation's screenshots there.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest

from taskpool import FunctionPool
from taskpool.testing import Gate, wait_gate
from tests._funcs import add, crash_worker, fail
from tests.browser._funcs import nap, serve_forever
from tests.browser.conftest import PageWatch

pytestmark = [pytest.mark.browser, pytest.mark.asyncio]

try:
    from playwright.async_api import expect
except ImportError:  # the browser fixture skips these tests (or fails them under .ci/browser)
    expect = None
else:
    expect.set_options(timeout=15_000)  # the deadline of every DOM wait: generous for a loaded CI box

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
SCREENSHOTS = os.environ.get("TASKPOOL_SCREENSHOTS")


@asynccontextmanager
async def served(pool: FunctionPool, **kwargs: Any) -> AsyncIterator[Any]:
    """``pool.serve_status()``, closed on the way out (before the pool itself closes)."""
    server = await pool.serve_status(**kwargs)
    try:
        yield server
    finally:
        await server.aclose()


def page_url(server: Any, token: str | None = None) -> str:
    token = server.token if token is None else token
    return f"{server.url}?token={token}" if token else server.url


async def open_page(browser: Any, url: str, viewport: dict[str, int], **context: Any) -> tuple[Any, Any, PageWatch]:
    ctx = await browser.new_context(viewport=viewport, **context)
    page = await ctx.new_page()
    watch = PageWatch(page)
    response = await page.goto(url)
    assert response is not None and response.status == 200, response and response.status
    return ctx, page, watch


async def test_page_follows_a_running_pool(browser: Any) -> None:
    """(a) the token works for every request; name, workers and figures follow the pool live."""
    async with FunctionPool(pool_size=2, worker="process", name="browser-demo") as pool, served(pool) as server:
        assert server.token, "serve_status() makes a random token by default"
        ctx, page, watch = await open_page(browser, page_url(server), DESKTOP)
        try:
            await expect(page.locator("#pool-name")).to_have_text("browser-demo")
            await expect(page.locator("#pool-state")).to_have_text("running")
            await expect(page.locator("#conn-state")).to_have_attribute("data-state", "live")
            rows = page.locator("#workers tr[data-worker-id]")
            await expect(rows).to_have_count(2)
            await expect(rows.nth(0).locator(".c-where")).to_contain_text("pid ")

            async with Gate() as gate:
                held = [pool.add_task(wait_gate, gate.path, f"hold{i}", meta=f"hold {i}") for i in range(2)]
                await gate.arrived("hold0", "hold1")
                await expect(page.locator("#count-active")).to_have_text("2")
                await expect(page.locator('#workers tr[data-state="busy"]')).to_have_count(2)
                ids = {f"#{t.id}" for t in held}
                tasks_shown = {await rows.nth(i).locator(".c-task").inner_text() for i in range(2)}
                assert tasks_shown == ids
                gate.open()
                await asyncio.gather(*held)

            tasks = [pool.add_task(add, i, 1) for i in range(20)]
            await asyncio.gather(*tasks)
            await expect(page.locator("#count-succeeded")).to_have_text("22")
            await expect(page.locator("#count-total")).to_have_text("22")
            await expect(page.locator("#count-active")).to_have_text("0")
            await expect(page.locator('#workers tr[data-state="idle"]')).to_have_count(2)
            await expect(page.locator("#run-count")).to_have_text("22")

            # Data goes in as text: markup in a task's meta or error must show, not run.
            bad = pool.add_task(fail, "bad input <b>42</b>", meta="<img src=x onerror=alert(1)>")
            with pytest.raises(ValueError, match="bad input"):
                await bad
            failures = page.locator("#failures li")
            await expect(failures).to_have_count(1)
            await expect(failures.first).to_have_attribute("data-task-id", str(bad.id))
            await expect(failures.first.locator(".error")).to_have_text("ValueError: bad input <b>42</b>")
            await expect(failures.first.locator(".meta")).to_have_text("<img src=x onerror=alert(1)>")
            assert await page.locator("#failures img, #failures b, #events img").count() == 0
            await expect(page.locator("#count-failed")).to_have_text("1")
            await expect(page.locator('#events li[data-topic="task.failed"]')).to_contain_text("bad input")
            watch.assert_clean()
        finally:
            await ctx.close()


@asynccontextmanager
async def mounted_under(prefix: str, app: Any) -> AsyncIterator[str]:
    """Serve ``app`` mounted at ``prefix`` (as ``app.mount(prefix, app)`` does) with uvicorn on this loop.

    Yields the server's base URL (``http://127.0.0.1:PORT``).
    """
    import uvicorn

    async def outer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == prefix or path.startswith(prefix + "/")):
            await app({**scope, "root_path": scope.get("root_path", "") + prefix}, receive, send)
            return
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not here"})

    class Server(uvicorn.Server):  # type: ignore[misc]
        def capture_signals(self) -> Any:  # leave pytest's signal handlers alone
            return nullcontext()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(outer, log_config=None, log_level="warning", access_log=False, lifespan="off")
    server = Server(config)
    started = asyncio.Event()
    startup = server.startup

    async def startup_then_tell(sockets: Any = None) -> None:
        await startup(sockets)
        started.set()

    server.startup = startup_then_tell
    serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        ready = asyncio.ensure_future(started.wait())
        await asyncio.wait({ready, serving}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        assert started.is_set(), f"uvicorn did not start: {serving}"
        yield f"http://127.0.0.1:{port}"
    finally:
        app.close()  # ends open event streams, so uvicorn's shutdown does not wait on them
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        sock.close()


async def test_page_works_mounted_under_a_prefix(browser: Any) -> None:
    """Mounted at /ops/taskpool, the page finds its routes relative to its own path."""
    from taskpool.web import status_app

    async with FunctionPool(pool_size=1, worker="thread", name="mounted") as pool:
        app = status_app(pool, token="s3cret")
        async with mounted_under("/ops/taskpool", app) as base:
            for path in ("/ops/taskpool/", "/ops/taskpool"):  # without the slash: redirected to it
                ctx, page, watch = await open_page(browser, f"{base}{path}?token=s3cret", DESKTOP)
                try:
                    await expect(page.locator("#conn-state")).to_have_attribute("data-state", "live")
                    await expect(page.locator("#pool-name")).to_have_text("mounted")
                    await expect(page.locator("#workers tr[data-worker-id]")).to_have_count(1)
                    await pool.add_task(add, 1, 2)
                    await expect(page.locator("#count-succeeded")).not_to_have_text("0")
                    assert page.url == f"{base}/ops/taskpool/?token=s3cret"
                    watch.assert_clean()
                finally:
                    await ctx.close()


async def test_page_polls_when_events_are_unavailable(browser: Any) -> None:
    """Without a working /events stream the page falls back to polling /status and says so.

    Served without a token (``token=""``): the page then sends none.
    """
    async with FunctionPool(pool_size=2, worker="thread", name="polled") as pool, served(pool, token="") as server:
        assert server.token is None
        ctx = await browser.new_context(viewport=DESKTOP)
        try:
            await ctx.route(re.compile(r"/events(\?|$)"), lambda route: route.abort())
            page = await ctx.new_page()
            watch = PageWatch(page)
            await page.goto(server.url)
            await expect(page.locator("#conn-state")).to_have_attribute("data-state", "polling")
            await expect(page.locator("#pool-name")).to_have_text("polled")
            await asyncio.gather(*(pool.add_task(add, i, i) for i in range(5)))
            await expect(page.locator("#count-succeeded")).to_have_text("5")
            # The aborted /events requests are the browser's own console errors, and nothing else is.
            assert all("/events" in e or "ERR_FAILED" in e for e in watch.errors), watch.errors
        finally:
            await ctx.close()


@pytest.mark.parametrize("token", ["", "wrong-token"], ids=["no-token", "wrong-token"])
async def test_page_refused_without_the_token(browser: Any, token: str) -> None:
    """(b) without the token, or with a wrong one, the server answers 401 and the page says a token is needed."""
    async with FunctionPool(pool_size=1, worker="thread") as pool, served(pool) as server:
        ctx = await browser.new_context(viewport=DESKTOP)
        try:
            page = await ctx.new_page()
            response = await page.goto(page_url(server, token))
            assert response is not None and response.status == 401
            assert "token" in (await page.locator("body").inner_text()).lower()
            for route in ("status", "events", "tasks", "metrics"):
                url = f"{server.url}{route}" + (f"?token={token}" if token else "")
                api = await ctx.request.get(url)
                assert api.status == 401, (route, api.status)
                body = await api.json()
                assert isinstance(body.get("error"), str) and body["error"]
            assert (await ctx.request.get(f"{server.url}status?token={server.token}")).status == 200
            healthz = await ctx.request.get(f"{server.url}healthz")
            assert healthz.status == 200 and (await healthz.json())["ok"] is True
        finally:
            await ctx.close()


async def test_page_says_when_its_token_is_refused(browser: Any) -> None:
    """A page whose requests are refused (its token went stale) says so instead of showing old figures."""
    async with FunctionPool(pool_size=1, worker="thread") as pool, served(pool) as server:
        ctx = await browser.new_context(viewport=DESKTOP)
        try:
            stale = "Bearer not-the-token"

            async def swap_token(route: Any) -> None:
                request = route.request
                headers = await request.all_headers()
                if "authorization" in headers:
                    headers["authorization"] = stale
                url = request.url.replace(f"token={server.token}", "token=not-the-token")
                await route.continue_(url=url, headers=headers)

            await ctx.route(re.compile(r"/(status|events)(\?|$)"), swap_token)
            page = await ctx.new_page()
            await page.goto(page_url(server))
            await expect(page.locator("#conn-state")).to_have_attribute("data-state", "unauthorized")
            await expect(page.locator("#banner")).to_be_visible()
            await expect(page.locator("#banner")).to_contain_text("token")
        finally:
            await ctx.close()


async def test_full_page_and_screenshots(browser: Any, tmp_path: Path) -> None:
    """(c, d) every section filled: busy workers, a queue, a worker restart, a service, a persistent
    worker, failures and recent events; on a desktop and on a phone (no horizontal overflow, one
    column); no console errors.

    With ``TASKPOOL_SCREENSHOTS=<dir>`` the two views are saved there as ``status-page.png`` and
    ``status-page-phone.png`` (the documentation's screenshots).
    """
    out = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    async with (
        FunctionPool(pool_size=4, worker="process", name="thumbnails") as pool,
        Gate(timeout=30) as gate,
        served(pool, title="thumbnails · image workers") as server,
    ):
        math = await pool.import_persistent_worker("taskpool.examples.math", worker="thread")
        assert await math.add(2, 3) == 5
        pool.keep_alive(serve_forever, name="uploader", instances=2, worker="thread")
        with pytest.raises(ValueError):
            await pool.add_task(fail, "image is truncated", meta="resize(upload_7.png)")

        views = []  # both pages open first, so both see the events that follow
        try:
            for viewport in (DESKTOP, PHONE):
                phone = viewport is PHONE
                views.append(await open_page(browser, page_url(server), viewport, is_mobile=phone, has_touch=phone))
            for _, page, _ in views:
                await expect(page.locator("#conn-state")).to_have_attribute("data-state", "live")
                await expect(page.locator("#pool-name")).to_have_text("thumbnails · image workers")

            crashed = pool.add_task(crash_worker, meta="crash_worker()")
            with pytest.raises(Exception, match="(?i)crash|exit|died"):
                await crashed
            await asyncio.gather(*(pool.add_task(nap, 0.002 * (i % 7), meta=f"resize({i})") for i in range(120)))
            with pytest.raises(ValueError):
                await pool.add_task(fail, "unsupported format 'image/x-tga'", meta="resize(scan_0042.tga)")
            held = [pool.add_task(wait_gate, gate.path, f"h{i}", meta=f"resize(big_{i}.tiff)") for i in range(4)]
            await gate.arrived("h0", "h1", "h2", "h3")
            waiting = [pool.add_task(wait_gate, gate.path, "later", meta=f"resize({i})") for i in range(6)]

            for (_, page, watch), name in zip(views, ("status-page.png", "status-page-phone.png"), strict=True):
                await expect(page.locator('#workers tr[data-state="busy"]')).to_have_count(4)
                await expect(page.locator("#count-total")).to_have_text("133")
                groups = page.locator('[data-testid="service-group"]')
                await expect(groups).to_have_count(2)
                await expect(page.locator('[data-testid="service-group"][data-role="service"] .inst')).to_have_count(2)
                await expect(page.locator('[data-testid="service-group"][data-role="persistent"]')).to_have_count(1)
                await expect(page.locator("#failures li")).to_have_count(3)
                await expect(page.locator("#failures li").first).to_contain_text("unsupported format")
                await expect(page.locator("#restarts li[data-reason]")).to_have_count(1)
                await expect(page.locator('#events li[data-topic="worker.restarted"]')).to_have_count(1)
                await expect(page.locator('#events li[data-topic="task.failed"]')).to_have_count(2)
                overflow = await page.evaluate(
                    """() => {
                        const w = document.documentElement.clientWidth;
                        const wide = [...document.querySelectorAll("body *")]
                            .filter((e) => e.getClientRects().length && e.getBoundingClientRect().right > w + 0.5)
                            .map((e) => e.tagName + (e.id ? "#" + e.id : "") + "." + e.className);
                        return {scroll: document.documentElement.scrollWidth, width: w, wide};
                    }"""
                )
                assert overflow["scroll"] <= overflow["width"] and not overflow["wide"], overflow
                if name == "status-page-phone.png":  # one column: every panel starts at the same x
                    lefts = await page.eval_on_selector_all(
                        ".panel", "ps => ps.map((p) => Math.round(p.getBoundingClientRect().left))"
                    )
                    assert len(lefts) == 6 and len(set(lefts)) == 1, lefts
                await page.screenshot(path=str(out / name))
                watch.assert_clean()
        finally:
            for ctx, _, _ in views:
                await ctx.close()
        gate.open()
        await asyncio.gather(*held, *waiting)
        await math.terminate()
