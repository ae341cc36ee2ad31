"""The real worker process, driven over its channel the way the pool drives it.

Every test spawns ``taskpool._child`` with a socketpair, waits for ``Hello`` and talks
frames. Waits are on messages and process exits, bounded by ``WAIT`` only as a failure
guard; no test sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import operator
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from taskpool._child import child_command, child_env, child_publish, spawn_child
from taskpool._errors import RemoteTraceback, SerializationError, TaskCancelled, TaskFailed
from taskpool._wire import (
    ERR_CANCELLED,
    ERR_LOAD,
    ERR_UNSENDABLE,
    FMT_PICKLE,
    Call,
    Cancel,
    Error,
    FnRef,
    FrameProtocol,
    FunctionTable,
    Hello,
    Publish,
    Result,
    Shutdown,
    Started,
    ToParent,
    dump_args,
    load_payload,
    load_result,
    parent_parser,
    rebuild_exception,
)

WAIT = 30.0  # seconds: reached only when something is broken


# --- functions the worker imports by reference (tests.test_child.NAME) ------------------------


class CustomError(Exception):
    pass


def triple(x: int) -> int:
    return 3 * x


_running = 0


async def exclusive(i: int) -> int:
    """Fails if two calls ever overlap in the worker."""
    global _running
    _running += 1
    try:
        for _ in range(3):
            await asyncio.sleep(0)
            assert _running == 1, "two calls ran at once"
        return i
    finally:
        _running -= 1


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def publish_then_wait(path: str) -> str:
    """Publish, then block (the loop too) until the test releases the gate at ``path``."""
    child_publish("ready", {"blocked": True})
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.recv(1)
    return "released"


async def wait_for_byte(path: str) -> str:
    """Wait (async) until the test releases the gate at ``path``."""
    reader, writer = await asyncio.open_unix_connection(path)
    await reader.readexactly(1)
    writer.close()
    return "released"


class Gate:
    """A Unix socket a task connects to and waits on until the test releases it."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "gate.sock")
        self._conn: asyncio.Future[asyncio.StreamWriter] | None = None
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Gate:
        self._conn = asyncio.get_running_loop().create_future()

        async def on_connect(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert self._conn is not None
            self._conn.set_result(writer)

        self._server = await asyncio.start_unix_server(on_connect, self.path)
        return self

    async def release(self) -> None:
        assert self._conn is not None
        writer = await asyncio.wait_for(self._conn, WAIT)
        writer.write(b"x")
        await writer.drain()

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        if self._conn is not None and self._conn.done():
            self._conn.result().close()
        self._server.close()
        await self._server.wait_closed()


# --- the channel -----------------------------------------------------------------------------


class Parent(FrameProtocol[ToParent]):
    def __init__(self) -> None:
        super().__init__(parent_parser())
        self.inbox: asyncio.Queue[ToParent] = asyncio.Queue()

    def message_received(self, msg: ToParent) -> None:
        self.inbox.put_nowait(msg)


class Channel:
    """The test's side of one worker."""

    def __init__(self, proc: asyncio.subprocess.Process, proto: Parent, hello: Hello) -> None:
        self.proc = proc
        self.proto = proto
        self.hello = hello
        self.table = FunctionTable()
        self.next_id = 0
        self.log: list[ToParent] = []  # every message, in arrival order

    def call(self, fn: Callable[..., Any], *args: Any) -> int:
        self.next_id += 1
        fn_id, define, drop = self.table.prepare(fn)
        self.proto.send(Call(self.next_id, fn_id, *dump_args(args), define, drop))
        return self.next_id

    def send(self, msg: Any) -> None:
        self.proto.send(msg)

    async def next(self) -> ToParent:
        msg = await asyncio.wait_for(self.proto.inbox.get(), WAIT)
        self.log.append(msg)
        return msg

    async def answer(self, cid: int) -> Result | Error:
        """The final answer to ``cid``; what arrives before it stays in ``log``."""
        while True:
            msg = await self.next()
            if isinstance(msg, (Result, Error)) and msg.id == cid:
                return msg

    async def value(self, cid: int) -> Any:
        msg = await self.answer(cid)
        if isinstance(msg, Error):
            raise rebuild_exception(msg)
        assert isinstance(msg, Result)
        return load_result(msg)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.value(self.call(fn, *args))

    async def close(self) -> int:
        if self.proto.transport is not None:
            self.proto.transport.close()
        return await asyncio.wait_for(self.proc.wait(), WAIT)


async def open_channel(**kwargs: Any) -> Channel:
    proc, proto = await spawn_child(Parent, **kwargs)
    hello = await asyncio.wait_for(proto.inbox.get(), WAIT)
    assert isinstance(hello, Hello)
    return Channel(proc, proto, hello)


@pytest_asyncio.fixture
async def chan() -> AsyncIterator[Channel]:
    ch = await open_channel(stdout=subprocess.DEVNULL, stderr=None)
    try:
        yield ch
    finally:
        code = await ch.close()
        assert code == 0


# --- calls -----------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.uvloop
async def test_handshake_and_module_level_function(chan: Channel) -> None:
    assert chan.hello.pid == chan.proc.pid
    assert chan.hello.python == ".".join(map(str, sys.version_info[:3]))
    cid = chan.call(operator.add, 1, 2)
    started = await chan.next()
    assert started == Started(cid)
    assert await chan.value(cid) == 3
    assert await chan.run(operator.add, "a", "b") == "ab"  # second call: only the id travels
    assert await chan.run(triple, 14) == 42  # this module, imported in the worker


@pytest.mark.asyncio
@pytest.mark.uvloop
async def test_lambda_closure_and_async_function(chan: Channel) -> None:
    k = 5
    assert await chan.run(lambda x: x * 2, 21) == 42
    assert await chan.run(lambda: k + 1) == 6

    async def where() -> str:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__

    loop_module = await chan.run(where)
    assert loop_module.startswith("uvloop") == chan.hello.uvloop


@pytest.mark.asyncio
async def test_worker_loop_can_be_forced_to_asyncio() -> None:
    ch = await open_channel(loop="asyncio", stdout=subprocess.DEVNULL, stderr=None)
    try:
        assert ch.hello.uvloop is False
        assert await ch.run(operator.mul, 6, 7) == 42
    finally:
        assert await ch.close() == 0


@pytest.mark.asyncio
async def test_sync_calls_run_on_the_main_thread_and_may_use_asyncio_run(chan: Channel) -> None:
    assert await chan.run(on_main_thread) is True
    assert await chan.run(lambda: asyncio.run(asyncio.sleep(0, result=7))) == 7
    assert await chan.run(operator.add, 1, 1) == 2  # the worker's own loop is fine after it


@pytest.mark.asyncio
@pytest.mark.uvloop
async def test_pipelined_calls_run_one_at_a_time_in_order(chan: Channel) -> None:
    ids = []
    for i in range(40):
        ids.append(chan.call(exclusive, i) if i % 2 else chan.call(operator.pos, i))
    values = [await chan.value(cid) for cid in ids]
    assert values == list(range(40))
    # Strictly: Started(a), Result(a), Started(b), Result(b), ...
    trace = [(type(m).__name__, m.id) for m in chan.log if isinstance(m, (Started, Result))]
    assert trace == [(kind, cid) for cid in ids for kind in ("Started", "Result")]


@pytest.mark.asyncio
async def test_large_buffers_round_trip(chan: Channel) -> None:
    blob = os.urandom(4 << 20)
    echo = await chan.run(lambda x: x, blob)
    assert type(echo) is bytes
    assert echo == blob
    ba = bytearray(blob)
    back = await chan.run(lambda x: x, ba)
    assert type(back) is bytearray
    assert back == ba
    assert await chan.run(len, blob) == len(blob)


# --- failures --------------------------------------------------------------------------------


def _raise_value_error(x: int) -> None:
    raise ValueError(f"bad {x}")


@pytest.mark.asyncio
@pytest.mark.uvloop
async def test_exception_is_rebuilt_with_the_worker_traceback(chan: Channel) -> None:
    with pytest.raises(ValueError, match="bad 42") as info:
        await chan.run(_raise_value_error, 42)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "_raise_value_error" in cause.traceback
    assert 'raise ValueError(f"bad {x}")' in cause.traceback
    assert "taskpool/_child.py" not in cause.traceback  # the worker's own frames are not shown

    def raises_custom() -> None:
        raise CustomError("mine")

    with pytest.raises(CustomError, match="mine"):
        await chan.run(raises_custom)

    async def raises_async() -> None:
        await asyncio.sleep(0)
        raise KeyError("async")

    with pytest.raises(KeyError):
        await chan.run(raises_async)
    assert await chan.run(operator.add, 2, 2) == 4  # the worker carries on


@pytest.mark.asyncio
async def test_unpicklable_exception_becomes_task_failed(chan: Channel) -> None:
    def raises_with_lock() -> None:
        raise CustomError(threading.Lock())

    with pytest.raises(TaskFailed) as info:
        await chan.run(raises_with_lock)
    assert info.value.type_name == f"{__name__}.CustomError"
    assert "raises_with_lock" in info.value.traceback


@pytest.mark.asyncio
async def test_system_exit_in_a_task_does_not_stop_the_worker(chan: Channel) -> None:
    with pytest.raises(TaskFailed, match="SystemExit"):
        await chan.run(sys.exit, 3)
    assert await chan.run(operator.add, 1, 2) == 3


@pytest.mark.asyncio
async def test_unsendable_result_is_a_serialization_error(chan: Channel) -> None:
    cid = chan.call(threading.Lock)
    msg = await chan.answer(cid)
    assert isinstance(msg, Error)
    assert msg.kind == ERR_UNSENDABLE
    exc = rebuild_exception(msg)
    assert isinstance(exc, SerializationError)
    assert "result" in str(exc)
    assert "lock" in str(exc)


@pytest.mark.asyncio
async def test_function_that_cannot_load_fails_its_calls_only(chan: Channel) -> None:
    fn_id = 10_000_000  # outside the table's range
    define = FnRef("no_such_module_for_taskpool_tests", "f")
    chan.send(Call(1001, fn_id, *dump_args(()), define=define))
    chan.send(Call(1002, fn_id, *dump_args(())))  # same id, no definition: same failure
    for cid in (1001, 1002):
        msg = await chan.answer(cid)
        assert isinstance(msg, Error)
        assert msg.kind == ERR_LOAD
        with pytest.raises(ModuleNotFoundError, match="no_such_module_for_taskpool_tests"):
            raise rebuild_exception(msg)
    chan.send(Call(1003, 12_345_678, *dump_args(())))  # never defined
    msg = await chan.answer(1003)
    assert isinstance(msg, Error)
    assert "unknown" in msg.message
    assert await chan.run(operator.add, 1, 2) == 3


@pytest.mark.asyncio
async def test_arguments_that_cannot_load_fail_that_call_only(chan: Channel, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = types.ModuleType("parent_only_module_for_taskpool_tests")
    exec("class Thing:\n    pass\n", mod.__dict__)  # noqa: S102
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    fmt, data, bufs = dump_args((mod.Thing(),))
    assert fmt == FMT_PICKLE
    with pytest.raises(ModuleNotFoundError):
        await chan.run(type, mod.Thing())
    assert await chan.run(operator.add, 1, 2) == 3


# --- cancellation and shutdown -----------------------------------------------------------------


async def _forever() -> None:
    await asyncio.Event().wait()


@pytest.mark.asyncio
@pytest.mark.uvloop
async def test_cancel_running_async_call(chan: Channel) -> None:
    cid = chan.call(_forever)
    assert await chan.next() == Started(cid)
    chan.send(Cancel(cid))
    msg = await chan.answer(cid)
    assert isinstance(msg, Error)
    assert msg.kind == ERR_CANCELLED
    assert isinstance(rebuild_exception(msg), TaskCancelled)
    assert await chan.run(operator.add, 1, 2) == 3


@pytest.mark.asyncio
async def test_cancel_queued_call_answers_at_once(chan: Channel) -> None:
    running = chan.call(_forever)
    queued = chan.call(operator.add, 1, 2)
    assert await chan.next() == Started(running)
    chan.send(Cancel(queued))
    msg = await chan.answer(queued)
    assert isinstance(msg, Error)
    assert msg.kind == ERR_CANCELLED
    chan.send(Cancel(running))
    assert (await chan.answer(running)).kind == ERR_CANCELLED  # type: ignore[union-attr]
    assert Started(queued) not in chan.log
    chan.send(Cancel(999))  # unknown ids are ignored
    assert await chan.run(operator.add, 2, 3) == 5


@pytest.mark.asyncio
async def test_shutdown_finishes_the_running_call_then_exits(tmp_path: Path) -> None:
    ch = await open_channel(stdout=subprocess.DEVNULL, stderr=None)
    async with Gate(tmp_path) as gate:
        running = ch.call(wait_for_byte, gate.path)
        queued = ch.call(operator.add, 1, 2)
        assert await ch.next() == Started(running)
        ch.send(Shutdown())
        msg = await ch.answer(queued)  # dropped at once: Shutdown was seen
        assert isinstance(msg, Error)
        assert msg.kind == ERR_CANCELLED
        await gate.release()
        assert await ch.value(running) == "released"
    assert await asyncio.wait_for(ch.proc.wait(), WAIT) == 0


@pytest.mark.asyncio
async def test_closing_the_channel_makes_the_child_exit() -> None:
    ch = await open_channel(stdout=subprocess.DEVNULL, stderr=None)
    cid = ch.call(_forever)
    assert await ch.next() == Started(cid)
    assert await ch.close() == 0


@pytest.mark.asyncio
async def test_sigint_is_left_to_the_parent(chan: Channel) -> None:
    os.kill(chan.proc.pid, signal.SIGINT)
    assert await chan.run(operator.add, 1, 2) == 3


# --- publish, output, environment ----------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.uvloop
async def test_publish_is_tagged_with_the_call(chan: Channel) -> None:
    def sync_pub() -> str:
        child_publish("progress", {"step": 1})
        return "ok"

    async def async_pub() -> str:
        await asyncio.sleep(0)
        child_publish("progress", (2, b"x"))
        return "ok"

    sync_id = chan.call(sync_pub)
    async_id = chan.call(async_pub)
    assert await chan.value(sync_id) == "ok"
    assert await chan.value(async_id) == "ok"
    pubs = [m for m in chan.log if isinstance(m, Publish)]
    assert [(p.task_id, p.topic, load_payload(p.fmt, p.data, p.bufs)) for p in pubs] == [
        (sync_id, "progress", {"step": 1}),
        (async_id, "progress", (2, b"x")),
    ]
    order = [(type(m).__name__, m.id if not isinstance(m, Publish) else m.task_id) for m in chan.log]
    assert order.index(("Publish", sync_id)) < order.index(("Result", sync_id))

    def bad_pub() -> None:
        child_publish("x", threading.Lock())

    with pytest.raises(SerializationError, match="published on 'x'"):
        await chan.run(bad_pub)


@pytest.mark.parametrize("child_loop", ["asyncio", "uvloop"])
@pytest.mark.asyncio
async def test_started_and_publish_arrive_while_a_sync_call_blocks(child_loop: str, tmp_path: Path) -> None:
    ch = await open_channel(loop=child_loop, stdout=subprocess.DEVNULL, stderr=None)
    try:
        async with Gate(tmp_path) as gate:
            cid = ch.call(publish_then_wait, gate.path)
            assert await ch.next() == Started(cid)  # before user code blocked the loop
            msg = await ch.next()
            assert isinstance(msg, Publish)
            assert (msg.task_id, msg.topic) == (cid, "ready")  # while the call still blocks
            await gate.release()
            assert await ch.value(cid) == "released"
    finally:
        assert await ch.close() == 0


@pytest.mark.asyncio
async def test_output_is_line_buffered_through_pipes() -> None:
    ch = await open_channel()
    try:
        assert ch.proc.stdout is not None
        assert ch.proc.stderr is not None
        await ch.run(print, "hello from the worker")
        line = await asyncio.wait_for(ch.proc.stdout.readline(), WAIT)  # the worker is still alive
        assert line == b"hello from the worker\n"
        await ch.run(lambda: print("to stderr", file=sys.stderr))
        assert await asyncio.wait_for(ch.proc.stderr.readline(), WAIT) == b"to stderr\n"
    finally:
        assert await ch.close() == 0


@pytest.mark.asyncio
async def test_parent_sys_path_cwd_and_environment_reach_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "taskpool_extra_mod.py").write_text("def hello():\n    return 'extra'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TASKPOOL_TEST_MARKER", "42")
    monkeypatch.chdir(tmp_path)
    import taskpool_extra_mod  # type: ignore[import-not-found]  # noqa: PLC0415 - made by this test

    ch = await open_channel(stdout=subprocess.DEVNULL, stderr=None)
    try:
        assert await ch.run(taskpool_extra_mod.hello) == "extra"  # by reference
        assert await ch.run(os.getcwd) == str(tmp_path)
        assert await ch.run(os.environ.get, "TASKPOOL_TEST_MARKER") == "42"
        assert await ch.run(os.environ.get, "TASKPOOL_SYS_PATH") is None  # consumed by the bootstrap
    finally:
        assert await ch.close() == 0
        sys.modules.pop("taskpool_extra_mod", None)


# --- lifetime -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_child_exits_at_once_if_its_parent_is_already_gone() -> None:
    a, b = socket.socketpair()
    with a, b:
        argv = child_command(b.fileno(), parent_pid=1)  # "our parent is init": not true
        proc = await asyncio.create_subprocess_exec(*argv, pass_fds=(b.fileno(),), env=child_env())
        assert await asyncio.wait_for(proc.wait(), WAIT) == 1


_INTERMEDIATE = textwrap.dedent(
    """
    import socket, subprocess, sys
    from taskpool._child import child_command, child_env
    from taskpool._wire import Call, FnRef, Started, dump_args, encode_frame, parent_parser

    a, b = socket.socketpair()
    child = subprocess.Popen(child_command(b.fileno()), pass_fds=(b.fileno(),), env=child_env())
    b.close()
    for chunk in encode_frame(Call(1, 1, *dump_args((3600,)), define=FnRef("time", "sleep"))):
        a.sendall(chunk)
    parser = parent_parser()
    while not any(isinstance(m, Started) for m in parser.feed(a.recv(65536))):
        pass
    print(child.pid, flush=True)  # the child is now blocked in time.sleep, deaf to EOF
    sys.stdin.read()
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.asyncio
async def test_busy_child_dies_with_its_parent() -> None:
    middle = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _INTERMEDIATE,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert middle.stdout is not None
        child_pid = int(await asyncio.wait_for(middle.stdout.readline(), WAIT))
        pidfd = os.pidfd_open(child_pid)
    finally:
        middle.kill()
        await middle.wait()
    try:
        # The pidfd becomes readable when the grandchild exits (reaped or not).
        readable, _, _ = await asyncio.to_thread(select.select, [pidfd], [], [], WAIT)
        assert readable == [pidfd], "the worker outlived its parent"
    finally:
        os.close(pidfd)
