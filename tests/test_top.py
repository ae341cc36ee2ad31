"""``taskpool top``: the terminal view of a pool's status app.

The view runs as a real ``python -m taskpool top`` child process, under a pseudo terminal or
with its output piped, against a real pool's ``serve_status()`` in the test's loop. The child's
output is read by a loop reader (never a blocking read), and every wait is for text to appear,
bounded by a deadline. Network faults a real pool cannot make (a dropped connection, a server
without ``/events``) are injected by a TCP relay between the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import signal
import socket
import struct
import sys
import termios
from collections.abc import AsyncIterator
from typing import Any

import pytest

from taskpool import FunctionPool
from taskpool._top import ENTER, LEAVE, SSEParser, Target, run_top
from taskpool._topview import render

from ._support import WAIT

pytest.importorskip("uvicorn")  # serve_status needs the taskpool[web] extra

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MOVE = re.compile(r"\x1b\[\d+;\d+H")  # each screen line starts with one: a line break in the text
CHILD_ENV = {"PYTHONUNBUFFERED": "1", "TERM": "xterm"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TASKPOOL_TOKEN")}
    env.update(CHILD_ENV)
    env.update(extra)
    return env


def _top(*args: str) -> list[str]:
    return [sys.executable, "-m", "taskpool", "top", *args]


class Output:
    """What a child wrote, as it arrives; :meth:`wait_for` waits for a pattern in it."""

    def __init__(self) -> None:
        self.raw = bytearray()
        self.done = False
        self._more = asyncio.Event()

    def feed(self, data: bytes) -> None:
        if data:
            self.raw += data
        else:
            self.done = True
        self._more.set()

    def text(self, since: int = 0) -> str:
        return ANSI.sub("", MOVE.sub("\n", bytes(self.raw[since:]).decode("utf-8", "replace")))

    def mark(self) -> int:
        return len(self.raw)

    async def wait_for(self, pattern: str, since: int = 0) -> None:
        rx = re.compile(pattern, re.M)
        try:
            async with asyncio.timeout(WAIT):
                while not rx.search(self.text(since)):
                    if self.done:
                        break
                    self._more.clear()
                    await self._more.wait()
                else:
                    return
        except TimeoutError:
            pass
        raise AssertionError(f"{pattern!r} never appeared; the output ends with:\n{self.text(since)[-2000:]}")


class Term:
    """A child on a pseudo terminal of ``rows`` x ``cols``."""

    def __init__(self, proc: asyncio.subprocess.Process, out: Output, master: int, slave: int) -> None:
        self.proc, self.out, self.master, self.slave = proc, out, master, slave
        self.before: list[Any] = []  # the terminal's settings before the child started

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc.send_signal(signal.SIGWINCH)  # the child has no controlling terminal to get it from

    async def exit_code(self) -> int:
        async with asyncio.timeout(WAIT):
            rc = await self.proc.wait()
        with contextlib.suppress(BlockingIOError, OSError):  # the last bytes, still in the pty
            while data := os.read(self.master, 65536):
                self.out.feed(data)
        return rc


@contextlib.asynccontextmanager
async def on_pty(*args: str, rows: int = 30, cols: int = 120) -> AsyncIterator[Term]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    os.set_blocking(master, False)
    before = termios.tcgetattr(slave)
    out = Output()
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            out.feed(os.read(master, 65536))
        except BlockingIOError:
            pass
        except OSError:
            loop.remove_reader(master)
            out.feed(b"")

    # A process group of its own, whose parent (this test) is in another group of the same
    # session: never an orphaned group, so Ctrl-Z's SIGTSTP stops it however the suite runs.
    proc = await asyncio.create_subprocess_exec(
        *_top(*args), stdin=slave, stdout=slave, stderr=slave, env=_env(), process_group=0
    )
    loop.add_reader(master, readable)
    term = Term(proc, out, master, slave)
    term.before = before
    try:
        yield term
    finally:
        loop.remove_reader(master)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)
        os.close(slave)


@contextlib.asynccontextmanager
async def piped(*args: str, **env: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, Output]]:
    """The child with its stdout piped (not a terminal); stderr is merged into it."""
    proc = await asyncio.create_subprocess_exec(
        *_top(*args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=_env(**env),
    )
    out = Output()

    async def pump() -> None:
        assert proc.stdout is not None
        while data := await proc.stdout.read(65536):
            out.feed(data)
        out.feed(b"")

    reader = asyncio.get_running_loop().create_task(pump())
    try:
        yield proc, out
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await reader


async def run_piped(*args: str, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *_top(*args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(**env),
    )
    async with asyncio.timeout(WAIT):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def served(name: str, token: str | None = None) -> AsyncIterator[tuple[FunctionPool, Any]]:
    async with FunctionPool(2, worker="thread", name=name) as pool:
        server = await pool.serve_status(token=token, announce=False)
        yield pool, server


class Relay:
    """A TCP relay to the status server: drop every connection, or refuse ``/events``.

    A drop keeps the listener: closing an asyncio server on Python 3.11 while a client's
    connection is accepted but not yet wrapped fails that wrapping on an assertion
    (``Server._attach``, CPython gh-109564) and leaves the accepted socket to the garbage
    collector, an unclosed-socket warning at some later moment. So while dropped, the relay
    accepts and closes at once (the client sees a dropped connection, as after a restart);
    only :meth:`close`, once no client is left to connect, closes the listener.
    """

    def __init__(self, url: str) -> None:
        self.upstream = Target.parse(url)
        self.no_events = False
        self.open = False
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/"

    async def start(self) -> None:
        if self.server is None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.open = True

    async def cut(self) -> None:
        """Drop every connection; until :meth:`start`, new ones are closed once accepted."""
        self.open = False  # a connection accepted from now on is closed by its handler
        for writer in list(self.writers):
            writer.close()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    async def close(self) -> None:
        """Drop every connection and stop listening (call once the client has exited)."""
        await self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.writers.add(writer)
        up_w: asyncio.StreamWriter | None = None
        try:
            if not self.open:
                return
            head = await reader.readuntil(b"\r\n\r\n")
            if self.no_events and head.startswith(b"GET /events"):
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n")
                writer.write(b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
                await writer.drain()
                return
            up_r, up_w = await asyncio.open_connection(self.upstream.host, self.upstream.port)
            self.writers.add(up_w)
            up_w.write(head)
            await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_w):
                if w is not None:
                    self.writers.discard(w)
                    w.close()
                    with contextlib.suppress(OSError):
                        await w.wait_closed()
            self.handlers.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


# --- on a terminal ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_on_a_terminal_it_shows_the_pool_live_and_q_restores_the_terminal() -> None:
    async with served("toppty") as (pool, server), on_pty(server.url, f"--token={server.token}") as term:
        await term.out.wait_for(r"toppty +thread x2 +running")
        await term.out.wait_for(r"total 0\b")
        assert bytes(term.out.raw).startswith(ENTER.encode())
        cbreak = termios.tcgetattr(term.slave)
        assert not cbreak[3] & termios.ECHO and not cbreak[3] & termios.ICANON  # keys read one by one
        mark = term.out.mark()
        await asyncio.gather(*(pool.add_task(abs, -i, meta=f"abs({i})") for i in range(3)))
        await term.out.wait_for(r"completed 3\b.*total 3\b", since=mark)
        os.write(term.master, b"q")
        assert await term.exit_code() == 0
        assert bytes(term.out.raw).endswith(LEAVE.encode())  # cursor shown, alternate screen left
        assert termios.tcgetattr(term.slave) == term.before


@pytest.mark.asyncio
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 0), (signal.SIGTERM, 143)])
async def test_on_a_terminal_it_fits_a_resize_and_a_signal_quits_cleanly(sig: int, code: int) -> None:
    async with served("topsize") as (_, server), on_pty(server.url + "?token=" + server.token, rows=40) as term:
        await term.out.wait_for(r"topsize")
        await term.out.wait_for(r"\b1 +idle")  # both workers' rows fit in 40 lines
        assert "more workers" not in term.out.text()
        mark = term.out.mark()
        term.resize(rows=11, cols=60)  # the sections wrap to 8 lines: one row left for the workers
        await term.out.wait_for(r"\.\.\. 2 more workers", since=mark)
        head = [line for line in term.out.text(mark).splitlines() if "topsize" in line][-1]  # the latest frame's
        assert len(head) == 59  # the header spans the new width (less the last column)
        term.proc.send_signal(sig)
        assert await term.exit_code() == code
        assert bytes(term.out.raw).endswith(LEAVE.encode())
        assert termios.tcgetattr(term.slave) == term.before
        assert "Traceback" not in term.out.text()


@pytest.mark.asyncio
async def test_when_the_pool_closes_it_leaves_the_screen_with_a_last_frame() -> None:
    async with served("topend") as (pool, server), on_pty(server.url, f"--token={server.token}") as term:
        await term.out.wait_for(r"topend .* live ")  # following the stream, which the close ends
        await pool.aclose()  # the pool (and its server) close while top watches
        assert await term.exit_code() == 0
        raw = bytes(term.out.raw)
        tail = ANSI.sub("", raw[raw.rindex(LEAVE.encode()) :].decode())
        assert "topend" in tail  # the last frame, printed on the normal screen
        assert "taskpool top: the status stream ended" in tail


# --- not a terminal ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_once_prints_a_plain_snapshot() -> None:
    async with served("toponce") as (pool, server):
        await pool.add_task(abs, -1, meta="one")
        rc, out, err = await run_piped(server.url, f"--token={server.token}", "--once")
    assert (rc, err) == (0, "")
    assert "\x1b" not in out
    assert re.search(r"toponce +thread x2 +running", out)
    assert re.search(r"completed 1\b", out)
    assert re.search(r"^ +0 +(idle|busy) ", out, re.M)


@pytest.mark.asyncio
async def test_the_token_comes_from_the_url_or_the_environment() -> None:
    async with served("toptoken", token="s3cret") as (_, server):
        assert (await run_piped(server.url + "?token=s3cret", "--once"))[0] == 0
        assert (await run_piped(server.url, "--once", TASKPOOL_TOKEN="s3cret"))[0] == 0
        # --token wins over the environment
        rc, _, err = await run_piped(server.url, "--once", "--token", "wrong", TASKPOOL_TOKEN="s3cret")
    assert rc == 1
    assert "token refused or missing" in err


@pytest.mark.asyncio
@pytest.mark.parametrize("token", [None, "wrong"])
async def test_a_bad_or_missing_token_exits_1_with_one_line(token: str | None) -> None:
    async with served("topauth", token="right") as (_, server):
        rc, out, err = await run_piped(server.url, *(["--token", token] if token else []))
    assert (rc, out) == (1, "")
    assert err.startswith("taskpool top: token refused or missing")
    assert err.count("\n") == 1


@pytest.mark.asyncio
async def test_an_unreachable_url_exits_1_with_one_line() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, out, err = await run_piped(f"http://127.0.0.1:{port}/")
    assert (rc, out) == (1, "")
    assert err == f"taskpool top: cannot connect to http://127.0.0.1:{port}/: Connection refused\n"


@pytest.mark.asyncio
async def test_piped_it_prints_blocks_on_change_and_reconnects_after_a_drop() -> None:
    async with served("topdrop") as (pool, server):
        relay = Relay(server.url)
        await relay.start()
        try:
            async with piped(relay.url, f"--token={server.token}") as (proc, out):
                await out.wait_for(r"topdrop")
                mark = out.mark()
                await relay.cut()
                await out.wait_for(r"^-- disconnected, retrying in [0-9.]+s", since=mark)
                await relay.start()
                await out.wait_for(r"^-- live again$", since=mark)
                mark = out.mark()
                await asyncio.gather(*(pool.add_task(abs, -i) for i in range(2)))
                await out.wait_for(r"completed 2\b", since=mark)
                proc.send_signal(signal.SIGINT)
                async with asyncio.timeout(WAIT):
                    assert await proc.wait() == 0
            assert "\x1b" not in out.text() and "\x1b" not in bytes(out.raw).decode()
        finally:
            await relay.close()


@pytest.mark.asyncio
async def test_without_sse_it_polls_status() -> None:
    async with served("toppoll") as (pool, server):
        relay = Relay(server.url)
        relay.no_events = True
        await relay.start()
        try:
            async with piped(relay.url, f"--token={server.token}", "--interval", "0.1") as (proc, out):
                await out.wait_for(r"^-- polling every 0.1s \(no live stream: /events answered 404")
                mark = out.mark()
                await pool.add_task(abs, -1)
                await out.wait_for(r"completed 1\b", since=mark)
                proc.send_signal(signal.SIGINT)
                async with asyncio.timeout(WAIT):
                    assert await proc.wait() == 0
        finally:
            await relay.close()


# --- the pieces -------------------------------------------------------------------------


def test_sse_parser_reads_fields_comments_and_multiline_data() -> None:
    parser = SSEParser()
    lines = [": ping", "id: 7", "event: status", 'data: {"a":', "data:1}", "", "retry: 2000", "", "event: end", ""]
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert [(e.event, e.data, e.id) for e in events] == [("status", '{"a":\n1}', "7"), ("end", "", "7")]
    assert parser.feed("id: a\0b") is None and parser.last_id == "7"  # an id with NUL is ignored
    assert parser.feed("data") is None
    assert parser.feed("") == type(events[0])("message", "", "7")


@pytest.mark.parametrize(
    ("url", "token", "env", "expected"),
    [
        ("http://h:1/", None, None, ("http", "h", 1, "/", None)),
        ("h:1", None, "E", ("http", "h", 1, "/", "E")),
        ("https://h/p?token=U", None, "E", ("https", "h", None, "/p/", "U")),
        ("http://h:1/p/status?token=U", "T", "E", ("http", "h", 1, "/p/", "T")),
        ("http://[::1]:8/events", "", "E", ("http", "::1", 8, "/", None)),
    ],
)
def test_target_parse(url: str, token: str | None, env: str | None, expected: tuple[Any, ...]) -> None:
    t = Target.parse(url, token, env)
    assert (t.scheme, t.host, t.port, t.base, t.token) == expected
    assert "token" not in t.url


@pytest.mark.parametrize("url", ["ftp://h/", "http://", "http://h:99999/", "http://h:x/"])
def test_target_parse_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match="bad URL"):
        Target.parse(url)


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_top("ftp://h/") == 2
    assert run_top("http://127.0.0.1:1/", interval=float("nan")) == 2
    assert run_top("http://127.0.0.1:1/", interval=0) == 2
    err = capsys.readouterr().err
    assert err.count("taskpool top: ") == 3 and "--interval" in err


def _status(workers: int, failures: int) -> dict[str, Any]:
    return {
        "name": "p",
        "kind": "process",
        "pool_size": workers,
        "state": "running",
        "time": 0.0,
        "counts": {"queued": 1, "active": 2, "completed": 3, "total": 6},
        "workers": [{"id": i, "state": "busy", "pid": 100 + i, "current_task": i} for i in range(workers)],
        "failures": [{"id": i, "meta": f"m{i}", "error": "ValueError: x"} for i in range(failures)],
    }


@pytest.mark.parametrize(("rows", "cols"), [(24, 80), (12, 40), (3, 20), (60, 200)])
def test_a_frame_fits_the_terminal(rows: int, cols: int) -> None:
    lines = render(_status(40, 20), width=cols, height=rows, link="disconnected, retrying in 1.0s (x)")
    assert len(lines) <= rows
    assert all(len(text) <= cols for _, text in lines)
    text = "\n".join(t for _, t in lines)
    if rows == 24:
        assert "more workers" in text
        assert "Latest failures (20)" in text and "ValueError: x" in text
        assert "disconnected, retrying" in text


def test_everything_is_shown_without_limits_and_server_text_is_cleaned() -> None:
    status = _status(40, 20)
    status["failures"][0]["meta"] = "evil\x1b[2J\nmore"
    lines = render(status)
    texts = [t for _, t in lines]
    assert sum(1 for t in texts if re.match(r" +\d+  busy", t)) == 40
    assert not any(c in t for t in texts for c in "\x1b\n\r")
    assert any("evil [2J more" in t for t in texts)


def test_odd_or_missing_fields_do_not_break_the_frame() -> None:
    for status in ({"counts": {}}, {"counts": {}, "workers": "junk", "rates": [], "run_seconds": {"p50": "x"}}):
        assert render(status, width=80, height=24)[0][0] == "head"


def test_odd_or_hostile_fields_never_break_the_frame() -> None:
    from taskpool._topview import render

    odd = {
        "workers": 5,
        "failures": "x",
        "time": 1e20,
        "run_seconds": {"count": "\x1b[2J\x1b]0;owned\x07"},
        "failures_": [{"finished_at": 1e300}],
    }
    lines = render(odd, width=80, height=24)
    assert lines and all("\x1b" not in text and "\x07" not in text for _, text in lines)
    lines = render({"failures": [{"id": 1, "finished_at": 1e300, "error": "E"}]}, width=80, height=24)
    assert any("#1" in text for _, text in lines)


@pytest.mark.asyncio
async def test_ctrl_z_gives_the_terminal_back_and_fg_draws_again() -> None:
    import psutil

    async with served("topstop") as (pool, server), on_pty(server.url, f"--token={server.token}") as term:
        await term.out.wait_for(r"topstop +thread")
        child = psutil.Process(term.proc.pid)
        mark = term.out.mark()
        term.proc.send_signal(signal.SIGTSTP)  # what Ctrl-Z sends
        async with asyncio.timeout(WAIT):  # it leaves the screen, restores the terminal, then stops
            while child.status() != psutil.STATUS_STOPPED:
                await asyncio.sleep(0.01)
        assert bytes(term.out.raw[mark:]).endswith(LEAVE.encode())
        assert termios.tcgetattr(term.slave) == term.before
        mark = term.out.mark()
        term.proc.send_signal(signal.SIGCONT)  # `fg`
        await term.out.wait_for(r"topstop +thread", since=mark)  # the whole frame again, unchanged status
        assert ENTER.encode() in bytes(term.out.raw[mark:])
        cbreak = termios.tcgetattr(term.slave)
        assert not cbreak[3] & termios.ICANON  # keys read one by one again
        os.write(term.master, b"q")
        assert await term.exit_code() == 0
        assert bytes(term.out.raw).endswith(LEAVE.encode())
