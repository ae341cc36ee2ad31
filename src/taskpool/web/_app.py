"""The status app: a plain ASGI 3 application over a pool, mountable anywhere.

Routes (relative to where it is mounted)::

    GET /          the live page (one self-contained HTML file)
    GET /status    the status report as JSON (ETag; If-None-Match answers 304)
    GET /tasks     task records, paged (?state=&limit=&after=)
    GET /events    Server-Sent Events (?topics=; Last-Event-ID resumes)
    GET /metrics   Prometheus text
    GET /healthz   liveness (never needs the token)

It is plain ASGI (no framework), so Starlette, FastAPI, Litestar and Django mount it
as it is. It must run in the pool's event loop: the pool's bookkeeping is not shared
across threads. Everything is read-only; task arguments and results are never shown
(records carry none), only ``meta``.
"""

from __future__ import annotations

import asyncio
import hmac
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .._types import PoolState
from ._report import PoolLike, Reporter, task_page
from ._sse import DEFAULT_TOPICS, Hub, frame

if TYPE_CHECKING:
    from .._core import PoolCore

__all__ = ["StatusApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Seconds between two status builds (the SSE ``status`` events come at most this often).
TICK = 0.5
#: Seconds between two SSE heartbeats (a comment line) on an idle stream.
HEARTBEAT = 15.0
_PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
_COMMON = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # the page's URL may carry the token
    (b"cache-control", b"no-store"),
]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"x-accel-buffering", b"no"),  # proxies: do not buffer the stream
    *_COMMON,
]
#: Every app alive, so a server shutting down can end their streams (see _server).
_APPS: weakref.WeakSet[StatusApp] = weakref.WeakSet()


class StatusApp:
    """The ASGI app :func:`status_app` returns; :meth:`close` ends its event streams.

    Attributes:
        token: the token every route but ``/healthz`` asks for (``None``: open).
        title: the name the page shows.
    """

    def __init__(
        self,
        pool: PoolLike,
        *,
        token: str | None = None,
        title: str | None = None,
        tick: float = TICK,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        from taskpool import FunctionPool

        if not isinstance(pool, FunctionPool):
            raise TypeError(f"status_app() needs a FunctionPool, got {type(pool).__name__}")
        if token is not None and not isinstance(token, str):
            raise TypeError(f"token must be a str or None, got {type(token).__name__}")
        if token == "":
            raise ValueError("token must not be empty; pass None for no token")
        if title is not None and not isinstance(title, str):
            raise TypeError(f"title must be a str or None, got {type(title).__name__}")
        self.pool: PoolLike = pool
        self._core: PoolCore = pool._core
        self.token: str | None = token
        self.title: str = title or pool.name
        self._heartbeat = heartbeat
        self._tick_every = tick
        self._reporter = Reporter(self._core, title=self.title, tick=tick)
        self._hub = Hub(self._core.events, self._reporter.current)
        self._closed = False
        self._ended: asyncio.Future[None] | None = None  # resolved when streams must end
        self._ticker: asyncio.Task[None] | None = None
        # stop -> (the task serving it, the listening socket it came in on: see end_streams_in)
        self._streams: dict[asyncio.Future[None], tuple[asyncio.Task[Any] | None, object]] = {}
        self._page: bytes | None = None
        _APPS.add(self)

    # --- life ------------------------------------------------------------------------------

    @property
    def streams(self) -> int:
        """How many ``/events`` streams are open."""
        return len(self._streams)

    def end_streams_in(self, tasks: Any = None, listening: Any = None) -> None:
        """End the open event streams a shutting-down server serves (all, with no arguments).

        A stream is that server's when it came in on one of its ``listening`` sockets
        (ports or Unix paths), or is served by one of its request ``tasks`` (middleware
        may run the app in a task of its own, so the socket is the surer sign). Used
        before a server's graceful shutdown (see ``_server``).
        """
        everything = tasks is None and listening is None
        for stop, (task, key) in list(self._streams.items()):
            mine = everything or (listening is not None and key in listening) or (tasks is not None and task in tasks)
            if mine and not stop.done():
                stop.set_result(None)

    def close(self) -> None:
        """End every event stream now (each gets ``event: end``); new ones end at once.

        The other routes keep answering. Call it when the server that serves the app
        shuts down, so no open stream holds the shutdown back (``serve_status`` and
        uvicorn do it for you, see the docs).
        """
        if self._closed:
            return
        self._closed = True
        self._end_streams()

    def _end_streams(self) -> None:
        try:  # viewers see the last status (closing, with the final counts) before the end
            self._reporter.current(fresh=True)
            self._hub.tick()
        except Exception as exc:  # a pool torn down under us: the end still goes out
            self._core.log.debug("status app: no last status", error=repr(exc))
        self.end_streams_in(None)
        fut = self._ended
        if fut is not None and not fut.done():
            fut.set_result(None)
        self._hub.close()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def _ended_future(self) -> asyncio.Future[None]:
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
            if self._closed or self._pool_gone():
                self._ended.set_result(None)
        return self._ended

    def _pool_gone(self) -> bool:
        return self._core.events.closed or self._core.state is PoolState.CLOSED

    def _ensure_ticker(self) -> None:
        if self._ticker is None and not self._closed:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        # Status events while a feed wants them, until the pool's bus closes.
        sub = self._core.events.subscribe("pool.closed", maxsize=4)
        try:
            while not self._closed:
                self._hub.tick()
                try:
                    await asyncio.wait_for(sub.__anext__(), self._tick_every)
                except TimeoutError:
                    continue
                except StopAsyncIteration:
                    break
            else:
                return
            # The pool closed: a last status, then the streams end.
            self._reporter.current(fresh=True)
            self._hub.tick()
            fut = self._ended_future()
            if not fut.done():
                fut.set_result(None)
        finally:
            sub.close()

    # --- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection (``http``; ``lifespan`` when it is the top-level app)."""
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":  # websockets: not spoken here
            return
        loop = self._core.loop
        if loop is not None and loop is not asyncio.get_running_loop():
            await _respond(send, 500, b'{"error": "the status app must run in its pool\'s event loop"}')
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(send, 405, b'{"error": "read-only: GET only"}', extra=[(b"allow", b"GET, HEAD")])
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if path == "/healthz":
            code, body = self._reporter.health()
            await _respond(send, code, body)
            return
        if path == "":  # mounted at /x and asked for /x: the page's relative links need /x/
            qs = scope.get("query_string", b"").decode("latin-1")
            target = (root or "") + "/" + (f"?{qs}" if qs else "")
            location = [(b"location", target.encode("latin-1"))]
            await _respond(send, 308, b"", content_type=b"text/plain", extra=location)
            return
        if not self._allowed(query, headers):
            if path == "/":
                await _respond(send, 401, _REFUSED_PAGE, content_type=b"text/html; charset=utf-8")
            else:
                await _respond(
                    send, 401, b'{"error": "token missing or wrong"}', extra=[(b"www-authenticate", b"Bearer")]
                )
            return
        if path == "/":
            await _respond(
                send, 200, self._page_bytes(), content_type=b"text/html; charset=utf-8",
                extra=[(b"content-security-policy", _PAGE_CSP.encode())],
            )  # fmt: skip
        elif path == "/status":
            await self._status(send, headers)
        elif path == "/tasks":
            await self._tasks(send, query)
        elif path == "/events":
            await self._events(receive, send, query, headers, scope["method"], scope.get("server"))
        elif path == "/metrics":
            await self._metrics(send)
        else:
            await _respond(send, 404, b'{"error": "not found"}')

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # Served alone (no framework): startup is instant; shutdown ends the streams.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _allowed(self, query: dict[str, list[str]], headers: dict[str, str]) -> bool:
        token = self.token
        if token is None:
            return True
        given = None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        elif query.get("token"):
            given = query["token"][0]
        return given is not None and hmac.compare_digest(given.encode(), token.encode())

    def _page_bytes(self) -> bytes:
        if self._page is None:
            raw = resources.files("taskpool.web").joinpath("_page.html").read_bytes()
            self._page = raw.replace(b"__TASKPOOL_TITLE__", _html_escape(self.title).encode())
        return self._page

    async def _status(self, send: Send, headers: dict[str, str]) -> None:
        seq, data = self._reporter.current()
        etag = f'W/"{id(self):x}-{seq}"'.encode()
        if headers.get("if-none-match", "").encode() == etag:
            await _respond(send, 304, b"", extra=[(b"etag", etag)])
            return
        await _respond(send, 200, data, extra=[(b"etag", etag)])

    async def _tasks(self, send: Send, query: dict[str, list[str]]) -> None:
        try:
            state = query.get("state", ["completed"])[0] or "completed"
            limit = int(query.get("limit", ["100"])[0] or 100)
            after_s = query.get("after", [""])[0]
            after = int(after_s) if after_s else None
            body = task_page(self._core, state, limit, after)
        except ValueError as exc:
            await _respond(send, 400, _json_error(str(exc)))
            return
        await _respond(send, 200, body)

    async def _metrics(self, send: Send) -> None:
        try:
            from ..metrics import render
        except ImportError as exc:  # prometheus_client is in the extra
            await _respond(send, 501, _json_error(f"{exc}; install taskpool[web]"))
            return
        await _respond(send, 200, render(self.pool), content_type=b"text/plain; version=0.0.4; charset=utf-8")

    async def _events(
        self,
        receive: Receive,
        send: Send,
        query: dict[str, list[str]],
        headers: dict[str, str],
        method: str,
        server: Any,
    ) -> None:
        topics = [t.strip() for part in query.get("topics", []) for t in part.split(",") if t.strip()]
        patterns = tuple(topics) or DEFAULT_TOPICS
        last = self._hub.parse_id(headers.get("last-event-id") or (query.get("lastEventId") or [""])[0])
        if self._closed or method == "HEAD":  # closed: no feed for it (nothing would expire it)
            body = b"" if method == "HEAD" else b"retry: 2000\n\n" + frame(None, "end", b"{}")
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            await send({"type": "http.response.body", "body": body})
            return
        ended = self._ended_future()
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[None] = loop.create_future()
        self._streams[stop] = (asyncio.current_task(), _server_key(server))
        feed = self._hub.acquire(patterns)
        self._ensure_ticker()
        gone = loop.create_task(_wait_disconnect(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            hello = [b"retry: 2000\n\n"]
            # Where this client starts: now, or after the event it last saw. Never before
            # the feed's own start: what came earlier is not kept (a reset says so).
            floor = max(feed.evicted, feed.first_id - 1)
            if last is None:
                cursor = self._hub.last_id
            elif last < 0 or last > self._hub.last_id:  # not this app's id: a restart, another process
                hello.append(frame(None, "reset", b'{"reason": "events were missed; read /status"}'))
                cursor = self._hub.last_id
            elif last < floor:  # older than what the feed keeps
                hello.append(frame(None, "reset", b'{"reason": "events were missed; read /status"}'))
                cursor = floor
            else:
                cursor = last
            if feed.wants_status:  # the current status first, so a client never starts blank
                _, data = self._reporter.current()
                hello.append(frame(None, "status", data))
            await send({"type": "http.response.body", "body": b"".join(hello), "more_body": True})
            while True:
                missed, frames, new_cursor = feed.since(cursor)
                if missed:
                    frames.insert(0, frame(None, "reset", b'{"reason": "fell behind; events were dropped"}'))
                if frames:
                    cursor = max(new_cursor, feed.evicted, feed.first_id - 1)
                    await send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})
                    await asyncio.sleep(0)  # a fast feed never starves the pool's loop
                    continue
                if ended.done() or gone.done() or stop.done():
                    break
                changed = feed.changed()
                done, _ = await asyncio.wait(
                    {changed, ended, gone, stop}, timeout=self._heartbeat, return_when="FIRST_COMPLETED"
                )
                if not done:
                    await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})
            if not gone.done():
                await send({"type": "http.response.body", "body": frame(None, "end", b"{}"), "more_body": False})
        except OSError:  # the client went away mid-write
            pass
        finally:
            del self._streams[stop]
            gone.cancel()
            self._hub.release(feed)


def _server_key(server: Any) -> object:
    """What identifies the listening socket a request came in on: its port (TCP) or path (Unix)."""
    if isinstance(server, (tuple, list)) and len(server) == 2:
        return server[1] if server[1] is not None else server[0]
    return None


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *_COMMON]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _json_error(message: str) -> bytes:
    import json

    return json.dumps({"error": message}).encode()


def _html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


_REFUSED_PAGE = b"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>taskpool: token needed</title>
</head><body style="font-family: system-ui, sans-serif; margin: 2rem">
<h1 id="refused">Token needed</h1>
<p>This taskpool status page needs its token: open the URL with <code>?token=...</code>
(the pool printed it when it started serving), or send <code>Authorization: Bearer ...</code>.</p>
</body></html>"""
