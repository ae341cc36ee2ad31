"""The wire protocol between the pool (parent) and a process worker (child).

One stream socket (a ``socket.socketpair()``, one end inherited by the child) carries
*frames* in both directions. A frame is a msgspec **msgpack** message behind a 4-byte
little-endian length, optionally followed by raw *segments* (out-of-band buffers) whose
lengths the message itself lists in its ``bufs`` field::

    frame     +-----------+---------------------------+-----------+-----------+
              | u32 LE  n | msgpack message (n bytes) | segment 0 | segment 1 | ...
              +-----------+---------------------------+-----------+-----------+
    message   [tag, field, field, ..., bufs=[len0, len1, ...], ...]  (array_like Struct)

    payload   fmt = FMT_VALUE   data = the value itself (plain msgpack data)
    (args,    fmt = FMT_TUPLE   data = a msgpack array that was a tuple (always for args)
    results,  fmt = FMT_PICKLE  data = pickle-5 stream (bytes), or None when the stream
    events)                     is segment 0; the remaining segments are its out-of-band
                                buffers (``pickle.loads(stream, buffers=...)``)

Messages form two tagged unions (integer tags, so a message in the wrong direction fails
to decode)::

    parent                                          child
      |  <------------- Hello(pid, python, uvloop) ---  |  handshake, once
      |  --- Call(id, fn, args [, define, drop]) ----->  |  queued, run in arrival order
      |  --- Call(id2, ...) -------------------------->  |  (the parent pipelines a window)
      |  <------------------------------ Started(id) ---  |  when it begins
      |  <---------- Publish(task_id, topic, data) ---  |  taskpool.publish() in the task
      |  <------------- Result(id, value) | Error(id) ---  |  when it ends
      |  --- Cancel(id) ------------------------------>  |  -> Error(id, kind=CANCELLED)
      |  --- Shutdown() ------------------------------>  |  finish the running call, exit 0
      |  (socket closed) ----------------------------->  |  EOF: the child exits at once

Functions travel once per worker: the parent gives every distinct function a small integer
``fn`` id (:class:`FunctionTable`); the first :class:`Call` for an id carries its
``define`` (:class:`FnRef` = module + qualname when looking that up gives back the very
same object, else :class:`FnValue` = cloudpickle bytes); later calls carry only the id.
Each worker remembers at most ``capacity`` ids; the parent evicts least recently used ones
and tells the child in ``Call.drop``, so the two sides never disagree.

Plain arguments and results (None/bool/int/float/str, small bytes, lists, dicts with
str keys, at the top level a tuple) travel as msgpack; anything else as pickle protocol 5
with buffers of 64 KiB or more out of band: ``PickleBuffer`` objects anywhere (what numpy
arrays and the like produce), and top-level ``bytes``, ``bytearray`` and ``memoryview``
arguments and results (pickle itself keeps those in-band). Out-of-band buffers are
written to the socket straight from the caller's memory and read into a ``bytearray`` of
their own, straight from the kernel with :class:`FrameProtocol`; only ``bytes`` then cost
one more copy (a ``bytes`` object cannot be filled in place).
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import itertools
import pickle
import struct
import sys
import types
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, Final, Generic, TypeAlias, TypeVar, cast

import msgspec

from taskpool._errors import (
    RemoteTraceback,
    SerializationError,
    TaskCancelled,
    TaskFailed,
)

__all__ = [
    "ERR_CANCELLED",
    "ERR_LOAD",
    "ERR_RAISED",
    "ERR_UNSENDABLE",
    "FMT_PICKLE",
    "FMT_TUPLE",
    "FMT_VALUE",
    "LARGE",
    "PROTOCOL_VERSION",
    "Call",
    "Cancel",
    "Error",
    "FnRef",
    "FnValue",
    "FrameParser",
    "FrameProtocol",
    "FrameWriter",
    "FunctionTable",
    "Hello",
    "Publish",
    "Result",
    "Shutdown",
    "Started",
    "ToChild",
    "ToParent",
    "WireError",
    "child_parser",
    "dump_args",
    "dump_payload",
    "define_function",
    "dump_value",
    "encode_frame",
    "load_function",
    "load_payload",
    "load_result",
    "parent_parser",
    "rebuild_exception",
]

PROTOCOL_VERSION: Final = 1
#: Buffers this large or larger travel out of band; smaller ones are copied in-band,
#: where an extra segment would cost more than the copy.
LARGE: Final = 64 * 1024
MAX_FRAME: Final = 2**32 - 1

FMT_VALUE: Final = 0
FMT_TUPLE: Final = 1
FMT_PICKLE: Final = 2

#: ``Error.kind``: the task raised (``pickled`` holds the exception when it pickles).
ERR_RAISED: Final = 0
#: The result could not be serialised in the worker: the parent raises SerializationError.
ERR_UNSENDABLE: Final = 1
#: The call was cancelled in the worker (``Cancel``, or dropped by ``Shutdown``).
ERR_CANCELLED: Final = 2
#: The worker could not load the function or the arguments (import/unpickle failed).
ERR_LOAD: Final = 3

Buffer: TypeAlias = bytes | bytearray | memoryview
_HEADER = struct.Struct("<I")
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
_PLAIN_BUDGET: Final = 1000  # nodes walked before giving up on msgpack (pickle is faster)


class WireError(Exception):
    """The byte stream broke the protocol (bad length, undecodable frame): the channel
    cannot be trusted any more and should be closed."""


# --------------------------------------------------------------------------- messages
# array_like: encoded as [tag, field, ...]; gc=False: messages never form cycles.


class _Msg(msgspec.Struct, array_like=True, gc=False):
    pass


class FnRef(_Msg, tag=100):
    """A function by reference: ``import module`` then follow ``qualname``."""

    module: str
    qualname: str


class FnValue(_Msg, tag=101):
    """A function by value: cloudpickle bytes (lambdas, closures, ``__main__``)."""

    pickle: bytes


FnDef: TypeAlias = FnRef | FnValue


class Call(_Msg, tag=1):
    """Run function ``fn`` (an id in the worker's function table) with the args payload.

    ``define`` carries the function the first time this worker sees ``fn`` (``fn == 0``:
    a one-off, not remembered); ``drop`` lists ids the worker may forget.
    """

    id: int
    fn: int
    fmt: int
    data: Any
    bufs: list[Any] = []
    define: FnDef | None = None
    drop: list[int] = []


class Cancel(_Msg, tag=2):
    """Cancel call ``id``: dropped if queued, its task cancelled if it is running async.

    With ``queued_only`` the call is only dropped if it has not started (the parent takes
    it back to run it on an idle worker); a running call is left alone.
    """

    id: int
    queued_only: bool = False


class Shutdown(_Msg, tag=3):
    """Finish the running call, cancel the queued ones, and exit 0."""


class Hello(_Msg, tag=20):
    """First frame from a child: it is up and serving."""

    pid: int
    python: str
    uvloop: bool
    protocol: int = PROTOCOL_VERSION


class Started(_Msg, tag=21):
    """Call ``id`` began running in the worker."""

    id: int


class Result(_Msg, tag=22):
    """Call ``id`` returned; the value is the payload (``fmt``, ``data``, ``bufs``)."""

    id: int
    fmt: int
    data: Any
    bufs: list[Any] = []


class Error(_Msg, tag=23):
    """Call ``id`` failed; ``kind`` is one of the ``ERR_*`` constants.

    ``pickled`` is the pickled exception when it could be pickled (rebuild it with
    :func:`rebuild_exception`); ``traceback`` is the worker's formatted traceback.
    """

    id: int
    kind: int
    type_module: str
    type_qualname: str
    message: str
    traceback: str
    pickled: bytes | None = None


class Publish(_Msg, tag=24):
    """``taskpool.publish(topic, data)`` from inside call ``task_id`` (None: outside)."""

    task_id: int | None
    topic: str
    fmt: int
    data: Any
    bufs: list[Any] = []


ToChild: TypeAlias = Call | Cancel | Shutdown
ToParent: TypeAlias = Hello | Started | Result | Error | Publish
#: Message types followed by segments (their ``bufs`` field).
_SEGMENTED: Final = frozenset({Call, Result, Publish})

M = TypeVar("M")


# --------------------------------------------------------------------------- frames


class FrameWriter:
    """Encodes messages into as few buffers as possible, ready for one gathered write.

    Small frames are appended back to back into one ``bytearray`` (``encode_into``, no
    intermediate ``bytes``); an out-of-band segment of :data:`LARGE` bytes or more is
    kept as a view of the caller's memory and never copied.
    """

    __slots__ = ("_chunks", "_encoder", "_out", "_size")

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._out = bytearray()
        self._chunks: list[Buffer] = []
        self._size = 0

    def __len__(self) -> int:
        """Bytes waiting in :meth:`take`."""
        return self._size + len(self._out)

    def add(self, msg: _Msg) -> None:
        """Append one frame. In a segmented message, ``msg.bufs`` holds the buffers
        themselves (bytes-like objects); they go on the wire as their lengths plus
        trailing segments. Raises SerializationError when the message cannot be encoded
        (the writer is left unchanged)."""
        out = self._out
        start = len(out)
        out += b"\0\0\0\0"
        bufs: list[Any] | None = getattr(msg, "bufs", None) if type(msg) in _SEGMENTED else None
        views: list[memoryview] = []
        try:
            if bufs:
                views = [_flat(b) for b in bufs]
                msg.bufs = [v.nbytes for v in views]  # type: ignore[attr-defined]
                try:
                    self._encoder.encode_into(msg, out, -1)
                finally:
                    msg.bufs = bufs  # type: ignore[attr-defined]
            else:
                self._encoder.encode_into(msg, out, -1)
        except SerializationError:
            del out[start:]
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            del out[start:]
            raise SerializationError(f"cannot encode {type(msg).__name__}: {exc}") from exc
        n = len(out) - start - 4
        if n > MAX_FRAME:
            del out[start:]
            raise SerializationError(f"a {type(msg).__name__} frame of {n} bytes is too large")
        _HEADER.pack_into(out, start, n)
        for v in views:
            if v.nbytes < LARGE:
                out += v
            else:
                # Zero-copy: the segment goes to the transport as a view of the caller's
                # buffer; the frame so far is closed off as its own chunk.
                self._size += len(out) + v.nbytes
                self._chunks.append(out)
                self._chunks.append(v)
                out = self._out = bytearray()

    def take(self) -> list[Buffer]:
        """Return every pending buffer, in order, and start afresh (the caller owns them:
        they are never reused, so a transport may keep references)."""
        chunks = self._chunks
        if self._out:
            chunks.append(self._out)
            self._out = bytearray()
        self._chunks = []
        self._size = 0
        return chunks


def _flat(b: Any) -> memoryview:
    """A 1-D unsigned-byte view of any C-contiguous buffer (raises TypeError else)."""
    v = b if type(b) is memoryview else memoryview(b)
    if v.ndim != 1 or v.format != "B":
        if not v.c_contiguous:
            raise SerializationError("cannot send a non-contiguous buffer out of band")
        v = v.cast("B")
    return v


def encode_frame(msg: _Msg) -> list[Buffer]:
    """Encode one message as the list of buffers of its frame (convenience for tests
    and one-off writes; batch with a :class:`FrameWriter` in hot paths)."""
    w = FrameWriter()
    w.add(msg)
    return w.take()


class FrameParser(Generic[M]):
    """Incremental frame parser: bytes in, decoded messages out.

    Usable from ``Protocol.data_received`` (:meth:`feed`) or, without the intermediate
    ``bytes`` objects, from an ``asyncio.BufferedProtocol`` (:meth:`get_buffer` /
    :meth:`buffer_updated`). Frames are decoded in place from one receive buffer, so many
    frames per chunk cost no copies and a frame split over many chunks is never rescanned.
    Segments get a ``bytearray`` of their own, read straight from the socket when large.
    A segmented message is returned once all its segments arrived, with ``msg.bufs``
    replaced by those ``bytearray`` objects.

    Raises :class:`WireError` on a malformed stream.
    """

    __slots__ = (
        "_buf",
        "_bufsize",
        "_decoder",
        "_direct",
        "_end",
        "_fill",
        "_msg",
        "_need",
        "_seg",
        "_segs",
        "_sizes",
        "_start",
    )

    _MIN_FREE: Final = 16 * 1024

    def __init__(self, decoder: msgspec.msgpack.Decoder[M], *, bufsize: int = 256 * 1024) -> None:
        self._decoder = decoder
        self._bufsize = bufsize
        self._buf = bytearray(bufsize)
        self._start = 0
        self._end = 0
        self._need = 0  # full length of the frame being assembled at _start (0: unknown)
        self._msg: Any = None  # message waiting for its segments
        self._sizes: list[int] = []
        self._segs: list[bytearray] = []
        self._seg: bytearray | None = None
        self._fill = 0
        self._direct = False

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as messages."""
        return self._end - self._start + (self._fill if self._seg is not None else 0)

    def feed(self, data: Buffer) -> list[M]:
        """Consume a chunk of the stream; return the messages it completed."""
        out: list[M] = []
        with memoryview(data) as mv:
            pos, n = 0, mv.nbytes
            while pos < n:
                dst = self.get_buffer(n - pos)
                k = min(len(dst), n - pos)
                dst[:k] = mv[pos : pos + k]
                dst.release()
                pos += k
                out.extend(self.buffer_updated(k))
        return out

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next bytes of the stream should be written (``BufferedProtocol``)."""
        seg = self._seg
        if seg is not None and len(seg) - self._fill >= LARGE:
            # The receive buffer is empty whenever a segment is open (see _parse): let
            # the kernel write into the segment directly.
            self._direct = True
            return memoryview(seg)[self._fill :]
        self._direct = False
        buf, start, end = self._buf, self._start, self._end
        pending = end - start
        if pending == 0 and start:
            self._start = self._end = start = end = 0
            if len(buf) > self._bufsize and not self._need:
                buf = self._buf = bytearray(self._bufsize)  # a huge frame passed: shrink
        required = max(self._need, pending + self._MIN_FREE)
        if len(buf) - start < required:
            if len(buf) >= required:
                buf[:pending] = buf[start:end]  # compact: only a partial frame moves
            else:
                new = bytearray(max(required, self._bufsize))
                new[:pending] = buf[start:end]
                self._buf = buf = new
            self._start, self._end = 0, pending
            end = pending
        return memoryview(buf)[end:]

    def buffer_updated(self, nbytes: int) -> list[M]:
        """``nbytes`` were written into the last :meth:`get_buffer`; return new messages."""
        if self._direct:
            self._direct = False
            self._fill += nbytes
            out: list[M] = []
            if self._seg is not None and self._fill == len(self._seg):
                self._next_segment(out)
            return out
        self._end += nbytes
        return self._parse()

    def _parse(self) -> list[M]:
        out: list[M] = []
        buf, start, end = self._buf, self._start, self._end
        decode = self._decoder.decode
        unpack = _HEADER.unpack_from
        with memoryview(buf) as mv:
            while True:
                seg = self._seg
                if seg is not None:
                    take = min(end - start, len(seg) - self._fill)
                    if take:
                        seg[self._fill : self._fill + take] = mv[start : start + take]
                        self._fill += take
                        start += take
                    if self._fill < len(seg):
                        self._need = 0
                        break  # everything received went into the segment
                    self._next_segment(out)
                    continue
                avail = end - start
                if avail < 4:
                    self._need = 0
                    break
                (n,) = unpack(buf, start)
                if avail - 4 < n:
                    self._need = 4 + n
                    break
                try:
                    msg = decode(mv[start + 4 : start + 4 + n])
                except msgspec.MsgspecError as exc:
                    raise WireError(f"undecodable frame ({n} bytes): {exc}") from exc
                start += 4 + n
                if type(msg) in _SEGMENTED and msg.bufs:  # type: ignore[comparison-overlap, attr-defined]
                    self._open_segments(msg)
                else:
                    out.append(msg)
        self._start = start
        return out

    def _open_segments(self, msg: Any) -> None:
        sizes = msg.bufs
        if not all(type(s) is int and 0 <= s < 2**48 for s in sizes):
            raise WireError(f"bad segment lengths in {type(msg).__name__}: {sizes!r}")
        self._msg, self._sizes, self._segs = msg, sizes, []
        self._seg, self._fill = bytearray(sizes[0]), 0

    def _next_segment(self, out: list[M]) -> None:
        assert self._seg is not None
        self._segs.append(self._seg)
        i = len(self._segs)
        if i < len(self._sizes):
            self._seg, self._fill = bytearray(self._sizes[i]), 0
            if self._sizes[i] == 0:
                self._next_segment(out)
            return
        msg = self._msg
        msg.bufs = self._segs
        self._msg, self._seg, self._segs, self._sizes, self._fill = None, None, [], [], 0
        out.append(msg)


def child_parser() -> FrameParser[ToChild]:
    """A parser for the parent-to-child direction (used by the worker)."""
    return FrameParser(msgspec.msgpack.Decoder(ToChild))


def parent_parser() -> FrameParser[ToParent]:
    """A parser for the child-to-parent direction (used by the pool)."""
    return FrameParser(msgspec.msgpack.Decoder(ToParent))


class FrameProtocol(asyncio.BufferedProtocol, Generic[M]):
    """An asyncio protocol speaking frames, for either end of the channel.

    Incoming frames are parsed in place (``BufferedProtocol``: the kernel writes into
    the parser's buffer) and handed to :meth:`message_received` one by one, with no
    awaits. :meth:`send` queues a frame and flushes once at the end of the current loop
    iteration, so a burst of messages becomes one gathered write. ``closed`` resolves
    (with the connection's exception or None) when the connection is lost.

    Subclass and override :meth:`message_received`, or pass ``on_message``.
    """

    _SLICE: ClassVar[int] = 256 * 1024

    def __init__(
        self,
        parser: FrameParser[M],
        on_message: Callable[[M], None] | None = None,
    ) -> None:
        self.parser = parser
        self.writer = FrameWriter()
        self.transport: asyncio.Transport | None = None
        self.on_message = on_message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._gather = False
        self._paused = False
        self._backlog: collections.deque[memoryview] = collections.deque()
        self.closed: asyncio.Future[BaseException | None] | None = None

    # -- receiving
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport; start serving."""
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        # Gathered writes (sendmsg/writev) only where writelines does not concatenate.
        self._gather = sys.version_info >= (3, 12) or type(transport).__module__.startswith("uvloop")

    def get_buffer(self, sizehint: int) -> memoryview:
        """Hand the loop the parser's receive buffer."""
        return self.parser.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        """Parse what arrived and dispatch each complete message."""
        for msg in self.parser.buffer_updated(nbytes):
            self.message_received(msg)

    def message_received(self, msg: M) -> None:
        """Called for every incoming message, in order. Default: ``on_message(msg)``."""
        if self.on_message is not None:
            self.on_message(msg)

    def eof_received(self) -> bool:
        """The peer closed its end: close ours too (returning False)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop pending output; resolve ``closed``."""
        self.transport = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.writer.take()
        self._backlog.clear()
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(exc)

    # -- sending
    def send(self, msg: _Msg) -> None:
        """Queue one frame; it is written at the end of this loop iteration. Raises
        SerializationError when the message cannot be encoded."""
        self.writer.add(msg)
        if self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every queued frame now, in one gathered write where the loop allows."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        chunks = self.writer.take()
        t = self.transport
        if not chunks or t is None or t.is_closing():
            return
        if self._gather:
            # uvloop / 3.12+: writev of the chunks themselves, kept by reference.
            if len(chunks) == 1:
                t.write(chunks[0])
            else:
                t.writelines(chunks)
            return
        if not self._backlog and not self._paused and all(len(c) < LARGE for c in chunks):
            t.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            return
        # Python 3.11 selector transports copy whatever the socket does not take at once
        # into their own buffer (and writelines() joins first): hand large data over in
        # slices, each when the previous one drained, so it is never copied whole.
        self._backlog.extend(c if type(c) is memoryview else memoryview(c) for c in chunks)
        self._drain()

    def pause_writing(self) -> None:
        """The transport's buffer is full: keep the rest in the backlog."""
        self._paused = True

    def resume_writing(self) -> None:
        """The transport's buffer drained: continue with the backlog."""
        self._paused = False
        self._drain()

    def _drain(self) -> None:
        backlog = self._backlog
        while backlog and not self._paused:
            t = self.transport
            if t is None or t.is_closing():
                backlog.clear()
                return
            head = backlog[0]
            if head.nbytes >= LARGE:
                if head.nbytes > self._SLICE:
                    backlog[0] = head[self._SLICE :]
                    head = head[: self._SLICE]
                else:
                    backlog.popleft()
                t.write(head)
                continue
            small: list[memoryview] = []
            while backlog and backlog[0].nbytes < LARGE:
                small.append(backlog.popleft())
            t.write(small[0] if len(small) == 1 else b"".join(small))


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


class _BigBytes:
    """Pickles a top-level ``bytes`` out of band (pickle keeps bytes in-band)."""

    __slots__ = ("b",)

    def __init__(self, b: bytes) -> None:
        self.b = b

    def __reduce_ex__(self, protocol: object) -> tuple[Any, ...]:
        return (bytes, (pickle.PickleBuffer(self.b),))


class _BigByteArray:
    """Pickles a top-level ``bytearray`` out of band (pickle keeps those in-band too)."""

    __slots__ = ("b",)

    def __init__(self, b: bytearray) -> None:
        self.b = b

    def __reduce_ex__(self, protocol: object) -> tuple[Any, ...]:
        return (_rebuild_bytearray, (pickle.PickleBuffer(self.b),))


def _rebuild_bytearray(buf: Any) -> bytearray:
    # The receiver's segment is a fresh bytearray nobody else holds: no copy needed.
    return buf if type(buf) is bytearray else bytearray(buf)


class _View:
    """Pickles a top-level ``memoryview`` (not picklable at all) out of band."""

    __slots__ = ("v",)

    def __init__(self, v: memoryview) -> None:
        self.v = v

    def __reduce_ex__(self, protocol: object) -> tuple[Any, ...]:
        v = self.v
        data: Any = pickle.PickleBuffer(v) if v.c_contiguous else v.tobytes()
        return (_rebuild_view, (data, v.format, v.shape))


def _rebuild_view(buf: Any, fmt: str, shape: tuple[int, ...]) -> memoryview:
    v = memoryview(buf)
    if v.format != "B" or v.ndim != 1:
        v = v.cast("B")
    return v if (fmt == "B" and len(shape) == 1) else v.cast(fmt, shape)  # type: ignore[call-overload]


def _wrap(x: Any) -> Any:
    t = type(x)
    if t is bytes and len(x) >= LARGE:
        return _BigBytes(x)
    if t is bytearray and len(x) >= LARGE:
        return _BigByteArray(x)
    if t is memoryview:
        return _View(x)
    return x


def _pickle(obj: Any, *, for_child: bool) -> tuple[bytes, list[Buffer]]:
    """Pickle (protocol 5, large buffers out of band); cloudpickle when plain pickle
    refuses, or when a stream made in the parent names ``__main__`` (the child cannot
    import the parent's main script, cloudpickle sends such classes by value)."""
    bufs: list[Buffer] = []

    def callback(pb: pickle.PickleBuffer) -> bool:
        try:
            raw = pb.raw()
        except BufferError:
            return True  # non-contiguous: in-band
        if raw.nbytes < LARGE:
            return True
        bufs.append(raw)
        return False

    try:
        stream = pickle.dumps(obj, 5, buffer_callback=callback)
    except Exception:
        stream = None  # e.g. a lambda inside: cloudpickle below
    if stream is not None and not (for_child and b"__main__" in stream):
        return stream, bufs
    bufs.clear()
    import cloudpickle  # ~10 ms to import, rarely needed in the worker

    stream = cloudpickle.dumps(obj, 5, buffer_callback=callback)
    return stream, bufs


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _pickled_payload(obj: Any, *, for_child: bool) -> tuple[int, Any, list[Buffer]]:
    stream, bufs = _pickle(obj, for_child=for_child)
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
        return _pickled_payload(tuple(map(_wrap, value)), for_child=for_child)
    try:
        if _plain(value, _PLAIN_BUDGET) >= 0:
            return FMT_VALUE, value, []
    except RecursionError:
        pass
    return _pickled_payload(_wrap(value), for_child=for_child)


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
        return _pickled_payload(tuple(map(_wrap, args)), for_child=True)
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
            _pickle(_wrap(a), for_child=True)
        except Exception as exc:
            return i, exc
    return None


def _type_name(x: object) -> str:
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
    """The value of a :class:`Result` (parent side). Raises SerializationError when it
    cannot be unpickled in the parent."""
    try:
        return load_payload(msg.fmt, msg.data, msg.bufs)
    except Exception as exc:
        raise SerializationError(f"cannot receive the result from the worker: {_describe(exc)}") from exc


# --------------------------------------------------------------------------- functions


class _Entry:
    __slots__ = ("__weakref__", "define", "fn_id")

    def __init__(self, fn_id: int, define: FnDef) -> None:
        self.fn_id = fn_id
        self.define = define


class FunctionTable:
    """Parent side, one per worker: which functions that worker already holds.

    :meth:`prepare` returns ``(fn_id, define, drop)`` for a :class:`Call`. Definitions are
    computed once per function object for the whole process (cached weakly, so a
    lambda made per task does not pile up); the per-worker part is an LRU of ids.

    Every prepared call must be sent, in the order prepared (the worker's table mirrors
    this one); prepare args first (:func:`dump_args`) so a failure there leaves no trace.
    """

    _ids = itertools.count(1)  # process-wide, never reused; next() is atomic
    _by_fn: ClassVar[weakref.WeakKeyDictionary[Any, _Entry]] = weakref.WeakKeyDictionary()
    _pinned: ClassVar[dict[Any, _Entry]] = {}  # by-reference callables that take no weakref

    def __init__(self, capacity: int = 512) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        self.capacity = capacity
        self._held: collections.OrderedDict[int, None] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    @classmethod
    def _entry(cls, fn: Callable[..., Any]) -> tuple[int, FnDef]:
        try:
            e = cls._by_fn.get(fn)
        except TypeError:  # no weakref or unhashable
            try:
                e = cls._pinned.get(fn)
            except TypeError:
                return 0, define_function(fn)
        if e is not None:
            return e.fn_id, e.define
        d = define_function(fn)
        fn_id = next(cls._ids)
        entry = _Entry(fn_id, d)
        try:
            cls._by_fn[fn] = entry
        except TypeError:
            if not isinstance(d, FnRef):
                return 0, d  # neither weakref-able nor long-lived: a one-off
            cls._pinned[fn] = entry
        return fn_id, d

    def prepare(self, fn: Callable[..., Any]) -> tuple[int, FnDef | None, list[int]]:
        """``(fn_id, define, drop)`` for a Call of ``fn`` to this worker.

        Raises SerializationError when ``fn`` can be sent neither by reference nor by
        value."""
        fn_id, d = self._entry(fn)
        if fn_id == 0:
            return 0, d, []
        held = self._held
        if fn_id in held:
            held.move_to_end(fn_id)
            return fn_id, None, []
        held[fn_id] = None
        drop: list[int] = []
        while len(held) > self.capacity:
            drop.append(held.popitem(last=False)[0])
        return fn_id, d, drop

    def forget(self) -> None:
        """The worker was replaced: it holds nothing."""
        self._held.clear()


def _lookup(module: str, qualname: str) -> Any:
    """The object at ``module.qualname`` in this process, or None."""
    obj: Any = sys.modules.get(module)
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
    except Exception:  # a module __getattr__ may raise anything: not by reference
        return None
    return obj


def define_function(fn: Callable[..., Any]) -> FnDef:
    """How ``fn`` travels: :class:`FnRef` when ``module`` + ``qualname`` (or plain name)
    looks up to this very object in an importable module, else :class:`FnValue`.

    Raises SerializationError when it cannot be pickled by value either."""
    if not callable(fn):
        raise SerializationError(f"cannot send function {fn!r}: {_type_name(fn)} is not callable")
    module = getattr(fn, "__module__", None)
    owner = getattr(fn, "__self__", None)
    if module is None and owner is not None:
        module = getattr(type(owner), "__module__", None)  # a builtin bound method: random.random
    if isinstance(module, str) and module != "__main__" and module in sys.modules and not _by_value_module(module):
        for name in (getattr(fn, "__qualname__", None), getattr(fn, "__name__", None)):
            if isinstance(name, str) and "<" not in name and _same(_lookup(module, name), fn):
                return FnRef(module, name)
    # Plain pickle first: a functools.partial of an importable function (what keyword
    # arguments become) pickles in ~1 us there, ~10 us with cloudpickle.
    try:
        stream = pickle.dumps(fn, 5)
    except Exception:
        stream = None  # a lambda, a local function, ...: cloudpickle below
    if stream is not None and b"__main__" not in stream:
        return FnValue(stream)
    import cloudpickle  # lazily: ~10 ms to import

    try:
        return FnValue(cloudpickle.dumps(fn, 5))
    except Exception as exc:
        raise SerializationError(f"cannot send function {fn!r}: {_describe(exc)}") from exc


def _same(found: Any, fn: Any) -> bool:
    if found is fn:
        return True
    # Bound methods (``random.random`` is one, of a module-level instance) are made
    # afresh on every attribute access: compare those by value (same self, same function).
    if getattr(fn, "__self__", None) is None or not isinstance(found, _METHOD_TYPES):
        return False
    try:
        return bool(found == fn)
    except Exception:
        return False


_METHOD_TYPES: Final = (types.MethodType, types.BuiltinMethodType)


def _by_value_module(module: str) -> bool:
    # Honour cloudpickle.register_pickle_by_value() without importing cloudpickle.
    cp = sys.modules.get("cloudpickle.cloudpickle")
    registered: Any = getattr(cp, "_PICKLE_BY_VALUE_MODULES", ())
    return any(module == m or module.startswith(m + ".") for m in registered)


def load_function(define: FnDef) -> Callable[..., Any]:
    """Rebuild a function in the worker. Raises ImportError/AttributeError/unpickling
    errors as they come (the worker reports them as ``ERR_LOAD``)."""
    if isinstance(define, FnRef):
        obj: Any = importlib.import_module(define.module)
        for part in define.qualname.split("."):
            obj = getattr(obj, part)
        return obj  # type: ignore[no-any-return]
    fn = pickle.loads(define.pickle)  # noqa: S301 - our own parent
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    return fn  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- errors


def rebuild_exception(err: Error) -> BaseException:
    """The parent-side exception for an :class:`Error`, with the worker's formatted
    traceback as a :class:`RemoteTraceback` ``__cause__``.

    - ``ERR_CANCELLED``: :class:`TaskCancelled`.
    - ``ERR_UNSENDABLE``: :class:`SerializationError` (the result could not be sent).
    - otherwise the original exception when it unpickles here and is an ``Exception``
      (a ``SystemExit`` or ``KeyboardInterrupt`` raised by a task must not stop the
      pool), else :class:`TaskFailed` with the type name, message and traceback.
    """
    exc: BaseException | None = None
    if err.kind == ERR_CANCELLED:
        exc = TaskCancelled(err.message or "cancelled in the worker")
    elif err.kind == ERR_UNSENDABLE:
        exc = SerializationError(err.message)
    elif err.pickled is not None:
        try:
            obj = pickle.loads(err.pickled)  # noqa: S301 - our own worker
        except Exception:
            obj = None
        if isinstance(obj, Exception):
            exc = obj
    if exc is None:
        name = err.type_qualname if err.type_module == "builtins" else f"{err.type_module}.{err.type_qualname}"
        exc = TaskFailed(name, err.message, err.traceback)
    if err.traceback:
        exc.__cause__ = RemoteTraceback(err.traceback)
    return exc
