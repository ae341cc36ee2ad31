"""The wire protocol on its own: payload codecs, functions, frames, the parser, errors."""

from __future__ import annotations

import asyncio
import enum
import functools
import gc
import operator
import os
import pickle
import random
import socket
import sys
import threading
import types
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskpool import _wire
from taskpool._channel import FrameProtocol
from taskpool._errors import RemoteTraceback, SerializationError, TaskCancelled, TaskFailed
from taskpool._frames import (
    HEADER,
    LARGE,
    READ_AHEAD,
    FrameParser,
    FrameWriter,
    WireError,
    encode_frame,
)
from taskpool._wire import (
    ANSWERS_HEAD,
    ERR_CANCELLED,
    ERR_RAISED,
    ERR_UNSENDABLE,
    FMT_PICKLE,
    FMT_TUPLE,
    FMT_VALUE,
    Call,
    Cancel,
    Error,
    FnRef,
    FnValue,
    FunctionTable,
    Hello,
    Loading,
    Publish,
    Result,
    Shutdown,
    Started,
    ToParent,
    child_parser,
    define_function,
    dump_args,
    dump_payload,
    dump_value,
    is_async_callable,
    load_function,
    load_payload,
    load_published,
    load_result,
    parent_parser,
    rebuild_exception,
)

# --- helpers -----------------------------------------------------------------------------


def wire_bytes(*msgs: Any) -> bytes:
    """The exact bytes a list of messages puts on the wire."""
    w = FrameWriter()
    for m in msgs:
        w.add(m)
    return b"".join(bytes(c) for c in w.take())


def through_wire(value: Any) -> Any:
    """Serialise a result, frame it, parse it back, load it."""
    fmt, data, bufs = dump_value(value)
    (msg,) = parent_parser().feed(wire_bytes(Result(1, fmt, data, bufs)))
    return load_result(msg)


def args_through_wire(args: tuple[Any, ...]) -> tuple[Any, ...]:
    fmt, data, bufs = dump_args(args)
    (msg,) = child_parser().feed(wire_bytes(Call(1, 0, fmt, data, bufs)))
    out = load_payload(msg.fmt, msg.data, msg.bufs)
    assert type(out) is tuple
    return out  # type: ignore[no-any-return]


def module_level(x: int) -> int:
    return x + 1


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    pass


class Blob:
    """Out-of-band pickling like numpy's: its data travels as a PickleBuffer."""

    def __init__(self, data: bytearray) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (Blob, (pickle.PickleBuffer(self.data),))


class BadInit(Exception):
    """Pickles, but cannot be rebuilt: __init__ wants two arguments."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(a)


def _raise_on_load(exc: BaseException) -> None:
    raise exc


class RaisesWhenLoaded:
    """Pickles fine; unpickling it raises ``exc`` (even a SystemExit)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        return (_raise_on_load, (self.exc,))


class ErrorRaisingWhenLoaded(Exception):
    """An exception whose unpickling raises ``SystemExit(3)``."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_raise_on_load, (SystemExit(3),))


# --- payloads: msgpack fast path -----------------------------------------------------------


def test_plain_args_take_the_msgpack_path_with_exact_types() -> None:
    args = (1, -(2**63), 2**64 - 1, 1.5, "x", None, True, False, b"small", [1, [2.0, "y"]], {"a": {"b": [None]}})
    fmt, data, bufs = dump_args(args)
    assert fmt == FMT_TUPLE
    assert bufs == []
    out = args_through_wire(args)
    assert out == args
    assert [type(a) for a in out] == [type(a) for a in args]
    assert type(out[7]) is bool  # not 0/1


@pytest.mark.parametrize(
    "value",
    [
        (1, (2, 3)),  # nested tuple: msgpack would make it a list
        [(1, 2)],
        {1: "int key"},
        {"a": {2, 3}},
        bytearray(b"abc"),
        Color.RED,  # IntEnum == 1: msgpack would lose the type
        MyStr("sub"),
        2**64,  # beyond msgpack ints
        -(2**63) - 1,
        frozenset({1}),
        complex(1, 2),
    ],
    ids=repr,
)
def test_lossy_values_go_through_pickle_and_keep_their_type(value: Any) -> None:
    fmt, _, _ = dump_value(value)
    assert fmt == FMT_PICKLE
    out = through_wire(value)
    assert out == value
    assert type(out) is type(value)
    out_args = args_through_wire((value,))
    assert out_args == (value,)
    assert type(out_args[0]) is type(value)


def test_top_level_tuple_result_stays_a_tuple() -> None:
    fmt, _, _ = dump_value((1, "a", [2]))
    assert fmt == FMT_TUPLE
    out = through_wire((1, "a", [2]))
    assert out == (1, "a", [2])
    assert type(out) is tuple
    assert type(out[2]) is list


def test_list_result_stays_a_list() -> None:
    fmt, _, _ = dump_value([1, 2])
    assert fmt == FMT_VALUE
    assert through_wire([1, 2]) == [1, 2]


def test_large_plain_data_falls_back_to_pickle() -> None:
    deep: Any = []
    for _ in range(200):
        deep = [deep]
    assert through_wire(deep) == deep
    big = list(range(10_000))  # walking it would cost more than pickling it
    assert dump_value(big)[0] == FMT_PICKLE
    assert through_wire(big) == big


# --- payloads: out-of-band buffers -----------------------------------------------------------


def test_top_level_bytes_below_threshold_stay_inline() -> None:
    small = os.urandom(LARGE - 1)
    fmt, _, bufs = dump_args((small,))
    assert fmt == FMT_TUPLE
    assert bufs == []


def test_top_level_bytes_at_threshold_go_out_of_band_without_a_copy() -> None:
    big = os.urandom(LARGE)
    fmt, data, bufs = dump_args((big, 1))
    assert fmt == FMT_PICKLE
    assert isinstance(data, bytes)
    assert len(data) < 200  # the stream only references the buffer
    assert len(bufs) == 1
    assert bufs[0].obj is big  # a view of the caller's bytes, not a copy
    out = args_through_wire((big, 1))
    assert out == (big, 1)
    assert type(out[0]) is bytes


def test_large_bytes_result_goes_out_of_band() -> None:
    big = os.urandom(LARGE * 3)
    fmt, _, bufs = dump_value(big)
    assert fmt == FMT_PICKLE
    assert [b.obj for b in bufs] == [big]
    out = through_wire(big)
    assert out == big
    assert type(out) is bytes


def test_top_level_bytearray_goes_out_of_band_and_arrives_without_a_second_copy() -> None:
    ba = bytearray(os.urandom(LARGE * 2))
    fmt, _, bufs = dump_args((ba,))
    assert fmt == FMT_PICKLE
    assert [b.obj for b in bufs] == [ba]
    ba[0] ^= 0xFF  # still the caller's memory: the change shows through
    assert bufs[0][0] == ba[0]
    fmt, data, bufs = dump_value(ba)
    (msg,) = parent_parser().feed(wire_bytes(Result(1, fmt, data, bufs)))
    out = load_result(msg)
    assert out == ba
    assert out is msg.bufs[0]  # the received segment itself


def test_pickle_buffers_anywhere_go_out_of_band_without_a_copy() -> None:
    blob = Blob(bytearray(os.urandom(LARGE * 2)))  # reduces like a numpy array
    nested = {"k": [blob, "x"]}
    fmt, _, bufs = dump_args((nested,))
    assert fmt == FMT_PICKLE
    assert [b.obj for b in bufs] == [blob.data]
    (out,) = args_through_wire((nested,))
    assert out["k"][0].data == blob.data
    assert out["k"][1] == "x"


def test_small_buffers_stay_in_band() -> None:
    fmt, _, bufs = dump_args(({"k": bytearray(100)},))
    assert fmt == FMT_PICKLE
    assert bufs == []


def test_memoryview_arguments_arrive_as_memoryviews() -> None:
    raw = bytearray(os.urandom(LARGE * 2))
    flat = memoryview(raw)
    shaped = memoryview(bytearray(range(24))).cast("B", (4, 6))
    out = args_through_wire((flat, shaped))
    assert isinstance(out[0], memoryview)
    assert out[0].tobytes() == bytes(raw)
    assert out[1].shape == (4, 6)
    assert out[1].tolist() == shaped.tolist()


def test_large_pickle_stream_travels_as_a_segment() -> None:
    value = {"words": [MyStr(str(i)) for i in range(20_000)]}  # big, not plain
    fmt, data, bufs = dump_value(value)
    assert fmt == FMT_PICKLE
    assert data is None
    assert len(bufs[0]) >= LARGE
    assert through_wire(value) == value


def test_writer_sends_large_segments_as_views_and_coalesces_small_frames() -> None:
    big = os.urandom(LARGE * 4)
    w = FrameWriter()
    for i in range(100):
        w.add(Started(i))
    w.add(Result(1, *dump_value(big)))
    for i in range(3):
        w.add(Started(i))
    chunks = w.take()
    assert len(chunks) == 3  # small frames + header | the segment | small frames
    assert isinstance(chunks[1], memoryview)
    assert chunks[1].obj is big
    assert w.take() == []
    assert len(w) == 0


def test_parser_reads_large_segments_straight_into_their_buffer() -> None:
    big = os.urandom(LARGE * 8)
    data = wire_bytes(Result(7, *dump_value(big)))
    p = parent_parser()
    seen_targets = set()
    out: list[Any] = []
    pos = 0
    while pos < len(data):  # what an asyncio BufferedProtocol does
        target = p.get_buffer(-1)
        seen_targets.add(id(target.obj))
        n = min(len(target), len(data) - pos, 100_000)
        target[:n] = data[pos : pos + n]
        target.release()
        pos += n
        out += p.buffer_updated(n)
    (msg,) = out
    (segment,) = msg.bufs
    assert isinstance(segment, bytearray)
    # The kernel (here: the test) wrote into the segment itself, not a staging buffer.
    assert id(segment) in seen_targets
    assert load_result(msg) == big


# --- functions -----------------------------------------------------------------------------


def test_module_level_functions_travel_by_reference() -> None:
    assert define_function(module_level) == FnRef(__name__, "module_level")
    assert define_function(os.path.join) == FnRef(os.path.join.__module__, "join")
    assert define_function(operator.add) == FnRef("_operator", "add")
    assert define_function(dict) == FnRef("builtins", "dict")
    # A bound method of a module-level instance: by reference, not a copy of its state.
    assert define_function(random.random) == FnRef("random", "random")
    assert load_function(define_function(module_level)) is module_level


def test_lambdas_closures_and_local_functions_travel_by_value() -> None:
    k = 10

    def local(x: int) -> int:
        return x + k

    for fn in (lambda x: x * 2, local, functools.partial(module_level, 1)):
        d = define_function(fn)
        assert isinstance(d, FnValue)
    assert load_function(define_function(local))(1) == 11
    assert load_function(define_function(functools.partial(module_level, 1)))() == 2


def test_main_module_functions_travel_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_main = types.ModuleType("__main__")
    code = "def hello():\n    return 'hi'\n"
    exec(compile(code, "<main>", "exec"), fake_main.__dict__)  # noqa: S102
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    d = define_function(fake_main.hello)
    assert isinstance(d, FnValue)


def test_main_module_classes_in_arguments_travel_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # Plain pickle would write "__main__.Point": the worker's __main__ has no Point.
    fake_main = types.ModuleType("__main__")
    exec(
        compile("class Point:\n    def __init__(self, x):\n        self.x = x\n", "<main>", "exec"), fake_main.__dict__
    )  # noqa: S102
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    fmt, data, bufs = dump_args((fake_main.Point(3),))
    assert fmt == FMT_PICKLE
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # "the worker"
    (p,) = load_payload(fmt, data, bufs)
    assert p.x == 3


def test_function_table_sends_each_definition_once_per_worker() -> None:
    def f() -> None: ...

    a, b = FunctionTable(), FunctionTable()
    fn_id, define, drop = a.prepare(f)
    assert fn_id > 0
    assert isinstance(define, FnValue)
    assert drop == []
    assert a.prepare(f) == (fn_id, None, [])  # cached: only the id travels
    assert b.prepare(f) == (fn_id, define, [])  # another worker: same id, sent again
    assert a.prepare(module_level)[1] == FnRef(__name__, "module_level")


def test_function_table_evicts_least_recently_used_and_tells_the_worker() -> None:
    def f1() -> None: ...

    def f2() -> None: ...

    def f3() -> None: ...

    t = FunctionTable(capacity=2)
    id1, _, _ = t.prepare(f1)
    id2, _, _ = t.prepare(f2)
    t.prepare(f1)  # f1 is now the most recent
    id3, d3, drop = t.prepare(f3)
    assert d3 is not None
    assert drop == [id2]
    assert t.prepare(f1) == (id1, None, [])
    _, again, drop = t.prepare(f2)
    assert again is not None  # it was forgotten: defined again
    assert drop == [id3]


def test_the_same_function_again_costs_no_lookup_but_is_redefined_once_forgotten() -> None:
    t = FunctionTable(capacity=1)
    fn_id, define, _ = t.prepare(module_level)
    assert define is not None
    assert t.prepare(module_level) == (fn_id, None, [])  # the call before's: no lookup
    _, by_value, drop = t.prepare(lambda: None)  # evicts module_level (capacity 1)
    assert by_value is not None and drop == [fn_id]
    again_id, again, _ = t.prepare(module_level)
    assert (again_id, again) == (fn_id, define)  # forgotten by the worker: defined again


def test_function_cache_does_not_keep_lambdas_alive() -> None:
    t = FunctionTable()
    before = len(FunctionTable._by_fn)
    for i in range(50):
        t.prepare(lambda i=i: i)
    gc.collect()
    assert len(FunctionTable._by_fn) <= before + 1


def test_functions_without_weakrefs_or_hash_still_work() -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self) -> int:
            return 1

    fn_id, define, _ = FunctionTable().prepare(Unhashable())
    assert fn_id == 0  # a one-off: the worker does not keep it
    assert isinstance(define, FnValue)
    fn_id, define, _ = FunctionTable().prepare(len)  # no weakref, by reference: pinned
    assert fn_id > 0
    assert define == FnRef("builtins", "len")


# --- serialisation errors --------------------------------------------------------------------


def test_unsendable_argument_names_its_position_and_type() -> None:
    with pytest.raises(SerializationError, match=r"args\[1\] \(_thread\.lock\) of f") as info:
        dump_args((1, threading.Lock()), "f")
    assert isinstance(info.value, TypeError)


def test_unsendable_function_says_function() -> None:
    lock = threading.Lock()

    def uses_lock() -> bool:
        return lock.locked()

    with pytest.raises(SerializationError, match="cannot send function"):
        define_function(uses_lock)
    with pytest.raises(SerializationError, match="not callable"):
        define_function(42)  # type: ignore[arg-type]


def test_unsendable_published_data_names_the_part() -> None:
    with pytest.raises(SerializationError, match="published data"):
        dump_payload(threading.Lock(), "published data")


def test_unloadable_result_raises_serialization_error() -> None:
    msg = Result(1, FMT_PICKLE, b"\x80\x05not a pickle")
    with pytest.raises(SerializationError, match="cannot receive the result"):
        load_result(msg)


@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt(), ValueError("v")], ids=repr)
def test_anything_raised_while_loading_a_result_becomes_a_serialization_error(raised: BaseException) -> None:
    fmt, data, bufs = dump_value(RaisesWhenLoaded(raised))
    (msg,) = parent_parser().feed(wire_bytes(Result(1, fmt, data, bufs)))
    assert isinstance(msg, Result)
    with pytest.raises(
        SerializationError, match=f"cannot receive the result from the worker: {type(raised).__name__}"
    ) as info:
        load_result(msg)
    assert info.value.__cause__ is not None
    assert type(info.value.__cause__) is type(raised)


def test_anything_raised_while_loading_published_data_becomes_a_serialization_error() -> None:
    fmt, data, bufs = dump_value({"k": RaisesWhenLoaded(SystemExit(3))})
    (msg,) = parent_parser().feed(wire_bytes(Publish(7, "progress", fmt, data, bufs)))
    assert isinstance(msg, Publish)
    with pytest.raises(SerializationError, match="published on 'progress'.*SystemExit: 3"):
        load_published(msg)
    (ok,) = parent_parser().feed(wire_bytes(Publish(7, "progress", *dump_value([1, (2, 3)]))))
    assert isinstance(ok, Publish)
    assert load_published(ok) == [1, (2, 3)]


# --- exceptions --------------------------------------------------------------------------------


def _error_for(exc: BaseException, kind: int = ERR_RAISED, pickled: bool = True) -> Error:
    t = type(exc)
    return Error(
        1,
        kind,
        t.__module__,
        t.__qualname__,
        str(exc),
        'Traceback (most recent call last):\n  File "w.py", line 1, in f\nValueError: bad\n',
        pickle.dumps(exc) if pickled else None,
    )


def test_rebuilt_exception_keeps_its_type_with_the_remote_traceback_as_cause() -> None:
    exc = rebuild_exception(_error_for(ValueError("bad")))
    assert type(exc) is ValueError
    assert str(exc) == "bad"
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert 'File "w.py"' in str(exc.__cause__)


def test_unpicklable_exception_becomes_task_failed() -> None:
    exc = rebuild_exception(_error_for(KeyError("k"), pickled=False))
    assert isinstance(exc, TaskFailed)
    assert exc.type_name == "KeyError"
    assert exc.message == "'k'"
    assert "w.py" in exc.traceback
    assert isinstance(exc.__cause__, RemoteTraceback)


def test_exception_that_cannot_be_rebuilt_becomes_task_failed() -> None:
    exc = rebuild_exception(_error_for(BadInit("a", "b")))
    assert isinstance(exc, TaskFailed)
    assert exc.type_name == f"{__name__}.BadInit"


def test_base_exceptions_from_a_task_do_not_escape_as_themselves() -> None:
    exc = rebuild_exception(_error_for(SystemExit(3)))
    assert isinstance(exc, TaskFailed)
    assert exc.type_name == "SystemExit"


def test_exception_whose_unpickling_raises_system_exit_becomes_task_failed() -> None:
    exc = rebuild_exception(_error_for(ErrorRaisingWhenLoaded("e")))
    assert isinstance(exc, TaskFailed)
    assert exc.type_name == f"{__name__}.ErrorRaisingWhenLoaded"
    assert isinstance(exc.__cause__, RemoteTraceback)


def test_unsendable_result_carries_the_original_exception_as_cause() -> None:
    original = CustomPicklingError("no way")
    exc = rebuild_exception(_unsendable(original, pickle.dumps(original)))
    assert isinstance(exc, SerializationError)
    assert "cannot be sent back" in str(exc)
    cause = exc.__cause__
    assert type(cause) is CustomPicklingError
    assert str(cause) == "no way"
    assert isinstance(cause.__cause__, RemoteTraceback)
    assert "in __reduce__" in cause.__cause__.traceback


@pytest.mark.parametrize(
    "pickled",
    [None, b"\x80\x05not a pickle", pickle.dumps(ErrorRaisingWhenLoaded("e")), pickle.dumps("not an exception")],
    ids=["none", "garbage", "system-exit", "not-an-exception"],
)
def test_unsendable_result_whose_original_cannot_be_rebuilt_has_the_remote_traceback_as_cause(
    pickled: bytes | None,
) -> None:
    exc = rebuild_exception(_unsendable(CustomPicklingError("no way"), pickled))
    assert isinstance(exc, SerializationError)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "in __reduce__" in exc.__cause__.traceback


class CustomPicklingError(Exception):
    pass


def _unsendable(original: BaseException, pickled: bytes | None) -> Error:
    tb = (
        'Traceback (most recent call last):\n  File "r.py", line 3, in __reduce__\n'
        f"{type(original).__name__}: {original}\n"
    )
    message = f"the result (r.Thing) cannot be sent back from the worker: {type(original).__name__}: {original}"
    return Error(1, ERR_UNSENDABLE, "taskpool._errors", "SerializationError", message, tb, pickled, 12.5)


def test_error_kinds_map_to_taskpool_errors() -> None:
    unsendable = rebuild_exception(_error_for(SerializationError("the result (x) cannot be sent"), ERR_UNSENDABLE))
    assert isinstance(unsendable, SerializationError)
    assert "cannot be sent" in str(unsendable)
    cancelled = rebuild_exception(Error(1, ERR_CANCELLED, "asyncio.exceptions", "CancelledError", "cancelled", ""))
    assert isinstance(cancelled, TaskCancelled)
    assert cancelled.__cause__ is None


# --- worker-side times ---------------------------------------------------------------------------


def test_times_travel_as_the_last_field_and_default_to_zero_for_older_peers() -> None:
    msgs = [
        Loading(1, 1700000000.125),
        Started(1, 1700000000.25),
        Result(1, *dump_value(5), at=1700000001.5),
        Error(2, ERR_RAISED, "builtins", "ValueError", "bad", "tb", None, 1700000002.75),
    ]
    assert parent_parser().feed(wire_bytes(*msgs)) == msgs
    # The same messages as an older peer encoded them, without ``at``.
    legacy = [[21, 1], [22, 1, FMT_VALUE, 5, []], [23, 2, ERR_RAISED, "builtins", "ValueError", "bad", "tb", None]]
    frames = b"".join(len(b).to_bytes(4, "little") + b for b in map(msgspec.msgpack.encode, legacy))
    started, result, error = parent_parser().feed(frames)
    assert isinstance(started, Started)
    assert isinstance(result, Result)
    assert isinstance(error, Error)
    assert started == Started(1)
    assert started.at == 0.0
    assert (result.id, load_result(result), result.at) == (1, 5, 0.0)
    assert (error.id, error.message, error.at) == (2, "bad", 0.0)


# --- helpers shared with the workers -------------------------------------------------------------


async def _coro(x: int, y: int = 0) -> int:
    return x + y


def test_is_async_callable_sees_through_partials() -> None:
    assert is_async_callable(_coro)
    assert is_async_callable(functools.partial(_coro, 1))
    assert is_async_callable(functools.partial(functools.partial(_coro, 1), y=2))
    assert not is_async_callable(module_level)
    assert not is_async_callable(functools.partial(module_level, 1))
    assert not is_async_callable(lambda: _coro(1))  # returns a coroutine, but is not one


def test_the_frame_codec_is_still_reachable_through_wire() -> None:
    assert _wire.FrameProtocol is FrameProtocol
    assert _wire.WireError is WireError


# --- frames and the parser ---------------------------------------------------------------------


def _mixed_messages() -> list[Any]:
    big = os.urandom(LARGE + 17)
    return [
        Hello(123, "3.11.7", True),
        Started(1),
        Result(1, *dump_value((1, "x"))),
        Result(2, *dump_value(big)),
        Publish(2, "progress", *dump_value({"done": 3})),
        Result(3, *dump_value(bytearray(b"zz"))),
        Error(4, ERR_RAISED, "builtins", "ValueError", "bad", "tb", None),
        Result(5, *dump_value([os.urandom(LARGE), bytearray(os.urandom(LARGE * 2)), b""])),
        Result(6, *dump_value(b"")),
    ]


def _expected(msgs: list[Any]) -> list[Any]:
    out = []
    for m in msgs:
        if isinstance(m, (Result, Publish)):
            out.append((type(m), load_payload(m.fmt, m.data, m.bufs)))
        else:
            out.append(m)
    return out


def _normalise(msgs: list[Any]) -> list[Any]:
    return _expected(msgs)


def test_parser_handles_many_frames_in_one_chunk() -> None:
    msgs = _mixed_messages()
    data = wire_bytes(*msgs) * 3
    out = parent_parser().feed(data)
    assert _normalise(out) == _expected(msgs) * 3


def test_parser_fed_byte_by_byte() -> None:
    msgs = _mixed_messages()
    data = wire_bytes(*msgs)
    p = parent_parser()
    out: list[Any] = []
    for i in range(len(data)):
        out += p.feed(data[i : i + 1])
    assert _normalise(out) == _expected(msgs)
    assert p.pending == 0


@given(st.lists(st.integers(min_value=1, max_value=300_000), min_size=1, max_size=40))
def test_parser_any_chunking(cuts: list[int]) -> None:
    msgs = _mixed_messages()
    data = wire_bytes(*msgs)
    p = parent_parser()
    out: list[Any] = []
    pos = 0
    for c in cuts:
        out += p.feed(data[pos : pos + c])
        pos += c
    out += p.feed(data[pos:])
    assert _normalise(out) == _expected(msgs)


def test_parser_handles_a_frame_larger_than_its_buffer_and_shrinks_back() -> None:
    p = FrameParser(child_parser()._decoder, bufsize=32 * 1024)
    huge = Call(1, 0, FMT_VALUE, "x" * 500_000)  # in-band, 15x the buffer
    data = wire_bytes(huge, Cancel(1), Shutdown())
    out: list[Any] = []
    for i in range(0, len(data), 9999):
        out += p.feed(data[i : i + 9999])
    assert out == [huge, Cancel(1), Shutdown()]
    p.feed(wire_bytes(Cancel(2)))
    assert len(p._buf) == 32 * 1024


def test_parser_rejects_garbage_and_wrong_direction() -> None:
    with pytest.raises(WireError):
        child_parser().feed(b"\x03\x00\x00\x00abc")
    with pytest.raises(WireError):  # a child->parent message sent to the child
        child_parser().feed(wire_bytes(Started(1)))
    with pytest.raises(WireError):
        child_parser().feed(wire_bytes(Loading(1)))
    with pytest.raises(WireError):
        parent_parser().feed(wire_bytes(Cancel(1)))


# --- sizes come from the peer: limits and memory ------------------------------------------------


def _feed_buffered(p: FrameParser[Any], data: bytes, step: int = 200_000) -> tuple[list[Any], int]:
    """Feed ``data`` the way a BufferedProtocol does; return the messages and the most
    memory the parser held for unfinished frames at any point."""
    out: list[Any] = []
    most = 0
    pos = 0
    while pos < len(data):
        target = p.get_buffer(-1)
        n = min(len(target), len(data) - pos, step)
        target[:n] = data[pos : pos + n]
        target.release()
        pos += n
        out += p.buffer_updated(n)
        most = max(most, len(p._buf) + (len(p._seg) if p._seg is not None else 0))
    return out, most


def test_parser_rejects_a_length_over_its_limit_before_allocating() -> None:
    p = parent_parser(max_message=4096)
    with pytest.raises(WireError, match="a frame of 4097 bytes is over the limit of 4096 bytes"):
        p.feed(HEADER.pack(4097))
    assert len(p._buf) == 256 * 1024  # nothing allocated for it
    fmt, data, bufs = dump_value(os.urandom(LARGE))
    big = wire_bytes(Result(1, fmt, data, bufs))
    with pytest.raises(WireError, match=f"a segment of {LARGE} bytes is over the limit of 4096 bytes"):
        parent_parser(max_message=4096).feed(big)
    assert len(parent_parser(max_message=LARGE).feed(big)) == 1  # at the limit: fine
    with pytest.raises(ValueError, match="max_message"):
        parent_parser(max_message=0)


def test_parser_memory_follows_what_arrived_not_what_was_announced() -> None:
    """Lengths within the limit that never come true (a frame of 1 GiB, a segment of
    1 TiB) cost a read-ahead, not their size."""
    p = parent_parser()
    _, most = _feed_buffered(p, HEADER.pack(2**30) + os.urandom(300_000))
    assert most <= 300_000 + READ_AHEAD + 256 * 1024
    lying = msgspec.msgpack.encode(Result(1, FMT_PICKLE, None, [2**40]))
    p = parent_parser()
    _, most = _feed_buffered(p, HEADER.pack(len(lying)) + lying + os.urandom(3_000_000))
    assert p._seg is not None
    assert len(p._seg) <= 3_000_000 + READ_AHEAD
    assert most <= 3_000_000 + READ_AHEAD + 256 * 1024


@pytest.mark.parametrize("step", [7_000, 100_000, 5_000_000])
def test_parser_grows_large_frames_and_segments_as_they_arrive(step: int) -> None:
    payload = os.urandom(5 * 1024 * 1024)
    msgs = [
        Call(1, 0, FMT_VALUE, payload.hex()[:6_000_000]),  # one 6 MB in-band frame
        Result(2, *dump_value(payload)),  # one 5 MiB segment
        Result(3, *dump_value([payload[:LARGE], b"", payload[: 3 * LARGE]])),
        Started(4),
    ]
    out, _ = _feed_buffered(FrameParser(msgspec.msgpack.Decoder(Call | Result | Started)), wire_bytes(*msgs), step)
    assert out[0] == msgs[0]
    assert load_result(out[1]) == payload
    assert load_result(out[2]) == [payload[:LARGE], b"", payload[: 3 * LARGE]]
    assert out[3] == Started(4)


def test_wire_error_carries_the_messages_before_the_bad_frame() -> None:
    good = wire_bytes(Started(1), Result(1, *dump_value("ok")), Started(2))
    with pytest.raises(WireError) as info:
        parent_parser().feed(good + b"\x05\x00\x00\x00\xc1\xc1\xc1\xc1\xc1" + wire_bytes(Started(3)))
    assert [type(m) for m in info.value.messages] == [Started, Result, Started]
    p = parent_parser(max_message=2**30)
    p.feed(good[:3])  # a chunk boundary inside the first frame
    with pytest.raises(WireError) as info:
        p.feed(good[3:] + HEADER.pack(2**32 - 1))
    assert [type(m) for m in info.value.messages] == [Started, Result, Started]


def test_writer_refuses_what_the_peer_would_reject() -> None:
    w = FrameWriter(max_message=4096)
    with pytest.raises(SerializationError, match="a buffer of 5000 bytes is over the limit of 4096"):
        w.add(Result(1, FMT_PICKLE, None, [bytes(5000)]))
    with pytest.raises(SerializationError, match="over the limit of 4096 bytes"):
        w.add(Result(1, FMT_VALUE, "x" * 5000))
    assert len(w) == 0  # left unchanged
    w.add(Result(1, FMT_PICKLE, None, [bytes(4096)]))
    (msg,) = parent_parser(max_message=4096).feed(b"".join(bytes(c) for c in w.take()))
    assert msg.bufs == [bytearray(4096)]


def test_encode_frame_is_length_prefixed_little_endian() -> None:
    (frame,) = encode_frame(Cancel(5))
    n = int.from_bytes(frame[:4], "little")
    assert n == len(frame) - 4


# --- the protocol over a real socket -----------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.uvloop
async def test_frame_protocol_round_trip_over_a_socketpair() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    received: list[ToParent] = []
    got_all = loop.create_future()
    msgs = _mixed_messages() * 20 + [Result(99, *dump_value(os.urandom(8 << 20)))]

    def on_message(m: ToParent) -> None:
        received.append(m)
        if len(received) == len(msgs):
            got_all.set_result(None)

    _, sender = await loop.connect_accepted_socket(lambda: FrameProtocol(child_parser()), a)
    _, receiver = await loop.connect_accepted_socket(lambda: FrameProtocol(parent_parser(), on_message), b)
    for m in msgs:
        sender.send(m)  # one gathered write at the end of this iteration
    await asyncio.wait_for(got_all, 30)
    assert _normalise(received) == _expected(msgs)
    assert sender.transport is not None
    sender.transport.close()
    assert receiver.closed is not None
    assert await asyncio.wait_for(receiver.closed, 10) is None


def test_answers_join_one_frame_that_is_whole_after_every_item() -> None:
    w = FrameWriter()
    parser = parent_parser()
    seen: list[Any] = []
    for i in range(5):
        w.add_item(Result(i, FMT_TUPLE, [i], [], 1.0, 0.5), ANSWERS_HEAD)
        out = w.pending()
        assert out is not None
        (n,) = HEADER.unpack_from(out, 0)
        assert n == len(out) - 4  # one frame, whole: the length kept up to date
        seen = [m.id for m in parent_parser().feed(bytes(out))[0].items]  # type: ignore[attr-defined]
        assert seen == list(range(i + 1))
    w.add(Started(9, 2.0))  # any other frame closes the batch: later answers go in a new one
    w.add_item(Error(10, ERR_RAISED, "builtins", "ValueError", "x", "", None, 3.0), ANSWERS_HEAD)
    msgs = parser.feed(b"".join(bytes(c) for c in w.take()))
    assert [type(m).__name__ for m in msgs] == ["Answers", "Started", "Answers"]
    assert [a.id for a in msgs[0].items] == [0, 1, 2, 3, 4]  # type: ignore[attr-defined]
    assert [a.id for a in msgs[2].items] == [10]  # type: ignore[attr-defined]


def test_answers_over_the_limit_open_a_new_frame_and_one_alone_over_it_is_refused() -> None:
    limit = 2**16
    w = FrameWriter(max_message=limit)
    big = "x" * 30_000
    for i in range(3):  # two fit in one frame, the third opens the next
        w.add_item(Result(i, FMT_TUPLE, [big], [], 1.0, 0.5), ANSWERS_HEAD)
    msgs = parent_parser(max_message=limit).feed(b"".join(bytes(c) for c in w.take()))
    assert [[a.id for a in m.items] for m in msgs] == [[0, 1], [2]]  # type: ignore[attr-defined]
    with pytest.raises(SerializationError, match="over the limit"):
        w.add_item(Result(3, FMT_TUPLE, ["y" * limit], [], 1.0, 0.5), ANSWERS_HEAD)
    assert len(w) == 0  # left unchanged
