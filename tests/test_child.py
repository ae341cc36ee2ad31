"""The real worker process, driven over its channel the way the pool drives it.

Every test spawns ``taskpool._child`` (its :class:`~taskpool._child.CallServer`) with a
socketpair, waits for ``Hello`` and talks frames; the last section drives it through the
pool's side, :class:`~taskpool._workers._process.ProcessWorker`, against a fake host.
Waits are on messages and process exits, bounded by ``WAIT`` only as a failure guard; no
test sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import operator
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio

import taskpool
from taskpool._channel import FrameProtocol
from taskpool._child import CallServer
from taskpool._context import current
from taskpool._control import ControlBlock
from taskpool._errors import RemoteTraceback, SerializationError, TaskCancelled, TaskFailed
from taskpool._spawn import child_command, child_env, read_lines, spawn_child, split_lines
from taskpool._wire import (
    ERR_CANCELLED,
    ERR_LOAD,
    ERR_RAISED,
    ERR_UNSENDABLE,
    FMT_PICKLE,
    FMT_TUPLE,
    Answers,
    Call,
    Cancel,
    Error,
    FnRef,
    FunctionTable,
    Hello,
    Loading,
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
from taskpool._workers import CancelResult, Capabilities, WorkerExit, WorkerSpec
from taskpool._workers._process import ProcessWorker

WAIT = 30.0  # seconds: reached only when something is broken


# --- functions the worker imports by reference (tests.test_child.NAME) ------------------------


class CustomError(Exception):
    pass


class Color(enum.IntEnum):
    RED = 1


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
    taskpool.publish("ready", {"blocked": True})
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.recv(1)
    return "released"


def wait_at_gate(path: str) -> str:
    """Block (the loop too) until the test releases the gate at ``path``."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.recv(1)
    return "released"


def context_now() -> tuple[int | None, int | None] | None:
    """``(task_id, worker_id)`` of the current task context, None outside a task."""
    ctx = current.get()
    return None if ctx is None else (ctx.task_id, ctx.worker_id)


async def context_around_gate(path: str) -> list[Any]:
    """The task context before and after waiting (async) at the gate at ``path``."""
    before = context_now()
    await wait_for_byte(path)
    return [before, context_now()]


def publish_from_threads() -> str:
    """Publish from a plain thread (outside the task: nothing) and from one that runs in a
    copy of the call's context (tagged with the call)."""
    plain = threading.Thread(target=taskpool.publish, args=("plain", 1))
    plain.start()
    plain.join()
    copied = threading.Thread(target=contextvars.copy_context().run, args=(taskpool.publish, "copied", 2))
    copied.start()
    copied.join()
    return "ok"


async def publish_via_to_thread() -> str:
    await asyncio.to_thread(taskpool.publish, "to_thread", 3)
    return "ok"


class ReduceError(Exception):
    """What :class:`RefusesToPickle` raises: picklable, so the parent rebuilds it."""


class RefusesToPickle:
    def __reduce__(self) -> tuple[Any, ...]:
        raise ReduceError("refused in __reduce__")


class LockedError(Exception):
    """Cannot be pickled at all (it holds a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class RefusesWithUnpicklableError:
    def __reduce__(self) -> tuple[Any, ...]:
        raise LockedError("refused, unpicklably")


def give_refusing(unpicklable_error: bool = False) -> Any:
    return RefusesWithUnpicklableError() if unpicklable_error else RefusesToPickle()


#: Set in the test process only (a worker imports this module afresh): loading an
#: :class:`ExitsWhenLoadedInParent` there raises SystemExit(3).
_EXIT_WHEN_LOADED = False


def _load_exiting(code: int) -> str:
    if _EXIT_WHEN_LOADED:
        raise SystemExit(code)
    return "loaded"


class ExitsWhenLoadedInParent:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_load_exiting, (3,))


def give_exiting() -> ExitsWhenLoadedInParent:
    return ExitsWhenLoadedInParent()


class ExitsWhenUnpickled:
    """An argument whose unpickling (in the worker) ends the process with exit code 7."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os._exit, (7,))


class FailsWhenUnpickled:
    """An argument whose unpickling (in the worker) raises ``LookupError``."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_raise_lookup_error, ("cannot load me",))


def raise_long(n: int) -> None:
    raise ValueError("x" * n)


def _raise_lookup_error(message: str) -> None:
    raise LookupError(message)


def publish_exiting() -> str:
    taskpool.publish("exiting", ExitsWhenLoadedInParent())
    return "published"


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

    async def arrived(self) -> None:
        """The task connected: it is now waiting at the gate."""
        assert self._conn is not None
        await asyncio.wait_for(self._conn, WAIT)

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
        if isinstance(msg, Answers):  # answers written together: one by one here
            for item in msg.items:
                self.inbox.put_nowait(item)
        else:
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

    async def started(self) -> int:
        """The id of the next call to start: a ``Started`` must come next (after the call's
        ``Loading`` when it had to load its function or arguments)."""
        msg = await self.next()
        if isinstance(msg, Loading):
            loading = msg
            msg = await self.next()
            assert isinstance(msg, Started), msg
            assert msg.id == loading.id
            assert loading.at <= msg.at
        assert isinstance(msg, Started), msg
        return msg.id

    def started_ids(self) -> list[int]:
        return [m.id for m in self.log if isinstance(m, Started)]

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
    loading = await chan.next()  # the first call loads the function
    assert isinstance(loading, Loading)
    assert loading.id == cid
    started = await chan.next()
    assert isinstance(started, Started)
    assert started.id == cid
    assert await chan.value(cid) == 3
    again = chan.call(operator.add, "a", "b")  # second call: only the id travels
    assert await chan.value(again) == "ab"
    assert [type(m) for m in chan.log if getattr(m, "id", None) == again] == [Started, Result]  # nothing to load
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


@pytest.mark.asyncio
@pytest.mark.uvloop
async def test_started_and_answers_carry_the_workers_times(chan: Channel) -> None:
    before = time.time()
    cid = chan.call(time.sleep, 0.05)
    assert await chan.started() == cid
    (loading,) = [m for m in chan.log if isinstance(m, Loading)]
    (started,) = [m for m in chan.log if isinstance(m, Started)]
    result = await chan.answer(cid)
    assert isinstance(result, Result)
    failed = await chan.answer(chan.call(_raise_value_error, 1))
    assert isinstance(failed, Error)
    after = time.time()
    assert before <= loading.at <= started.at <= result.at - 0.05 <= after  # the child's clock is ours
    assert result.at <= failed.at <= after


@pytest.mark.asyncio
async def test_loading_is_not_part_of_the_run_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "taskpool_slow_import.py").write_text(
        "import os, time\n"
        "if os.environ.get('TASKPOOL_SLOW_IMPORT'):\n"
        "    time.sleep(0.2)\n"
        "def quick(x):\n"
        "    return x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import taskpool_slow_import  # type: ignore[import-not-found]  # noqa: PLC0415 - made by this test

    monkeypatch.setenv("TASKPOOL_SLOW_IMPORT", "1")  # slow in the worker only
    ch = await open_channel(stdout=subprocess.DEVNULL, stderr=None)
    try:
        cid = ch.call(taskpool_slow_import.quick, 1)
        assert await ch.value(cid) == 1
        loading, started, result = ch.log
        assert isinstance(loading, Loading)
        assert isinstance(started, Started)
        assert isinstance(result, Result)
        assert started.at - loading.at >= 0.2  # the import
        assert result.at - started.at < 0.1  # the call's own run time
        # Unpickling arguments is the call's own work: no Loading for it.
        pickled = ch.call(taskpool_slow_import.quick, {1: 2})
        assert await ch.value(pickled) == {1: 2}
        assert [type(m) for m in ch.log[3:]] == [Started, Result]
        first = ch.call(operator.pos, Color.RED)  # a function not held yet, pickled arguments
        assert await ch.value(first) == 1
        assert [type(m) for m in ch.log[5:]] == [Loading, Started, Result]
    finally:
        assert await ch.close() == 0
        sys.modules.pop("taskpool_slow_import", None)


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
    assert isinstance(exc.__cause__, TypeError)  # what pickling the lock raised, rebuilt


@pytest.mark.asyncio
async def test_unsendable_result_has_the_original_exception_as_cause(chan: Channel) -> None:
    with pytest.raises(SerializationError, match=r"RefusesToPickle\) cannot be sent back") as info:
        await chan.run(give_refusing)
    cause = info.value.__cause__
    assert type(cause) is ReduceError
    assert str(cause) == "refused in __reduce__"
    assert isinstance(cause.__cause__, RemoteTraceback)
    assert 'raise ReduceError("refused in __reduce__")' in cause.__cause__.traceback


@pytest.mark.asyncio
async def test_unsendable_result_whose_error_cannot_be_pickled_has_the_remote_traceback_as_cause(
    chan: Channel,
) -> None:
    with pytest.raises(SerializationError, match="LockedError: refused, unpicklably") as info:
        await chan.run(give_refusing, True)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert 'raise LockedError("refused, unpicklably")' in cause.traceback
    assert await chan.run(operator.add, 1, 2) == 3


@pytest.mark.asyncio
async def test_a_result_whose_loading_raises_system_exit_fails_that_call_only(
    chan: Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "_EXIT_WHEN_LOADED", True)
    with pytest.raises(SerializationError, match="cannot receive the result from the worker: SystemExit: 3"):
        await chan.run(give_exiting)
    assert await chan.run(operator.add, 1, 2) == 3


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


@pytest.mark.asyncio
async def test_what_the_parent_would_refuse_is_refused_in_the_worker() -> None:
    """With the parent's max_message_size, a result over it is a SerializationError (the
    worker keeps serving), and an error too big to send arrives clipped."""
    ch = await open_channel(stdout=subprocess.DEVNULL, max_message=2**16)
    try:
        with pytest.raises(SerializationError, match=r"cannot be sent back") as info:
            await ch.run(bytes, 2**16 + 1)
        assert "over the limit of 65536 bytes" in str(info.value.__cause__)
        assert await ch.run(bytes, 2**16 - 1000) == bytes(2**16 - 1000)  # fits: in-band + header
        with pytest.raises(SerializationError, match="over the limit"):
            await ch.run(taskpool.publish, "big", bytes(2**17))  # raised in the task
        with pytest.raises(TaskFailed) as failed:  # its pickle did not fit: rebuilt by name
            await ch.run(raise_long, 200_000)
        assert failed.value.type_name == "ValueError"
        assert "characters cut" in str(failed.value)
        assert len(str(failed.value)) < 20_000
        assert await ch.run(triple, 2) == 6
    finally:
        assert await ch.close() == 0


# --- cancellation and shutdown -----------------------------------------------------------------


async def _forever() -> None:
    await asyncio.Event().wait()


@pytest.mark.asyncio
@pytest.mark.uvloop
async def test_cancel_running_async_call(chan: Channel) -> None:
    cid = chan.call(_forever)
    assert await chan.started() == cid
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
    assert await chan.started() == running
    chan.send(Cancel(queued))
    msg = await chan.answer(queued)
    assert isinstance(msg, Error)
    assert msg.kind == ERR_CANCELLED
    chan.send(Cancel(running))
    assert (await chan.answer(running)).kind == ERR_CANCELLED  # type: ignore[union-attr]
    assert queued not in chan.started_ids()
    chan.send(Cancel(999))  # unknown ids are ignored
    assert await chan.run(operator.add, 2, 3) == 5


@pytest.mark.parametrize("child_loop", ["asyncio", "uvloop"])
@pytest.mark.asyncio
async def test_a_call_cancelled_while_a_sync_call_blocks_never_starts(child_loop: str, tmp_path: Path) -> None:
    ch = await open_channel(loop=child_loop, stdout=subprocess.DEVNULL, stderr=None)
    try:
        async with Gate(tmp_path) as gate:
            blocking = ch.call(wait_at_gate, gate.path)
            queued = ch.call(operator.add, 1, 2)
            later = ch.call(operator.add, 2, 3)
            assert await ch.started() == blocking
            await gate.arrived()  # the sync call blocks the child's loop now
            ch.send(Cancel(queued))
            ch.proto.flush()  # in the child's socket before the call returns
            await gate.release()
            assert await ch.value(blocking) == "released"
            msg = await ch.answer(queued)
            assert isinstance(msg, Error)
            assert msg.kind == ERR_CANCELLED
            assert await ch.value(later) == 5
        assert ch.started_ids() == [blocking, later]
    finally:
        assert await ch.close() == 0


@pytest.mark.parametrize("child_loop", ["asyncio", "uvloop"])
@pytest.mark.asyncio
async def test_shutdown_while_a_sync_call_blocks_starts_nothing_more(child_loop: str, tmp_path: Path) -> None:
    ch = await open_channel(loop=child_loop, stdout=subprocess.DEVNULL, stderr=None)
    async with Gate(tmp_path) as gate:
        blocking = ch.call(wait_at_gate, gate.path)
        queued = [ch.call(operator.add, i, 1) for i in range(3)]
        assert await ch.started() == blocking
        await gate.arrived()
        ch.send(Shutdown())
        ch.proto.flush()
        await gate.release()
        assert await ch.value(blocking) == "released"
        for cid in queued:
            msg = await ch.answer(cid)
            assert isinstance(msg, Error)
            assert (msg.kind, msg.message) == (ERR_CANCELLED, "the worker is shutting down")
    assert await asyncio.wait_for(ch.proc.wait(), WAIT) == 0
    assert ch.started_ids() == [blocking]


@pytest.mark.asyncio
async def test_shutdown_finishes_the_running_call_then_exits(tmp_path: Path) -> None:
    ch = await open_channel(stdout=subprocess.DEVNULL, stderr=None)
    async with Gate(tmp_path) as gate:
        running = ch.call(wait_for_byte, gate.path)
        queued = ch.call(operator.add, 1, 2)
        assert await ch.started() == running
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
    assert await ch.started() == cid
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
        taskpool.publish("progress", {"step": 1})
        return "ok"

    async def async_pub() -> str:
        await asyncio.sleep(0)
        taskpool.publish("progress", (2, b"x"))
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
        taskpool.publish("x", threading.Lock())

    with pytest.raises(SerializationError, match="published on 'x'"):
        await chan.run(bad_pub)


@pytest.mark.asyncio
@pytest.mark.uvloop
async def test_each_call_runs_in_a_task_context_of_its_own(tmp_path: Path) -> None:
    ch = await open_channel(concurrency=2, stdout=subprocess.DEVNULL, stderr=None)
    try:
        async with Gate(tmp_path) as gate:
            waiting = ch.call(context_around_gate, gate.path)
            assert await ch.started() == waiting
            await gate.arrived()
            # Runs while the async call waits: its context is its own, not the waiting one's.
            assert await ch.run(context_now) == (ch.next_id, None)
            await gate.release()
            assert await ch.value(waiting) == [(waiting, None), (waiting, None)]
        assert await ch.run(context_now) == (ch.next_id, None)
    finally:
        assert await ch.close() == 0


@pytest.mark.asyncio
@pytest.mark.uvloop
async def test_publish_from_other_threads(chan: Channel) -> None:
    sync_id = chan.call(publish_from_threads)
    async_id = chan.call(publish_via_to_thread)
    assert await chan.value(sync_id) == "ok"
    assert await chan.value(async_id) == "ok"
    assert await chan.run(operator.add, 1, 1) == 2  # anything queued to the loop is out by now
    pubs = [(m.task_id, m.topic, load_payload(m.fmt, m.data, m.bufs)) for m in chan.log if isinstance(m, Publish)]
    # A plain thread is outside the task: its publish does nothing.
    assert pubs == [(sync_id, "copied", 2), (async_id, "to_thread", 3)]


@pytest.mark.parametrize("child_loop", ["asyncio", "uvloop"])
@pytest.mark.asyncio
async def test_started_and_publish_arrive_while_a_sync_call_blocks(child_loop: str, tmp_path: Path) -> None:
    ch = await open_channel(loop=child_loop, stdout=subprocess.DEVNULL, stderr=None)
    try:
        async with Gate(tmp_path) as gate:
            cid = ch.call(publish_then_wait, gate.path)
            assert await ch.started() == cid  # before user code blocked the loop
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


def test_split_lines_keeps_every_byte_in_order() -> None:
    buf = bytearray(b"one\ntwo\r\n\nthree")
    assert split_lines(buf, 8) == [b"one", b"two", b""]
    assert buf == b"three"  # the start of a line: kept for the next read
    buf += b"-is-much-longer\n"
    assert split_lines(buf, 8) == [b"three-is", b"-much-lo", b"nger"]
    assert buf == b""
    buf = bytearray(b"12345678\n")  # exactly the limit: whole
    assert split_lines(buf, 8) == [b"12345678"]


def test_split_lines_cuts_long_lines_between_utf8_characters() -> None:
    text = "aé€😀" * 50  # 1, 2, 3 and 4 bytes
    buf = bytearray(text.encode())
    pieces = split_lines(buf, 10)
    assert all(1 <= len(p) <= 10 for p in pieces)
    assert "".join(p.decode() for p in pieces) + buf.decode() == text  # each piece decodes alone


@pytest.mark.asyncio
async def test_read_lines_passes_on_every_byte_of_a_stream() -> None:
    reader = asyncio.StreamReader(limit=1024)
    line = os.urandom(300_000).hex()  # far over the reader's own limit and MAX_LINE
    reader.feed_data(f"{line}\nnext\nlast, without newline".encode())
    reader.feed_eof()
    got: list[str] = []
    await asyncio.wait_for(read_lines(reader, got.append, 65536), WAIT)
    assert got[-2:] == ["next", "last, without newline"]
    assert all(len(p) <= 65536 for p in got)
    assert "".join(got[:-2]) == line


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
    from taskpool._spawn import child_command, child_env
    from taskpool._frames import encode_frame
    from taskpool._wire import Call, FnRef, Started, dump_args, parent_parser

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


# --- the pool's side: ProcessWorker against a fake host -----------------------------------------


class FakeTask:
    """What ProcessWorker uses of a Task: ``id``, ``fn``, ``args``, ``_trace`` and ``done()``."""

    def __init__(self, task_id: int, fn: Callable[..., Any], *args: Any) -> None:
        self.id = task_id
        self.fn = fn
        self.args = args
        self.cancelled = False
        self._started_at: float | None = None  # set by FakeHost.task_started, as the pool does
        self.slot: Any = None
        self._trace: dict[str, str] | None = None  # not traced (taskpool.otel)

    def done(self) -> bool:
        return self.cancelled


class FakeHost:
    """Records what a worker reports, in order, as tuples in ``reports``."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.reports: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.log: list[tuple[str, str]] = []

    def task_started(self, worker: Any, task: FakeTask, at: float) -> None:
        if task._started_at is None:  # as the pool: a second report of one start is ignored
            task._started_at = at
            self.reports.put_nowait(("started", task.id, at))

    def start_wanted(self, task: FakeTask) -> bool:
        return True  # every start reported as it happens: the tests read the order

    def task_finished(self, worker: Any, task: FakeTask, ok: bool, value: Any, at: float, started: float = 0.0) -> None:
        if started:
            self.task_started(worker, task, started)
        self.reports.put_nowait(("finished", task.id, ok, value, at))

    def task_returned(self, worker: Any, task: FakeTask) -> None:
        self.reports.put_nowait(("returned", task.id))

    def batch_begin(self) -> None:
        pass

    def batch_done(self) -> None:
        pass

    def worker_publish(self, worker: Any, topic: str, data: Any, task_id: int | None) -> None:
        self.reports.put_nowait(("publish", task_id, topic, data))

    def worker_log(self, worker: Any, stream: str, line: str) -> None:
        self.log.append((stream, line))

    async def next(self) -> tuple[Any, ...]:
        return await asyncio.wait_for(self.reports.get(), WAIT)


@pytest_asyncio.fixture
async def worker() -> AsyncIterator[tuple[ProcessWorker, FakeHost, asyncio.Task[WorkerExit]]]:
    host = FakeHost()
    w = ProcessWorker(cast(Any, host), 0, WorkerSpec(pool_name="test"))
    ready = host.loop.create_future()
    run = asyncio.create_task(w.run(lambda: ready.set_result(None)))
    try:
        await asyncio.wait_for(asyncio.shield(ready), WAIT)
        yield w, host, run
    finally:
        if not run.done():
            w.kill()
        await asyncio.wait_for(run, WAIT)


def _send(w: ProcessWorker, task: FakeTask) -> FakeTask:
    w.send(cast(Any, task))
    return task


def test_process_worker_capabilities() -> None:
    assert ProcessWorker.capabilities == Capabilities(
        isolated=True,
        window=128,
        adaptive_window=True,
        reclaims_unstarted=True,
        has_pid=True,
        reports_memory=True,
    )
    assert not hasattr(ProcessWorker, "window")
    assert not hasattr(ProcessWorker, "adaptive_window")


@pytest.mark.asyncio
@pytest.mark.uvloop
async def test_process_worker_reports_the_workers_times_and_stops_without_a_lingering_timer(
    worker: tuple[ProcessWorker, FakeHost, asyncio.Task[WorkerExit]],
) -> None:
    w, host, run = worker
    before = time.time()
    _send(w, FakeTask(1, time.sleep, 0.05))
    kind, tid, started_at = await host.next()
    assert (kind, tid) == ("started", 1)
    kind, tid, ok, value, finished_at = await host.next()
    assert (kind, tid, ok, value) == ("finished", 1, True, None)
    assert before <= started_at <= finished_at - 0.05 <= time.time()

    _send(w, FakeTask(2, _raise_value_error, 7))
    assert (await host.next())[:2] == ("started", 2)
    kind, tid, ok, value, failed_at = await host.next()
    assert (kind, tid, ok, type(value)) == ("finished", 2, False, ValueError)
    assert finished_at <= failed_at <= time.time()

    # Failed in the parent, never sent: stamped with the parent's clock.
    before = time.time()
    _send(w, FakeTask(3, operator.add, threading.Lock(), 1))
    kind, tid, ok, value, at = await host.next()
    assert (kind, tid, ok, type(value)) == ("finished", 3, False, SerializationError)
    assert before <= at <= time.time()

    w.stop()
    overdue = w._stop_timer
    assert overdue is not None
    exit = await asyncio.wait_for(run, WAIT)
    assert (exit.failed, exit.reason) == (False, "stopped")
    assert overdue.cancelled()  # it would keep a closed pool's loop alive for seconds
    assert w._stop_timer is None


@pytest.mark.asyncio
async def test_process_worker_turns_undecodable_results_and_data_into_errors(
    worker: tuple[ProcessWorker, FakeHost, asyncio.Task[WorkerExit]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "_EXIT_WHEN_LOADED", True)
    w, host, _ = worker
    _send(w, FakeTask(1, give_exiting))
    assert (await host.next())[:2] == ("started", 1)
    kind, tid, ok, value, _ = await host.next()
    assert (kind, tid, ok, type(value)) == ("finished", 1, False, SerializationError)
    assert "SystemExit: 3" in str(value)

    _send(w, FakeTask(2, publish_exiting))
    assert (await host.next())[:2] == ("started", 2)
    kind, tid, topic, data = await host.next()
    assert (kind, tid, topic) == ("publish", 2, "exiting")
    assert data.startswith("<undecodable: cannot receive the data published on 'exiting'")
    assert "SystemExit: 3" in data
    assert (await host.next())[:4] == ("finished", 2, True, "published")

    _send(w, FakeTask(3, give_refusing))
    assert (await host.next())[:2] == ("started", 3)
    kind, tid, ok, value, _ = await host.next()
    assert (kind, tid, ok, type(value), type(value.__cause__)) == (
        "finished",
        3,
        False,
        SerializationError,
        ReduceError,
    )


@pytest.mark.parametrize("cancel", ["sync", "async"])
@pytest.mark.asyncio
async def test_process_worker_cancel_of_an_unstarted_call_means_it_never_runs(
    worker: tuple[ProcessWorker, FakeHost, asyncio.Task[WorkerExit]], tmp_path: Path, cancel: str
) -> None:
    w, host, _ = worker
    async with Gate(tmp_path) as gate:
        _send(w, FakeTask(1, wait_at_gate if cancel == "sync" else wait_for_byte, gate.path))
        queued = _send(w, FakeTask(2, operator.add, 1, 2))
        _send(w, FakeTask(3, operator.add, 2, 3))
        assert (await host.next())[:2] == ("started", 1)
        await gate.arrived()
        queued.cancelled = True  # what task.cancel() does before asking the worker
        assert w.cancel(cast(Any, queued)) is CancelResult.STOPPING
        w._channel.flush()  # type: ignore[union-attr]  # the Cancel is in the child's socket now
        await gate.release()
        reports = [await host.next() for _ in range(4)]
    assert [r[:2] for r in reports if r[0] == "started"] == [("started", 3)]
    finished = {r[1]: r for r in reports if r[0] == "finished"}
    assert finished[1][2:4] == (True, "released")
    assert finished[2][2] is False
    assert isinstance(finished[2][3], TaskCancelled)
    assert finished[3][2:4] == (True, 5)


@pytest.mark.asyncio
async def test_process_worker_abandon_kills_the_process(
    worker: tuple[ProcessWorker, FakeHost, asyncio.Task[WorkerExit]], tmp_path: Path
) -> None:
    w, host, run = worker
    async with Gate(tmp_path) as gate:
        _send(w, FakeTask(1, wait_at_gate, gate.path))
        assert (await host.next())[:2] == ("started", 1)
        await gate.arrived()
        w.abandon()
        exit = await asyncio.wait_for(run, WAIT)
    assert (exit.failed, exit.reason) == (False, "retired")
    assert w._proc is not None
    assert w._proc.returncode == -signal.SIGKILL


@pytest.mark.asyncio
async def test_process_worker_reports_a_call_that_failed_to_load_as_begun_then_failed(
    worker: tuple[ProcessWorker, FakeHost, asyncio.Task[WorkerExit]],
) -> None:
    w, host, _ = worker
    before = time.time()
    _send(w, FakeTask(1, operator.pos, FailsWhenUnpickled()))
    kind, tid, started_at = await host.next()
    assert (kind, tid) == ("started", 1)
    kind, tid, ok, value, finished_at = await host.next()
    assert (kind, tid, ok, type(value), str(value)) == ("finished", 1, False, LookupError, "cannot load me")
    assert before <= started_at <= finished_at <= time.time()


@pytest.mark.asyncio
async def test_process_worker_fails_a_call_that_killed_it_while_loading(
    worker: tuple[ProcessWorker, FakeHost, asyncio.Task[WorkerExit]],
) -> None:
    w, host, run = worker
    before = time.time()
    _send(w, FakeTask(1, operator.pos, ExitsWhenUnpickled()))
    _send(w, FakeTask(2, operator.pos, 2))  # never began: the pool may requeue it
    exit = await asyncio.wait_for(run, WAIT)
    assert (exit.failed, exit.exitcode) == (True, 7)
    # Reported as begun before run() returned, so the pool fails it as crashed instead of
    # handing it to the next worker to die the same way.
    kind, tid, at = await host.next()
    assert (kind, tid) == ("started", 1)
    assert before <= at <= time.time()
    assert host.reports.empty()


def _journal_ids(block: ControlBlock) -> list[int]:
    ids: list[int] = []
    for msg in parent_parser().feed(block.journal()):
        ids += [m.id for m in msg.items] if isinstance(msg, Answers) else [msg.id]  # type: ignore[union-attr]
    return ids


def test_the_journal_holds_every_answer_waiting_whatever_frames_came_between() -> None:
    """Answers join frames that grow after they were copied to the journal, and a frame
    of another kind closes one: at every step the journal parses to every answer so far."""
    block = ControlBlock()
    try:
        server = CallServer(control=block)
        expected: list[int] = []
        steps: list[Any] = [
            Result(1, FMT_TUPLE, [1], [], 1.0, 0.5),
            Result(2, FMT_TUPLE, [2], [], 1.0, 0.5),  # grows the frame copied before
            Started(3, 1.0),  # closes it
            Result(3, FMT_TUPLE, [3], [], 1.0, 0.5),  # opens the next
            Error(4, ERR_RAISED, "builtins", "ValueError", "x", "tb", None, 1.0, 0.5),
            Result(5, FMT_TUPLE, [5], [], 1.0, 0.5),
        ]
        # Copied to the journal after the first answer, then only once the next frame of
        # answers was opened: the first one grew and was closed between two copies.
        for i, msg in enumerate(steps):
            if isinstance(msg, Started):
                server.writer.add(msg)
            else:
                server._answer(msg)
            expected.append(msg.id)
            if i in (0, 3, 5):
                assert server._journal(block)
                assert _journal_ids(block) == expected
    finally:
        block.close()
