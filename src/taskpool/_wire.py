"""The wire protocol between the pool (parent) and a process worker (child).

Messages travel as frames (:mod:`taskpool._frames`: a length-prefixed msgpack message,
optionally followed by raw segments). This module says what the messages are, how
values and functions travel in them, and how a worker's exception is rebuilt.

Payloads (arguments, results, published data) are ``(fmt, data, bufs)``::

    fmt = FMT_VALUE    data = the value itself (plain msgpack data)
    fmt = FMT_TUPLE    data = a msgpack array that was a tuple (always for args)
    fmt = FMT_PICKLE   data = pickle-5 stream (bytes), or None when the stream is segment
                       0; the remaining segments are its out-of-band buffers
                       (``pickle.loads(stream, buffers=...)``)

Messages form two tagged unions (integer tags, so a message in the wrong direction fails
to decode)::

    parent                                           child
      |  <------------- Hello(pid, python, uvloop) ---  |  handshake, once
      |  <---------------- Ready() | InitFailed(why) ---  |  after the initializer (if any)
      |  --- Call(id, fn, args [, define, drop]) ----->  |  queued, run in arrival order
      |  --- Call(id2, ...) -------------------------->  |  (the parent pipelines a window)
      |  <-------------------------- Loading(id, at) ---  |  loading its function (first call)
      |  <-------------------------- Started(id, at) ---  |  when it begins
      |  <---------- Publish(task_id, topic, data) ---  |  taskpool.publish() in the task
      |  <--------- Result(id, value, at) | Error(id) ---  |  when it ends
      |  --- Cancel(id) ------------------------------>  |  -> Error(id, kind=CANCELLED)
      |  --- Shutdown() ------------------------------>  |  finish the running call, exit 0
      |  (socket closed) ----------------------------->  |  EOF: the child exits at once

``at`` is the child's ``time.time()`` when the worker began loading the call's function
(``Loading``), when the call began (``Started``: its arguments are loaded next, then the
function is called) and when it ended (``Result``, ``Error``): a call's run time leaves
out the import of its function, a cost of the worker, not of the call. ``Loading`` comes
only when the worker does not hold the function yet: loading runs user code (an import,
an unpickling) that may kill the worker, and the call then counts as begun, so a worker
that dies there fails it instead of passing it on to die again. New fields are only ever
added last, with a default, so an array-encoded message from an older peer still decodes.

Functions travel once per worker (:mod:`taskpool._functions`: by reference or by value);
later calls carry only a small integer id. Plain arguments and results (None, bool, int,
float, str, small bytes, lists, dicts with str keys, a top-level tuple) travel as msgpack,
anything else as pickle protocol 5 with buffers of :data:`~taskpool._frames.LARGE` bytes
or more out of band (``PickleBuffer`` objects anywhere, and top-level ``bytes``,
``bytearray`` and ``memoryview`` values), sent straight from the caller's memory. On the
receiving side a ``bytearray``, ``memoryview`` or ``PickleBuffer``-backed value (a numpy
array) *is* its segment, with no copy; a ``bytes`` value is copied once out of its
segment, which then serves a later segment (warm memory: :mod:`taskpool._memory`).

Decoding in the parent never lets an exception escape as itself: whatever unpickling
raises, even a ``SystemExit`` from a ``__setstate__``, becomes a :class:`SerializationError`
(or a :class:`TaskFailed` for an exception that cannot be rebuilt).
"""

from __future__ import annotations

import pickle
from typing import Any, ClassVar, Final, TypeAlias

import msgspec

from taskpool import _memory
from taskpool._channel import FrameProtocol
from taskpool._errors import RemoteTraceback, SerializationError, TaskCancelled, TaskFailed
from taskpool._frames import LARGE, NO_LIMIT, Buffer, FrameParser, Message, WireError
from taskpool._functions import (
    FnDef,
    FnRef,
    FnValue,
    FunctionTable,
    define_function,
    is_async_callable,
    load_function,
)
from taskpool._mppickle import dumps, wrap

__all__ = [
    "ERR_CANCELLED",
    "ERR_LOAD",
    "LOAD_NOTE",
    "ERR_RAISED",
    "ERR_UNSENDABLE",
    "FMT_PICKLE",
    "FMT_TUPLE",
    "FMT_VALUE",
    "PROTOCOL_VERSION",
    "ANSWERS_HEAD",
    "Answers",
    "Call",
    "Calls",
    "Cancel",
    "Error",
    "Hello",
    "InitFailed",
    "Loading",
    "Publish",
    "Ready",
    "Result",
    "Shutdown",
    "Started",
    "ToChild",
    "TracedCall",
    "ToParent",
    "child_parser",
    "dump_args",
    "dump_payload",
    "dump_value",
    "is_async_callable",
    "load_payload",
    "load_published",
    "load_result",
    "parent_parser",
    "rebuild_exception",
    # Re-exported for code that reaches them through _wire: the frame codec
    # (taskpool._frames) and how functions travel (taskpool._functions).
    "FrameProtocol",
    "WireError",
    "FnDef",
    "FnRef",
    "FnValue",
    "FunctionTable",
    "define_function",
    "load_function",
]

PROTOCOL_VERSION: Final = 2

FMT_VALUE: Final = 0
FMT_TUPLE: Final = 1
FMT_PICKLE: Final = 2

#: ``Error.kind``: the task raised (``pickled`` holds the exception when it pickles).
ERR_RAISED: Final = 0
#: The result could not be serialised in the worker: the parent raises SerializationError
#: (``pickled`` holds the exception serialising raised, when it pickles).
ERR_UNSENDABLE: Final = 1
#: The call was cancelled in the worker (``Cancel``, or dropped by ``Shutdown``).
ERR_CANCELLED: Final = 2
#: The worker could not load the function or the arguments (import/unpickle failed).
ERR_LOAD: Final = 3
#: The note on an exception the worker raised while loading a call, before it ran.
LOAD_NOTE: Final = "raised in the worker while loading the call (its function or arguments), before it ran"

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
_PLAIN_BUDGET: Final = 1000  # nodes walked before giving up on msgpack (pickle is faster)


# --------------------------------------------------------------------------- messages


class Call(Message, tag=1):
    """Run function ``fn`` (an id in the worker's function table) with the args payload.

    ``define`` carries the function the first time this worker sees ``fn`` (``fn == 0``:
    a one-off, not remembered); ``drop`` lists ids the worker may forget. ``report``:
    announce the start with ``Started`` before running it (the pool runs start callbacks,
    a timeout or ``task.started`` subscribers for it); otherwise the start of a sync call
    is told by its answer's ``started`` and, meanwhile, by the shared
    :class:`~taskpool._control.ControlBlock`.
    """

    segmented: ClassVar[bool] = True

    id: int
    fn: int
    fmt: int
    data: Any
    bufs: list[Any] = msgspec.field(default_factory=list)
    define: FnDef | None = None
    drop: list[int] = msgspec.field(default_factory=list)
    report: bool = False


class TracedCall(Call, tag=5):
    """A Call run in the W3C trace context ``trace`` (taskpool.otel): untraced frames stay as they were."""

    trace: dict[str, str] = msgspec.field(default_factory=dict)


class Calls(Message, tag=4):
    """Several calls in one frame (none with out-of-band segments), in the order sent."""

    calls: list[Call | TracedCall]


class Cancel(Message, tag=2):
    """Cancel call ``id``: dropped if queued, its task cancelled if it is running async.

    With ``queued_only`` the call is only dropped if it has not started (the parent takes
    it back to run it on an idle worker); a running call is left alone.
    """

    id: int
    queued_only: bool = False


class Shutdown(Message, tag=3):
    """Finish the running call, cancel the queued ones, and exit 0."""


class Hello(Message, tag=20):
    """First frame from a child: it is up and serving."""

    pid: int
    python: str
    uvloop: bool
    protocol: int = PROTOCOL_VERSION


class Started(Message, tag=21):
    """Call ``id`` began at ``at`` (the worker's ``time.time()``), its function loaded."""

    id: int
    at: float = 0.0


class Loading(Message, tag=25):
    """Call ``id`` began at ``at`` by loading its function (an import or an unpickling:
    user code); ``Started`` follows, or ``Error(kind=ERR_LOAD)`` when loading fails."""

    id: int
    at: float = 0.0


class Result(Message, tag=22):
    """Call ``id`` returned at ``at``; the value is the payload (``fmt``, ``data``, ``bufs``).

    ``started``: when it began (0.0 when a ``Started`` told it already).
    """

    segmented: ClassVar[bool] = True

    id: int
    fmt: int
    data: Any
    bufs: list[Any] = msgspec.field(default_factory=list)
    at: float = 0.0
    started: float = 0.0


class Error(Message, tag=23):
    """Call ``id`` failed at ``at``; ``kind`` is one of the ``ERR_*`` constants.

    ``pickled`` is the pickled exception when it could be pickled (rebuild it with
    :func:`rebuild_exception`): the one the call raised, or for ``ERR_UNSENDABLE`` the
    one serialising its result raised. ``traceback`` is the worker's formatted traceback
    of that exception; ``type_module``, ``type_qualname`` and ``message`` describe the
    exception the parent should raise. ``started``: when the call began (0.0 when it
    did not, or a ``Started`` told it already).
    """

    id: int
    kind: int
    type_module: str
    type_qualname: str
    message: str
    traceback: str
    pickled: bytes | None = None
    at: float = 0.0
    started: float = 0.0


class Publish(Message, tag=24):
    """``taskpool.publish(topic, data)`` from inside call ``task_id`` (None: outside)."""

    segmented: ClassVar[bool] = True

    task_id: int | None
    topic: str
    fmt: int
    data: Any
    bufs: list[Any] = msgspec.field(default_factory=list)


class Answers(Message, tag=26):
    """Several answers (``Result`` without segments, ``Error``) in one frame, in order.

    Written item by item (:meth:`~taskpool._frames.FrameWriter.add_item` with
    :data:`ANSWERS_HEAD`): the frame is whole after every item.
    """

    items: list[Result | Error]


class Ready(Message, tag=27):
    """The worker's initializer returned: it takes calls now (sent only when it has one)."""


class InitFailed(Message, tag=28):
    """The worker's initializer raised ``reason`` (``"Type: message"``); the worker exits."""

    reason: str


#: How an ``Answers`` message starts on the wire: a 2-element array, the tag, then an
#: array32 header whose count FrameWriter.add_item keeps up to date.
ANSWERS_HEAD: Final = b"\x92\x1a\xdd"

ToChild: TypeAlias = Call | TracedCall | Calls | Cancel | Shutdown
ToParent: TypeAlias = Hello | Loading | Started | Result | Error | Publish | Answers | Ready | InitFailed


def child_parser(*, max_message: int = NO_LIMIT) -> FrameParser[ToChild]:
    """A parser for the parent-to-child direction (used by the worker, which trusts its
    parent: no practical bound by default). Raises ValueError when ``max_message`` < 1."""
    return FrameParser(msgspec.msgpack.Decoder(ToChild), max_message=max_message)


def parent_parser(*, max_message: int = NO_LIMIT) -> FrameParser[ToParent]:
    """A parser for the child-to-parent direction (used by the pool, with the pool's
    ``max_message_size``). Raises ValueError when ``max_message`` < 1."""
    return FrameParser(msgspec.msgpack.Decoder(ToParent), max_message=max_message)


# --------------------------------------------------------------------------- payloads


def _plain(x: object, budget: int) -> int:
    """Remaining budget if ``x`` survives a msgpack round trip unchanged, else -1."""
    t = type(x)
    if t is str or t is float or t is bool or x is None:
        return budget - 1
    if t is int:
        return budget - 1 if _INT_MIN <= x <= _INT_MAX else -1  # type: ignore[operator]
    if t is list:
        budget -= 1
        for item in x:  # type: ignore[attr-defined]
            budget = _plain(item, budget)
            if budget < 0:
                return -1
        return budget
    if t is dict:
        budget -= 1
        for k, v in x.items():  # type: ignore[attr-defined]
            if type(k) is not str:
                return -1
            budget = _plain(v, budget - 1)
            if budget < 0:
                return -1
        return budget
    if t is bytes:
        return budget - 1 if len(x) < LARGE else -1  # type: ignore[arg-type]
    return -1


def _plain_tuple(t: tuple[Any, ...]) -> bool:
    budget = _PLAIN_BUDGET
    try:
        for item in t:
            budget = _plain(item, budget)
            if budget < 0:
                return False
    except RecursionError:
        return False
    return True


def _pickle(obj: Any, *, for_child: bool) -> tuple[bytes, list[Buffer]]:
    """Pickle (see :func:`taskpool._mppickle.dumps`); with ``for_child``, a stream that
    names ``__main__`` is made again by cloudpickle (the child cannot import it)."""
    bufs: list[Buffer] = []
    return dumps(obj, bufs=bufs, main_by_value=for_child), bufs


def _describe(exc: BaseException) -> str:
    if type(exc) is SerializationError:  # ours (see taskpool._mp): it says what cannot cross
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _pickled_payload(obj: Any, *, for_child: bool) -> tuple[int, Any, list[Buffer]]:
    stream, bufs = _pickle(obj, for_child=for_child)
    if bufs and max(memoryview(b).nbytes for b in bufs) >= _memory.RECYCLE_MIN:
        _memory.large_buffer()  # a worker tunes malloc when large buffers start to flow
    if len(stream) >= LARGE:
        return FMT_PICKLE, None, [stream, *bufs]
    return FMT_PICKLE, stream, bufs


def dump_value(value: Any, *, for_child: bool = False) -> tuple[int, Any, list[Buffer]]:
    """Serialise one value (a result, published data) as ``(fmt, data, bufs)``.

    Raises the underlying exception (pickling error, TypeError, ...) when it cannot be
    serialised; the caller names the part in its SerializationError.
    """
    if type(value) is tuple:
        if _plain_tuple(value):
            return FMT_TUPLE, value, []
        return _pickled_payload(tuple(map(wrap, value)), for_child=for_child)
    try:
        if _plain(value, _PLAIN_BUDGET) >= 0:
            return FMT_VALUE, value, []
    except RecursionError:
        pass
    return _pickled_payload(wrap(value), for_child=for_child)


def dump_payload(value: Any, what: str, *, for_child: bool = False) -> tuple[int, Any, list[Buffer]]:
    """:func:`dump_value`, raising SerializationError("cannot send {what}: ...")."""
    try:
        return dump_value(value, for_child=for_child)
    except Exception as exc:
        raise SerializationError(f"cannot send {what} ({_type_name(value)}): {_describe(exc)}") from exc


def dump_args(args: tuple[Any, ...], fn_name: str = "the function") -> tuple[int, Any, list[Buffer]]:
    """Serialise an argument tuple as ``(fmt, data, bufs)`` (parent side).

    Raises SerializationError naming the first argument that cannot be sent, by
    position (``args[1]``), its type and why.
    """
    if _plain_tuple(args):
        return FMT_TUPLE, args, []
    try:
        return _pickled_payload(tuple(map(wrap, args)), for_child=True)
    except Exception as exc:
        culprit = _find_unpicklable(args)
        if culprit is None:
            raise SerializationError(f"cannot send the arguments of {fn_name}: {_describe(exc)}") from exc
        i, err = culprit
        raise SerializationError(
            f"cannot send argument args[{i}] ({_type_name(args[i])}) of {fn_name}: {_describe(err)}"
        ) from err


def _find_unpicklable(args: tuple[Any, ...]) -> tuple[int, BaseException] | None:
    for i, a in enumerate(args):
        try:
            _pickle(wrap(a), for_child=True)
        except Exception as exc:
            return i, exc
    return None


def _type_name(x: object) -> str:
    """The qualified name of ``x``'s type, without ``builtins.`` (for error messages)."""
    t = type(x)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def load_payload(fmt: int, data: Any, bufs: list[Any]) -> Any:
    """Rebuild a value from ``(fmt, data, bufs)`` as parsed by :class:`FrameParser`.

    Raises whatever unpickling raises (the caller decides what that means)."""
    if fmt == FMT_TUPLE:
        return tuple(data)
    if fmt == FMT_VALUE:
        return data
    if fmt == FMT_PICKLE:
        if data is None:
            return pickle.loads(bufs[0], buffers=bufs[1:])  # noqa: S301 - our own peer
        return pickle.loads(data, buffers=bufs)  # noqa: S301 - our own peer
    raise WireError(f"unknown payload format {fmt}")


def load_result(msg: Result) -> Any:
    """The value of a :class:`Result` (parent side).

    Raises:
        SerializationError: it cannot be rebuilt here, whatever unpickling raised (even a
            ``SystemExit`` or ``KeyboardInterrupt`` from a ``__setstate__``: that is the
            task's failure, not the pool's); the message names the exception.
    """
    try:
        return load_payload(msg.fmt, msg.data, msg.bufs)
    except BaseException as exc:
        raise SerializationError(f"cannot receive the result from the worker: {_describe(exc)}") from exc


def load_published(msg: Publish) -> Any:
    """The data of a :class:`Publish` (parent side).

    Raises:
        SerializationError: it cannot be rebuilt here, whatever unpickling raised (as
            :func:`load_result`); the message names the topic and the exception.
    """
    try:
        return load_payload(msg.fmt, msg.data, msg.bufs)
    except BaseException as exc:
        raise SerializationError(
            f"cannot receive the data published on {msg.topic!r} from the worker: {_describe(exc)}"
        ) from exc


# --------------------------------------------------------------------------- errors


def rebuild_exception(err: Error) -> BaseException:
    """The parent-side exception for an :class:`Error`, with the worker's formatted
    traceback as a :class:`RemoteTraceback` ``__cause__``.

    - ``ERR_CANCELLED``: :class:`TaskCancelled`.
    - ``ERR_UNSENDABLE``: :class:`SerializationError` (the result could not be sent); its
      ``__cause__`` is the exception serialising raised, rebuilt (with the remote
      traceback as *its* cause) when it unpickles here, else the remote traceback.
    - ``ERR_LOAD`` (the worker could not load the call: its function or arguments): as
      below, with :data:`LOAD_NOTE` added to the exception's notes.
    - otherwise the original exception when it unpickles here and is an ``Exception``
      (a ``SystemExit`` or ``KeyboardInterrupt`` raised by a task must not stop the
      pool), else :class:`TaskFailed` with the type name, message and traceback.

    Never raises: whatever unpickling raises (even ``SystemExit``) counts as "does not
    unpickle".
    """
    remote = RemoteTraceback(err.traceback) if err.traceback else None
    exc: BaseException | None = None
    if err.kind == ERR_CANCELLED:
        exc = TaskCancelled(err.message or "cancelled in the worker")
    elif err.kind == ERR_UNSENDABLE:
        exc = SerializationError(err.message)
        original = _unpickle_exception(err.pickled)
        if original is not None:
            original.__cause__ = remote
            exc.__cause__ = original
            return exc
    else:
        original = _unpickle_exception(err.pickled)
        if isinstance(original, Exception):
            exc = original
    if exc is None:
        name = err.type_qualname if err.type_module == "builtins" else f"{err.type_module}.{err.type_qualname}"
        exc = TaskFailed(name, err.message, err.traceback)
    if err.kind == ERR_LOAD:
        exc.add_note(LOAD_NOTE)  # (the executors tell a call the worker could not load by it)
    if remote is not None:
        exc.__cause__ = remote
    return exc


def _unpickle_exception(data: bytes | None) -> BaseException | None:
    """The exception pickled in ``data``, or None when there is none or it cannot be
    rebuilt (whatever unpickling raised, even SystemExit: never let it escape)."""
    if data is None:
        return None
    try:
        obj = pickle.loads(data)  # noqa: S301 - our own worker
    except BaseException:
        return None
    return obj if isinstance(obj, BaseException) else None
