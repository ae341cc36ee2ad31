"""``taskpool top URL``: a terminal view of a pool's status app (``taskpool.web``), redrawn on change.

Two threads, so neither the network nor the keyboard ever blocks the other::

     main thread                                  feed thread (_Feed)
   ┌──────────────────────────────┐  messages  ┌──────────────────────────────────────┐
   │ select(stdin, wake socket)   │ ◄───────── │ GET /events?topics=status (SSE)      │
   │ 'q', Ctrl-C, SIGWINCH        │  + a byte  │   or, when the server has no SSE,    │
   │ draw the frame when changed  │  on wake   │   GET /status every --interval       │
   └──────────────────────────────┘            │ lost: "disconnected, retrying" +     │
                                               │   backoff; 401: fatal; end: last one │
                                               └──────────────────────────────────────┘

Standard library only: it runs wherever taskpool is installed, against a pool on another host.
On a terminal it takes the alternate screen and hides the cursor, and gives both back however it
ends (``q``, Ctrl-C, SIGTERM, the pool closing, an error); elsewhere it prints plain blocks.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import queue
import select
import shutil
import signal
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from ._topview import ENTER, LEAVE, Screen, Status, clean, plain, render, terminal

__all__ = ["BadAnswer", "SSEEvent", "SSEParser", "Target", "TopError", "Unauthorized", "fetch_status", "run_top"]

CONNECT_TIMEOUT = 5.0  # seconds for a connect and for a /status answer
STREAM_TIMEOUT = 45.0  # no byte for this long (three missed 15 s pings): the stream is dead
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0  # reconnect delays: doubled from the first up to the cap
MAX_LINE = 1 << 20  # an SSE line longer than this is an error, not a reason to eat memory
ROUTES = ("status", "events", "tasks", "metrics", "healthz")


class TopError(Exception):
    """A problem ``taskpool top`` reports in one line on stderr (exit 1)."""


class Unauthorized(TopError):
    """The status app answered 401: the token was refused or none was given."""

    def __init__(self) -> None:
        super().__init__("token refused or missing (pass --token, ?token= in the URL, or set $TASKPOOL_TOKEN)")


class BadAnswer(TopError):
    """The server answered, but not as a taskpool status app does."""


# --- where to connect -------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A status app's address: ``base`` is the path it is mounted at, always ending in ``/``."""

    scheme: str
    host: str
    port: int | None
    base: str
    token: str | None

    @classmethod
    def parse(cls, url: str, token: str | None = None, env_token: str | None = None) -> Target:
        """Read ``url`` (``http://host:port/prefix/``; ``?token=`` in it is taken out and used).

        The token is ``token`` if given, else the URL's, else ``env_token``; an empty one is none.
        A URL naming one of the app's routes (``.../status``) means the app above it.
        Raises ValueError for a URL that is not http(s) with a host, TypeError for a non-str.
        """
        if not isinstance(url, str):
            raise TypeError(f"URL must be a str, not {type(url).__name__}")
        if "://" not in url:
            url = "http://" + url
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"bad URL {url!r}: expected http://HOST:PORT/")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad URL {url!r}: {exc}") from None
        base = parts.path or "/"
        head, _, last = base.rstrip("/").rpartition("/")
        if not base.endswith("/") and last in ROUTES:
            base = head
        if not base.endswith("/"):
            base += "/"
        query = urllib.parse.parse_qs(parts.query)
        chosen = token if token is not None else (query.get("token", [None])[-1] or env_token)
        return cls(parts.scheme, parts.hostname, port, base, chosen or None)

    @property
    def url(self) -> str:
        """The app's URL, without the token."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}{'' if self.port is None else f':{self.port}'}{self.base}"

    def route(self, name: str, **query: str) -> str:
        """The request path of one of the app's routes."""
        return self.base + name + ("?" + urllib.parse.urlencode(query) if query else "")

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        """A new (not yet connected) connection to the app's host."""
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout)

    def headers(self, **extra: str) -> dict[str, str]:
        """Request headers: the token (as a header: it stays out of the server's access log)."""
        out = {"User-Agent": "taskpool-top", **extra}
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        return out


def fetch_status(
    target: Target, etag: str | None = None, timeout: float = CONNECT_TIMEOUT
) -> tuple[Status | None, str | None]:
    """GET /status: ``(status, etag)``, or ``(None, etag)`` when unchanged since ``etag`` (304).

    Raises Unauthorized (401), BadAnswer (another status, or not a status JSON), and OSError or
    http.client.HTTPException when the server cannot be reached or the connection breaks.
    """
    conn = target.connection(timeout)
    try:
        conn.request("GET", target.route("status"), headers=target.headers(**({"If-None-Match": etag} if etag else {})))
        resp = conn.getresponse()
        body = resp.read()
        if resp.status == 304:
            return None, etag
        if resp.status == 401:
            raise Unauthorized
        if resp.status != 200:
            raise BadAnswer(f"{target.url}status answered {resp.status} {resp.reason}: is it a taskpool status app?")
        try:
            data = json.loads(body)
        except ValueError:
            raise BadAnswer(f"{target.url}status did not answer JSON: is it a taskpool status app?") from None
        if not isinstance(data, dict) or not isinstance(data.get("counts"), dict):
            raise BadAnswer(f"{target.url}status is not a taskpool status")
        return data, resp.getheader("ETag")
    finally:
        conn.close()


# --- Server-Sent Events -----------------------------------------------------------------


@dataclass
class SSEEvent:
    """One dispatched event: its ``event`` name (``message`` by default), ``data`` and ``id``."""

    event: str = "message"
    data: str = ""
    id: str | None = None


class SSEParser:
    """The text/event-stream format, one line at a time (WHATWG HTML, "Server-sent events").

    ``id``/``event``/``data`` fields (``retry`` is ignored: the backoff is ours); ``data`` lines join
    with newlines; lines starting with ``:`` are comments (the server's pings); a blank line
    dispatches. An event with a name but no data is dispatched too (the spec drops it; ``event: end``
    may well come bare).
    """

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self.last_id: str | None = None

    def feed(self, line: str) -> SSEEvent | None:
        """Take one line (without its line ending); returns the event it completes, if any."""
        if not line:
            if not self._data and not self._event:
                return None
            event = SSEEvent(self._event or "message", "\n".join(self._data), self.last_id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None


# --- the feed thread --------------------------------------------------------------------


@dataclass
class _Msg:
    kind: str  # "status" | "link" (connection state text) | "end" | "fatal"
    status: Status | None = None
    text: str = ""


class _NoStream(Exception):
    """The server has no usable /events: poll /status instead."""


class _Feed:
    """Fetches status changes in its own thread and hands them to ``post``."""

    def __init__(self, target: Target, interval: float, post: Callable[[_Msg], None]) -> None:
        self.target = target
        self.interval = interval
        self.post = post
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards _conn: stop() shuts its socket down from the main thread
        self._conn: http.client.HTTPConnection | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="taskpool-top-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; a read blocked on the stream is woken by shutting its socket down."""
        self._stop.set()
        with self._lock:
            sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(2.0)  # daemon: a thread still stuck in a connect does not hold the exit

    def _run(self) -> None:
        delay = BACKOFF_FIRST
        stream = True
        parser = SSEParser()  # kept across reconnects: its last_id resumes the stream
        while not self._stop.is_set():
            try:
                if stream:
                    self._stream(parser)
                else:
                    self._poll()
                return
            except _NoStream as exc:
                stream = False
                self.post(_Msg("link", text=f"polling every {self.interval:g}s (no live stream: {exc})"))
                continue
            except Unauthorized as exc:
                self.post(_Msg("fatal", text=str(exc)))
                return
            except _Connected:
                delay = BACKOFF_FIRST  # it worked for a while: start the backoff afresh
                reason = "connection lost"
            except (OSError, http.client.HTTPException, TopError, ValueError) as exc:
                reason = _reason(exc)
            if self._stop.is_set():
                return
            self.post(_Msg("link", text=f"disconnected, retrying in {delay:.1f}s ({reason})"))
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, BACKOFF_MAX)

    def _stream(self, parser: SSEParser) -> None:
        conn = self.target.connection(CONNECT_TIMEOUT)
        with self._lock:
            self._conn = conn
        try:
            headers = self.target.headers(Accept="text/event-stream", **{"Cache-Control": "no-cache"})
            if parser.last_id is not None:
                headers["Last-Event-ID"] = parser.last_id
            conn.request("GET", self.target.route("events", topics="status"), headers=headers)
            if self._stop.is_set():
                return
            resp = conn.getresponse()
            if resp.status == 401:
                raise Unauthorized
            kind = (resp.getheader("Content-Type") or "").split(";")[0].strip()
            if resp.status in (404, 405, 406, 501) or (resp.status == 200 and kind != "text/event-stream"):
                raise _NoStream(f"/events answered {resp.status} {kind}".strip())
            if resp.status != 200:
                raise BadAnswer(f"/events answered {resp.status} {resp.reason}")
            if conn.sock is not None:
                conn.sock.settimeout(STREAM_TIMEOUT)  # pings come every 15 s; silence is a dead link
            self.post(_Msg("link", text="live"))
            self._read(resp, parser)
        finally:
            with self._lock:
                self._conn = None
            conn.close()

    def _read(self, resp: http.client.HTTPResponse, parser: SSEParser) -> None:
        got_any = False
        while not self._stop.is_set():
            try:
                raw = resp.readline(MAX_LINE + 1)
            except (OSError, http.client.HTTPException):
                if got_any:
                    raise _Connected from None
                raise
            if not raw or len(raw) > MAX_LINE:
                if self._stop.is_set():
                    return
                raise _Connected if got_any else ConnectionError("stream closed")
            got_any = True
            event = parser.feed(raw.decode("utf-8", "replace").rstrip("\n").rstrip("\r"))
            if event is None:
                continue
            if event.event == "status":
                data = json.loads(event.data)
                if isinstance(data, dict):
                    self.post(_Msg("status", data))
            elif event.event == "reset":  # events were missed: the next status may be a while
                self.post(_Msg("status", fetch_status(self.target)[0]))
            elif event.event == "end":
                # The stream may end before the last status tells why: ask once, briefly.
                with contextlib.suppress(OSError, http.client.HTTPException, TopError):
                    self.post(_Msg("status", fetch_status(self.target, timeout=1.0)[0]))
                self.post(_Msg("end", text=_end_reason(event.data)))
                return

    def _poll(self) -> None:
        etag: str | None = None
        while True:
            status, etag = fetch_status(self.target, etag)
            if status is not None:
                self.post(_Msg("status", status))
                if status.get("state") == "closed":
                    self.post(_Msg("end", text="the pool closed"))
                    return
            if self._stop.wait(self.interval):
                return


class _Connected(Exception):
    """The stream broke after it had worked: reconnect without growing the backoff."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TopError):
        return str(exc)
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)


def _end_reason(data: str) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        reason = json.loads(data).get("reason")
        if reason:
            return f"the status stream ended: {clean(reason)}"
    return "the status stream ended: the pool is closing, or its status server stopped"


# --- the terminal -----------------------------------------------------------------------


class _Terminated(Exception):
    """SIGTERM arrived: leave like Ctrl-C, then exit 143."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def run_top(
    url: str,
    *,
    token: str | None = None,
    interval: float = 1.0,
    once: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run ``taskpool top`` against the status app at ``url``; returns the exit code.

    The token is ``token``, else ``?token=`` in ``url``, else ``$TASKPOOL_TOKEN``. On a terminal
    (``out`` a tty) it draws full screen until ``q``; otherwise it prints a plain block per change.
    Errors become exit codes, never tracebacks: 0 quit (``q``, Ctrl-C), ``once`` done, or the
    stream ended (the pool closed); 1 cannot connect, token refused (at start or later), not a
    status app; 2 a bad URL or ``interval``; 143 SIGTERM.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if not (isinstance(interval, int | float) and math.isfinite(interval) and 0.05 <= interval <= 3600):
        print(f"taskpool top: --interval must be a number of seconds in 0.05..3600, not {interval!r}", file=err)
        return 2
    try:
        target = Target.parse(url, token, os.environ.get("TASKPOOL_TOKEN"))
    except (TypeError, ValueError) as exc:
        print(f"taskpool top: {exc}", file=err)
        return 2
    try:
        try:
            status, _ = fetch_status(target)
        except (OSError, http.client.HTTPException) as exc:
            raise TopError(f"cannot connect to {target.url}: {_reason(exc)}") from None
        assert status is not None
        if once:
            out.write(plain(render(status)))
            out.flush()
            return 0
        return _watch(target, status, interval, out)
    except KeyboardInterrupt:
        return 0
    except _Terminated:
        return 143
    except BrokenPipeError:  # `taskpool top URL | head`: the reader has had enough
        if out is sys.stdout:  # and Python's last flush of stdout at exit must not complain
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, out.fileno())
                os.close(devnull)
        return 0
    except TopError as exc:
        print(f"taskpool top: {exc}", file=err)
        return 1


class _PlainOut:
    """Output that is not a terminal: a plain block per changed status, a line per change of link."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.shown: Status | None = None
        self.link = "connecting"

    def show(self, status: Status, link: str) -> None:
        if link != self.link:
            if not (self.link == "connecting" and link == "live"):
                self.out.write(f"-- {'live again' if link == 'live' else link}\n")
            self.link = link
        content = {k: v for k, v in status.items() if k != "time"}  # a newer time alone is no change
        if content != self.shown:
            self.out.write(plain(render(status)) + "\n")
            self.shown = content
        self.out.flush()


def _watch(target: Target, status: Status, interval: float, out: TextIO) -> int:
    tty_out = out.isatty()
    key_fd: int | None = None
    if tty_out and os.name == "posix":
        with contextlib.suppress(AttributeError, ValueError, OSError):
            if sys.stdin.isatty():
                key_fd = sys.stdin.fileno()
    wake_r, wake_w = socket.socketpair()  # select() takes sockets everywhere, pipes only on POSIX
    wake_w.setblocking(False)
    inbox: queue.SimpleQueue[_Msg] = queue.SimpleQueue()

    def post(msg: _Msg) -> None:
        inbox.put(msg)
        with contextlib.suppress(OSError):  # full: a wake byte is waiting already
            wake_w.send(b"m")

    def on_winch(signum: int, frame: object) -> None:  # wake the select: each draw reads the size anew
        with contextlib.suppress(OSError):
            wake_w.send(b"w")

    redraw = [False]  # set after a Ctrl-Z and fg: the screen was left, draw it all again
    original = None
    if key_fd is not None:
        import termios

        original = termios.tcgetattr(key_fd)

    def on_tstp(signum: int, frame: object) -> None:
        # Ctrl-Z: give the shell its normal screen and terminal back, stop, and on
        # `fg` come back as we were (the frame drawn anew).
        import termios

        ours = termios.tcgetattr(key_fd) if key_fd is not None else None
        with contextlib.suppress(OSError, ValueError):
            out.write("\x1b[0m" + LEAVE)
            out.flush()
        if key_fd is not None and original is not None:
            termios.tcsetattr(key_fd, termios.TCSADRAIN, original)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # stopped here until SIGCONT
        signal.signal(signal.SIGTSTP, on_tstp)
        if key_fd is not None and ours is not None:
            termios.tcsetattr(key_fd, termios.TCSADRAIN, ours)
        with contextlib.suppress(OSError, ValueError):
            out.write(ENTER + "\x1b[2J")
            out.flush()
        redraw[0] = True
        with contextlib.suppress(OSError):
            wake_w.send(b"w")

    old_handlers = {}
    if tty_out and threading.current_thread() is threading.main_thread():
        if hasattr(signal, "SIGWINCH"):
            old_handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, on_winch)
        if hasattr(signal, "SIGTSTP"):
            old_handlers[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, on_tstp)
        old_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, _on_sigterm)
    feed = _Feed(target, interval, post)
    link, ended = "connecting", ""
    on_screen: object = None  # the frame and terminal size drawn last: draw only what changed
    screen = Screen(out, colour=not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb")
    lines = _PlainOut(out)
    try:
        with terminal(out, key_fd) if tty_out else contextlib.nullcontext():
            feed.start()
            while True:
                if tty_out:
                    if redraw[0]:
                        redraw[0], on_screen = False, None
                    size = shutil.get_terminal_size()
                    frame = render(status, width=size.columns - 1, height=size.lines, link=link)
                    if (frame, size) != on_screen:
                        screen.draw(frame, size.lines)
                        on_screen = (frame, size)
                else:
                    lines.show(status, link)
                if ended:
                    break
                ready, _, _ = select.select([wake_r] + ([key_fd] if key_fd is not None else []), [], [])
                if key_fd is not None and key_fd in ready:
                    keys = os.read(key_fd, 64)
                    if not keys:
                        key_fd = None  # stdin closed: Ctrl-C still quits
                    elif any(k in keys for k in (b"q", b"Q", b"\x03")):
                        return 0
                if wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        wake_r.recv(4096)
                while not inbox.empty():
                    msg = inbox.get()
                    if msg.kind == "status" and msg.status is not None:
                        status = msg.status
                    elif msg.kind == "link":
                        link = msg.text
                    elif msg.kind == "end":
                        ended = "the pool closed" if status.get("state") == "closed" else msg.text
                    elif msg.kind == "fatal":
                        raise TopError(msg.text)
        # The alternate screen went with the last frame: print it where it stays.
        if tty_out:
            out.write(plain(render(status, width=shutil.get_terminal_size().columns - 1)))
        out.write(f"taskpool top: {ended}\n")
        out.flush()
        return 0
    finally:
        feed.stop()
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)
        wake_r.close()
        wake_w.close()
