"""Frames: the byte-level codec of the channel between the pool and a process worker.

One stream socket (a ``socket.socketpair()``, one end inherited by the child) carries
*frames* in both directions. A frame is one msgspec **msgpack** message behind a 4-byte
little-endian length, optionally followed by raw *segments* (out-of-band buffers) whose
lengths the message itself lists in its ``bufs`` field::

    frame     +-----------+---------------------------+-----------+-----------+
              | u32 LE  n | msgpack message (n bytes) | segment 0 | segment 1 | ...
              +-----------+---------------------------+-----------+-----------+
    message   [tag, field, field, ..., bufs=[len0, len1, ...], ...]  (array_like Struct)

This module knows frames, not what the messages mean (that is :mod:`taskpool._wire`):
a message is any :class:`Message`; one whose class sets ``segmented`` has a ``bufs``
field. :class:`FrameWriter` batches frames for one gathered write, sending segments of
:data:`LARGE` bytes or more straight from the caller's memory; :class:`FrameParser`
decodes frames in place from one receive buffer and reads large segments straight from
the kernel into a ``bytearray`` of their own; :class:`~taskpool._channel.FrameProtocol` is the asyncio
protocol that does both over a socket.

Large segments, and a receive buffer a huge frame grew, are kept in a process-wide pool
(:mod:`taskpool._memory`) and reused, warm, for later ones once nothing else references
them (neither their message nor a value made of them): never while anything holds them.

Sizes on the wire come from the peer and are not trusted: a parser rejects a frame or a
segment over its ``max_message`` before allocating anything for it, and allocates for a
frame or segment still on its way at most :data:`READ_AHEAD` bytes beyond what arrived
(growing as the rest comes), so a header that lies costs nothing (a kept buffer, being
allocated already, may serve it whole).
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar, Final, Generic, TypeAlias, TypeVar

import msgspec

from taskpool import _memory
from taskpool._errors import SerializationError
from taskpool._memory import POOL, RECYCLE_MIN

__all__ = [
    "HEADER",
    "LARGE",
    "MAX_FRAME",
    "NO_LIMIT",
    "READ_AHEAD",
    "Buffer",
    "FrameParser",
    "FrameWriter",
    "Message",
    "WireError",
    "encode_frame",
]

#: Buffers this large or larger travel out of band; smaller ones are copied in-band,
#: where an extra segment would cost more than the copy.
LARGE: Final = 64 * 1024
#: The largest message a frame can hold (its length must fit the header).
MAX_FRAME: Final = 2**32 - 1
#: The frame header: the message's length, u32 little-endian.
HEADER: Final = struct.Struct("<I")
_COUNT: Final = struct.Struct(">I")  # a msgpack array32 count (add_item)
#: The default ``max_message``: no real message comes near it (a trusted peer's bound).
NO_LIMIT: Final = 2**48
#: The most a parser allocates beyond the bytes that arrived, for a frame or a segment
#: whose length is known but whose bytes have not all come.
READ_AHEAD: Final = 1024 * 1024

Buffer: TypeAlias = bytes | bytearray | memoryview


class WireError(Exception):
    """The byte stream broke the protocol (a length over the limit, an undecodable
    frame): the channel cannot be trusted any more and should be closed.

    Attributes:
        messages: the messages completed before the bad frame (the parser that raised
            returns them nowhere else); they were sent in good order and can be used.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.messages: list[Any] = []


class Message(msgspec.Struct, array_like=True, gc=False):
    """Base of every message on the channel: encoded as ``[tag, field, ...]``.

    ``gc=False``: messages never form reference cycles. A subclass that sets
    ``segmented = True`` must have a ``bufs: list`` field: on the way out it holds the
    buffers themselves, on the wire their lengths (the segments follow the frame), and
    once parsed the received ``bytearray`` segments.
    """

    segmented: ClassVar[bool] = False


M = TypeVar("M", bound=Message)


class FrameWriter:
    """Encodes messages into as few buffers as possible, ready for one gathered write.

    Small frames are appended back to back into one ``bytearray`` (``encode_into``, no
    intermediate ``bytes``); an out-of-band segment of :data:`LARGE` bytes or more is
    kept as a view of the caller's memory and never copied. ``max_message`` bounds a
    frame's message and each segment (the receiving parser's limit), so a message too
    big for the peer fails here as a SerializationError instead of breaking the channel.
    """

    __slots__ = ("_chunks", "_count", "_encoder", "_head", "_items", "_max", "_open", "_out", "_size")

    def __init__(self, *, max_message: int = NO_LIMIT) -> None:
        self._max = max_message
        self._encoder = msgspec.msgpack.Encoder()
        self._out = bytearray()
        self._chunks: list[Buffer] = []
        self._size = 0
        self._open = -1  # offset in _out of the frame add_item appends to (-1: none)
        self._head = b""  # and the head of its message
        self._count = 0  # items in it
        self._items: list[tuple[int, int]] = []  # (offset, header size) of such frames in _out

    @property
    def item_frames(self) -> list[tuple[int, int]]:
        """``(offset, size)`` in :meth:`pending` of the header bytes of every frame
        :meth:`add_item` made since the last :meth:`take` (they changed with each item)."""
        return self._items

    def add_item(self, msg: Message, head: bytes) -> None:
        """Append ``msg`` as one more item of a frame whose message is ``head`` followed by
        a msgpack array32 of items (opened here unless the last frame added is one). The
        frame is whole after every item: its length and count are kept up to date.
        Raises SerializationError as :meth:`add` (the writer is left unchanged)."""
        out = self._out
        fresh = self._open < 0 or self._head != head
        if fresh:
            self._open, self._head, self._count = len(out), head, 0
            self._items.append((len(out), 8 + len(head)))
            out += b"\0\0\0\0"
            out += head
            out += b"\0\0\0\0"
        at = self._open
        start = len(out)
        try:
            self._encoder.encode_into(msg, out, -1)
        except (TypeError, ValueError, OverflowError) as exc:
            self._unadd(at if fresh else start)
            raise SerializationError(f"cannot encode {type(msg).__name__}: {exc}") from exc
        limit = min(MAX_FRAME, self._max)
        n = len(out) - at - 4
        if n > limit:
            item = len(out) - start
            self._unadd(at if fresh else start)
            if fresh or item + 8 + len(head) > limit:
                what = " (max_message_size)" if limit == self._max else ""
                raise SerializationError(
                    f"a {type(msg).__name__} message of {item} bytes is over the limit of {limit} bytes{what}"
                )
            self._open = -1  # this frame is full: the item opens the next one
            self.add_item(msg, head)
            return
        self._count += 1
        HEADER.pack_into(out, at, n)
        _COUNT.pack_into(out, at + 4 + len(head), self._count)

    def _unadd(self, start: int) -> None:
        del self._out[start:]
        if self._open >= len(self._out):
            self._open = -1
            self._items.pop()

    def __len__(self) -> int:
        """Bytes waiting in :meth:`take`."""
        return self._size + len(self._out)

    def add(self, msg: Message) -> None:
        """Append one frame. In a segmented message, ``msg.bufs`` holds the buffers
        themselves (bytes-like objects); they go on the wire as their lengths plus
        trailing segments. Raises SerializationError when the message cannot be encoded
        or is over ``max_message`` (the writer is left unchanged)."""
        self._open = -1  # a frame of its own: items that follow go in a new one
        out = self._out
        start = len(out)
        out += b"\0\0\0\0"
        bufs: list[Any] | None = msg.bufs if msg.segmented else None  # type: ignore[attr-defined]
        views: list[memoryview] = []
        try:
            if bufs:
                views = [_flat(b, self._max) for b in bufs]
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
        limit = min(MAX_FRAME, self._max)
        if n > limit:
            del out[start:]
            what = " (max_message_size)" if limit == self._max else ""
            raise SerializationError(
                f"a {type(msg).__name__} message of {n} bytes is over the limit of {limit} bytes{what}"
            )
        HEADER.pack_into(out, start, n)
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

    def pending(self) -> bytearray | None:
        """The frames waiting in :meth:`take`, as one buffer (the writer's own: copy what
        you keep), or None when a large segment waits apart from them."""
        return None if self._chunks else self._out

    def take(self) -> list[Buffer]:
        """Return every pending buffer, in order, and start afresh (the caller owns them:
        they are never reused, so a transport may keep references)."""
        chunks = self._chunks
        self._open = -1
        self._items = []
        if self._out:
            chunks.append(self._out)
            self._out = bytearray()
        self._chunks = []
        self._size = 0
        return chunks


def _flat(b: Any, limit: int = NO_LIMIT) -> memoryview:
    """A 1-D unsigned-byte view of any C-contiguous buffer (raises TypeError else);
    raises SerializationError when it is not contiguous or over ``limit`` bytes."""
    v = b if type(b) is memoryview else memoryview(b)
    if v.ndim != 1 or v.format != "B":
        if not v.c_contiguous:
            raise SerializationError("cannot send a non-contiguous buffer out of band")
        v = v.cast("B")
    if v.nbytes > limit:
        raise SerializationError(f"a buffer of {v.nbytes} bytes is over the limit of {limit} bytes (max_message_size)")
    return v


def encode_frame(msg: Message) -> list[Buffer]:
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
    Segments get a ``bytearray`` of their own (a free one of the pool's when it fits),
    read straight from the socket when large. A segmented message is returned once all
    its segments arrived, with ``msg.bufs`` replaced by those ``bytearray`` objects.

    ``max_message`` bounds a frame's message and each segment, in bytes: a length over it
    raises :class:`WireError` before anything is allocated for it. Within the bound,
    memory follows the bytes that arrived (plus :data:`READ_AHEAD`), not the lengths
    announced.

    Raises :class:`WireError` on a malformed stream (its ``messages`` are those completed
    before the bad frame); the parser must not be used after that.
    """

    __slots__ = (
        "_buf",
        "_bufsize",
        "_decoder",
        "_direct",
        "_end",
        "_fill",
        "_max",
        "_msg",
        "_need",
        "_seg",
        "_segs",
        "_segsize",
        "_sizes",
        "_start",
    )

    _MIN_FREE: Final = 16 * 1024

    def __init__(
        self, decoder: msgspec.msgpack.Decoder[M], *, bufsize: int = 256 * 1024, max_message: int = NO_LIMIT
    ) -> None:
        """Raises ValueError when ``max_message`` is below 1."""
        if max_message < 1:
            raise ValueError(f"max_message must be >= 1, got {max_message!r}")
        self._decoder = decoder
        self._bufsize = bufsize
        self._max = max_message
        self._buf = bytearray(bufsize)
        self._start = 0
        self._end = 0
        self._need = 0  # full length of the frame being assembled at _start (0: unknown)
        self._msg: Any = None  # message waiting for its segments
        self._sizes: list[int] = []
        self._segs: list[bytearray] = []
        self._seg: bytearray | None = None  # the segment being filled: grows up to _segsize
        self._segsize = 0
        self._fill = 0
        self._direct = False

    @property
    def max_message(self) -> int:
        """The largest frame message or segment accepted, in bytes."""
        return self._max

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as messages."""
        return self._end - self._start + (self._fill if self._seg is not None else 0)

    def feed(self, data: Buffer) -> list[M]:
        """Consume a chunk of the stream; return the messages it completed. Raises
        WireError (with every message completed before the bad frame)."""
        out: list[M] = []
        with memoryview(data) as mv:
            pos, n = 0, mv.nbytes
            while pos < n:
                dst = self.get_buffer(n - pos)
                k = min(len(dst), n - pos)
                dst[:k] = mv[pos : pos + k]
                dst.release()
                pos += k
                try:
                    out.extend(self.buffer_updated(k))
                except WireError as exc:
                    exc.messages[:0] = out
                    raise
        return out

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next bytes of the stream should be written (``BufferedProtocol``)."""
        seg = self._seg
        if seg is not None:
            fill = self._fill
            if self._segsize - fill >= LARGE:
                # The receive buffer is empty whenever a segment is open (see _parse): let
                # the kernel write into the segment directly, a read-ahead at a time.
                if len(seg) - fill < LARGE:
                    seg = self._seg = _grow(seg, min(self._segsize, fill + READ_AHEAD) - len(seg))
                self._direct = True
                return memoryview(seg)[fill:]
        self._direct = False
        buf, start, end = self._buf, self._start, self._end
        pending = end - start
        if pending == 0 and start:
            self._start = self._end = start = end = 0
            if len(buf) > self._bufsize and not self._need:
                POOL.keep(buf)  # a huge frame passed: shrink, and keep the big one warm
                buf = self._buf = bytearray(self._bufsize)
        # Room for the whole frame being assembled, but never more than a read-ahead past
        # what has arrived: its length is the peer's word.
        need = self._need
        required = max(min(need, pending + READ_AHEAD), pending + self._MIN_FREE)
        if len(buf) - start < required:
            warm = None
            if need >= RECYCLE_MIN and need > len(buf):
                _memory.large_buffer()
                warm = POOL.take(need)  # allocated already: it costs nothing
            if warm is not None:
                with memoryview(buf) as mv:
                    warm[:pending] = mv[start:end]
                POOL.keep(buf)
                buf = self._buf = warm
                self._start, self._end = 0, pending
                end = pending
            elif start:
                buf[:pending] = buf[start:end]  # compact: only a partial frame moves
                self._start, self._end = 0, pending
                end = pending
            if len(buf) < required:
                buf = self._buf = _grow(buf, max(required, self._bufsize) - len(buf))
        return memoryview(buf)[end:]

    def buffer_updated(self, nbytes: int) -> list[M]:
        """``nbytes`` were written into the last :meth:`get_buffer`; return new messages.
        Raises WireError on a malformed stream."""
        if self._direct:
            self._direct = False
            self._fill += nbytes
            out: list[M] = []
            if self._seg is not None and self._fill == self._segsize:
                self._next_segment(out)
            return out
        self._end += nbytes
        return self._parse()

    def _parse(self) -> list[M]:
        out: list[M] = []
        try:
            self._parse_into(out)
        except WireError as exc:
            exc.messages = out
            raise
        return out

    def _parse_into(self, out: list[M]) -> None:
        buf, start, end = self._buf, self._start, self._end
        decode = self._decoder.decode
        unpack = HEADER.unpack_from
        limit = self._max
        with memoryview(buf) as mv:
            while True:
                seg = self._seg
                if seg is not None:
                    fill = self._fill
                    take = min(end - start, self._segsize - fill)
                    if take:
                        # Grows the segment when the bytes arrived here, not through
                        # get_buffer's read-ahead.
                        seg[fill : fill + take] = mv[start : start + take]
                        self._fill = fill = fill + take
                        start += take
                    if fill < self._segsize:
                        self._need = 0
                        break  # everything received went into the segment
                    self._next_segment(out)
                    continue
                avail = end - start
                if avail < 4:
                    self._need = 0
                    break
                (n,) = unpack(buf, start)
                if n > limit:
                    raise WireError(f"a frame of {n} bytes is over the limit of {limit} bytes")
                if avail - 4 < n:
                    self._need = 4 + n
                    break
                try:
                    msg = decode(mv[start + 4 : start + 4 + n])
                except msgspec.MsgspecError as exc:
                    raise WireError(f"undecodable frame ({n} bytes): {exc}") from exc
                start += 4 + n
                if msg.segmented and msg.bufs:  # type: ignore[attr-defined]
                    self._open_segments(msg)
                else:
                    out.append(msg)
        self._start = start

    def _open_segments(self, msg: Any) -> None:
        sizes = msg.bufs
        for s in sizes:
            if type(s) is not int or s < 0:
                raise WireError(f"bad segment lengths in {type(msg).__name__}: {sizes!r}")
            if s > self._max:
                raise WireError(f"a segment of {s} bytes is over the limit of {self._max} bytes")
        self._msg, self._sizes, self._segs = msg, sizes, []
        self._open_segment(sizes[0])

    def _open_segment(self, size: int) -> None:
        seg = None
        if size >= RECYCLE_MIN:
            _memory.large_buffer()
            seg = POOL.take(size)  # warm memory, allocated already: no page faults
        if seg is None:
            # A read-ahead at most: the rest is allocated as it arrives.
            seg = bytearray(min(size, READ_AHEAD))
        self._seg, self._segsize, self._fill = seg, size, 0

    def _next_segment(self, out: list[M]) -> None:
        """The open segment is complete: open the next one (skipping empty ones), or
        return the message once it has them all."""
        while True:
            assert self._seg is not None
            self._segs.append(self._seg)
            i = len(self._segs)
            if i == len(self._sizes):
                break
            self._open_segment(self._sizes[i])
            if self._segsize:
                return
        msg = self._msg
        msg.bufs = segs = self._segs
        for seg in segs:  # free for a later segment once nothing references it
            POOL.keep(seg)  # (too small: ignored)
        self._msg, self._seg, self._segs, self._sizes, self._fill, self._segsize = None, None, [], [], 0, 0
        out.append(msg)


def _grow(b: bytearray, n: int) -> bytearray:
    """``b`` with ``n`` more (zero) bytes: in place, where CPython's over-allocation keeps
    growing by read-aheads cheap; a copy if a view of ``b`` is still held somewhere."""
    try:
        b += bytes(n)
    except BufferError:
        new = bytearray(len(b) + n)
        new[: len(b)] = b
        return new
    return b
