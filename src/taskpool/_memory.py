"""Memory for large payloads: warm receive buffers, and glibc's mmap threshold.

Moving a large buffer through the channel is cheap (the kernel copies it at gigabytes per
second); putting it in *fresh* memory is not: every page of a new buffer costs a page
fault on first touch, several times the copy. glibc serves blocks of 32 MiB or more
(its largest dynamic mmap threshold) with ``mmap`` and hands them back to the kernel on
``free``, so without care every large payload is faulted in anew, on both sides. Two
things keep that memory warm:

* **Recycled receive buffers** (:class:`BufferPool`, the process-wide :data:`POOL`). A
  :class:`~taskpool._frames.FrameParser` reads a segment of :data:`RECYCLE_MIN` bytes or
  more into a kept buffer when a free one fits, and keeps every such segment once its
  message is complete. A kept buffer is free again once *nothing else references it*:
  a segment copied into a fresh ``bytes`` (how a ``bytes`` value arrives) is free as
  soon as its message is dropped, while one that became the value or part of it (a
  ``bytearray`` or ``memoryview`` value, a numpy array's data) is free only once that
  value is gone, and is never overwritten before. The test is CPython's reference count,
  exact for anything that keeps the memory (the object, a view of it, a ``Py_buffer``
  all hold a reference; a holder can only add to the count), with the baseline measured
  once at import; where counts cannot be trusted (PyPy, free-threaded builds) nothing is
  kept. The pool keeps at most :data:`POOL_BUFFERS` buffers and :data:`POOL_BYTES`
  bytes (the oldest forgotten first); :meth:`BufferPool.trim` forgets them all.
* **glibc's mmap threshold** (:func:`tune_malloc`): raised, large blocks come from the
  heap and a freed one is reused by the next allocation (the fresh ``bytes`` a payload
  becomes, the buffers a task makes), instead of going back to the kernel. Worker
  processes do it themselves (:func:`tune_worker`, at start-up; the ``ctypes`` import is
  put off until the first large buffer comes or goes); the pool's own process only when
  the program asks (:func:`tune_malloc`), since it changes how the whole program's
  memory is kept. The cost: up to the trim threshold of freed memory stays in the
  process instead of going back to the kernel, and long-lived large blocks fragment the
  heap where ``mmap`` kept them apart.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Final

__all__ = [
    "MMAP_THRESHOLD",
    "POOL",
    "POOL_BUFFERS",
    "POOL_BYTES",
    "RECYCLE_MIN",
    "TUNE_ENV",
    "BufferPool",
    "RECYCLES",
    "large_buffer",
    "malloc_tuning",
    "tune_malloc",
    "tune_worker",
]

#: Buffers smaller than this are not recycled: malloc serves them from memory in use.
RECYCLE_MIN: Final = 1024 * 1024
#: The most buffers the pool keeps.
POOL_BUFFERS: Final = 4
#: The most bytes the pool keeps (the buffers' capacities added up).
POOL_BYTES: Final = 128 * 1024 * 1024
#: What :func:`tune_malloc` sets by default: blocks under this come from the heap; the
#: trim threshold (free memory kept at the top of the heap) is set to the same.
MMAP_THRESHOLD: Final = 256 * 1024 * 1024
#: Set to ``0`` in a worker's environment to leave its malloc alone.
TUNE_ENV: Final = "TASKPOOL_TUNE_MALLOC"

_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_INT_MAX: Final = 2**31 - 1  # mallopt takes an int

#: Whether reference counts tell here when a kept buffer is free (else nothing is kept).
RECYCLES: Final = (
    sys.implementation.name == "cpython"
    and hasattr(sys, "getrefcount")
    and getattr(sys, "_is_gil_enabled", lambda: True)()  # not on a free-threaded build
)


class BufferPool:
    """Large ``bytearray`` buffers kept for later segments (thread-safe).

    :meth:`keep` registers a buffer whose holders may still be using it (a received
    segment: the message, the value rebuilt from it); :meth:`take` hands out only a kept
    buffer that nothing but the pool references any more (CPython's reference count:
    every holder of the object or of its memory, a view, a ``Py_buffer``, holds a
    reference), resized *within its capacity* to the size asked (CPython resizes a
    ``bytearray`` in place down to half its capacity and up to all of it), so a buffer
    taken costs no allocation and no page fault; its content is stale. A kept buffer a
    value still holds is simply not free yet: once the value is gone, it is.
    """

    __slots__ = ("_kept", "_lock", "max_buffers", "max_bytes")

    def __init__(self, *, max_buffers: int = POOL_BUFFERS, max_bytes: int = POOL_BYTES) -> None:
        self.max_buffers = max_buffers
        self.max_bytes = max_bytes
        self._kept: list[bytearray] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Buffers kept (free or not)."""
        return len(self._kept)

    @property
    def nbytes(self) -> int:
        """Bytes kept (capacities), free or not."""
        return sum(b.__alloc__() for b in self._kept)

    def free(self) -> int:
        """Kept buffers nothing else references."""
        with self._lock:
            kept = self._kept
            return sum(1 for i in range(len(kept)) if _refs(kept, i) == _ONLY_THE_LIST)

    def take(self, size: int) -> bytearray | None:
        """A free kept buffer of exactly ``size`` bytes (stale content), or None when
        none fits (the caller allocates). Allocates nothing."""
        if size < RECYCLE_MIN or not self._kept:
            return None
        with self._lock:
            kept = self._kept
            best = -1
            best_cap = 0
            for i in range(len(kept)):
                cap = kept[i].__alloc__()
                # In place: grow up to capacity - 1 (the trailing NUL), shrink down to half.
                if cap // 2 <= size < cap and (best < 0 or cap < best_cap) and _refs(kept, i) == _ONLY_THE_LIST:
                    best, best_cap = i, cap
            if best < 0:
                return None
            b = kept.pop(best)
        n = len(b)
        if n > size:
            del b[size:]
        elif n < size:
            b += bytes(size - n)
        return b

    def keep(self, b: bytearray) -> None:
        """Keep ``b`` (a segment just received, or a receive buffer done with) for a
        later :meth:`take`, once nothing else references it. Too small, too big, or
        where reference counts cannot be trusted (:data:`RECYCLES`): ignored."""
        if not RECYCLES or type(b) is not bytearray or len(b) < RECYCLE_MIN or self.max_buffers < 1:
            return
        with self._lock:
            kept = self._kept
            kept.append(b)
            self._evict()

    def _evict(self) -> None:
        kept = self._kept
        total = sum(b.__alloc__() for b in kept)
        while kept and (len(kept) > self.max_buffers or total > self.max_bytes):
            total -= kept.pop(0).__alloc__()  # the oldest first

    def trim(self) -> None:
        """Forget every kept buffer."""
        with self._lock:
            self._kept.clear()


#: The process-wide pool every :class:`~taskpool._frames.FrameParser` keeps its large
#: segments in and takes them from.
POOL: Final = BufferPool()


def _refs(bufs: list[Any], i: int) -> int:
    return sys.getrefcount(bufs[i])


# References to lst[i] that _refs sees when the list is the only holder (the list and
# the subscript's result: 2 on CPython 3.11; whatever it is elsewhere, measured here).
_ONLY_THE_LIST: Final = _refs([bytearray(1)], 0)


# --------------------------------------------------------------------------- malloc

_tuned: dict[str, int] | None = None
_armed = False


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int | None = None) -> bool:
    """Raise glibc's mmap and trim thresholds in this process (``mallopt``), so large
    blocks are kept and reused instead of being returned to the kernel on ``free`` and
    faulted in again on the next allocation.

    ``trim_threshold`` (default: ``mmap_threshold``) is how much free memory may stay at
    the top of the heap. Values are capped at 2 GiB - 1. Returns True when both were
    set; False elsewhere than glibc or when ``mallopt`` refused. Worker processes do
    this themselves; call it early in a program that sends or receives large buffers
    (a 32 MiB echo: about 18 ms a round trip instead of 30). The cost: up to
    ``trim_threshold`` bytes of freed memory stay in the process.

    Raises:
        ValueError: a threshold is negative.
    """
    global _tuned, _armed
    trim = mmap_threshold if trim_threshold is None else trim_threshold
    mmap_threshold, trim = min(mmap_threshold, _INT_MAX), min(trim, _INT_MAX)
    if mmap_threshold < 0 or trim < 0:
        raise ValueError("thresholds must be >= 0")
    _armed = False  # one try, whatever comes of it
    if not _glibc():
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
    except Exception:  # no ctypes, no symbol: leave malloc as it is
        return False
    if ok:
        _tuned = {"mmap_threshold": mmap_threshold, "trim_threshold": trim}
    return ok


def malloc_tuning() -> dict[str, int] | None:
    """The thresholds :func:`tune_malloc` set in this process, or None."""
    return None if _tuned is None else dict(_tuned)


def tune_worker() -> None:
    """A worker's start-up: tune malloc (:func:`tune_malloc`, defaults) once the first
    large buffer comes or goes (:func:`large_buffer`), so a worker that never sees one
    does not even import ``ctypes``. Not when :data:`TUNE_ENV` is ``0``, nor when glibc's
    own ``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES`` settings say otherwise."""
    global _armed
    env = os.environ
    if env.get(TUNE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return
    if "MALLOC_MMAP_THRESHOLD_" in env or "mmap_threshold" in env.get("GLIBC_TUNABLES", ""):
        return
    _armed = _tuned is None


def large_buffer() -> None:
    """A buffer of :data:`RECYCLE_MIN` bytes or more is coming or going: tune malloc now
    if :func:`tune_worker` asked for it (once)."""
    if _armed:
        tune_malloc()


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False
