"""Pickling what crosses the process boundary (the pickle path of :mod:`taskpool._wire`,
functions sent by value, a worker's initializer).

- Protocol 5; plain ``pickle`` first, ``cloudpickle`` when it refuses (a lambda inside)
  or, with ``main_by_value``, when the stream names ``__main__`` (a worker cannot import
  the parent's main script: cloudpickle sends such classes and functions by value).
- Buffers of :data:`~taskpool._frames.LARGE` bytes or more go out of band (``bufs``),
  from the caller's memory; :func:`wrap` makes top-level ``bytes``, ``bytearray`` and
  ``memoryview`` values go that way too (pickle keeps those in-band, or refuses them).
- What involves ``multiprocessing`` (a stream naming it, or one plain pickle refuses,
  once ``multiprocessing`` is loaded; everything pickled for a worker being spawned) is
  pickled again by :func:`taskpool._mp.dumps`: in a spawning context, with
  multiprocessing's own reducers, so its locks, events and proxies cross, and what
  cannot (a queue to a running worker, a fork-context lock) fails with a
  :class:`~taskpool.SerializationError` that says what to do instead. Anything else
  costs one substring search of its stream; plain data never comes here at all
  (msgpack carries it: see ``_wire``).
"""

from __future__ import annotations

import pickle
import sys
from typing import Any

from taskpool import _mp
from taskpool._frames import LARGE, Buffer

__all__ = ["dumps", "wrap"]


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


def wrap(x: Any) -> Any:
    """``x``, or a stand-in that pickles it out of band (a large top-level ``bytes`` or
    ``bytearray``, any ``memoryview``)."""
    t = type(x)
    if t is bytes and len(x) >= LARGE:
        return _BigBytes(x)
    if t is bytearray and len(x) >= LARGE:
        return _BigByteArray(x)
    if t is memoryview:
        return _View(x)
    return x


class _OutOfBand:
    """A ``buffer_callback`` keeping buffers of LARGE bytes or more out of band, in ``bufs``."""

    __slots__ = ("bufs",)

    def __init__(self, bufs: list[Buffer]) -> None:
        self.bufs = bufs

    def __call__(self, pb: pickle.PickleBuffer) -> bool:
        try:
            raw = pb.raw()
        except BufferError:
            return True  # non-contiguous: in-band
        if raw.nbytes < LARGE:
            return True
        self.bufs.append(raw)
        return False


def dumps(
    obj: Any, *, bufs: list[Buffer] | None = None, fds: list[int] | None = None, main_by_value: bool = True
) -> bytes:
    """``obj`` pickled for the other side of the channel (see the module docstring).

    ``bufs``: collects the out-of-band buffers (None: everything in-band); ``fds``:
    collects the fds a worker being spawned must inherit (None: the worker is running);
    ``main_by_value``: use cloudpickle when the stream names ``__main__``.

    Raises:
        SerializationError: a multiprocessing object that cannot cross (see ``_mp``).
        Exception: what cloudpickle raised when neither pickler could.
    """
    callback = None if bufs is None else _OutOfBand(bufs)
    loaded = "multiprocessing.reduction" in sys.modules  # else no object of it exists
    if fds is None or not loaded:
        # Plain pickle first: what does not name multiprocessing needs nothing more.
        try:
            stream: bytes | None = pickle.dumps(obj, 5, buffer_callback=callback)
        except Exception:
            stream = None  # e.g. a lambda inside, or a lock asking for a spawning context
        if stream is not None and not (
            (main_by_value and b"__main__" in stream) or (loaded and b"multiprocessing" in stream)
        ):
            return stream
        if bufs is not None:
            bufs.clear()
        if not loaded:
            import cloudpickle  # ~10 ms to import, rarely needed in the worker

            return cloudpickle.dumps(obj, 5, buffer_callback=callback)  # type: ignore[no-any-return]
    return _mp.dumps(
        obj,
        buffer_callback=callback,
        reset=None if bufs is None else bufs.clear,
        fds=fds,
        main_by_value=main_by_value,
    )
