"""Large payloads: warm receive buffers (taskpool._memory.POOL) and malloc tuning.

A received segment is reused for a later one only once nothing references it any more;
a value made of it (a bytearray, a memoryview, a numpy array) is never overwritten.
"""

from __future__ import annotations

import ctypes
import gc
import os
import pickle
import subprocess
import sys
from typing import Any

import msgspec
import pytest

from taskpool import FunctionPool, _memory
from taskpool._frames import HEADER, LARGE, FrameParser, WireError, encode_frame
from taskpool._memory import POOL, RECYCLE_MIN, BufferPool
from taskpool._wire import FMT_PICKLE, FMT_VALUE, Call, Result, dump_args, dump_value, load_result, parent_parser

from . import _funcs as f

SEG = 2 * RECYCLE_MIN  # comfortably above the size the pool keeps
GLIBC = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc") if hasattr(os, "confstr") else False
needs_recycling = pytest.mark.skipif(not _memory.RECYCLES, reason="reference counts cannot tell here")


@pytest.fixture(autouse=True)
def _empty_pool() -> Any:
    POOL.trim()
    yield
    POOL.trim()


def frame(value: Any, call_id: int = 1) -> bytes:
    return b"".join(bytes(c) for c in encode_frame(Result(call_id, *dump_value(value))))


def receive(p: FrameParser[Any], value: Any, call_id: int = 1) -> Result:
    (msg,) = p.feed(frame(value, call_id))
    assert isinstance(msg, Result)
    return msg


def pattern(n: int, seed: int) -> bytes:
    return bytes([seed % 251]) * n


class Blob:
    """Reduces like a numpy array: its data out of band, kept as a view when rebuilt."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (Blob, (pickle.PickleBuffer(self.data),))


# --- the pool on its own --------------------------------------------------------------------------


@needs_recycling
def test_pool_hands_out_only_buffers_nothing_else_holds() -> None:
    pool = BufferPool()
    held = bytearray(SEG)
    pool.keep(held)
    assert pool.take(SEG) is None  # `held` still references it
    assert pool.free() == 0
    address = id(held)
    del held
    assert pool.free() == 1
    again = pool.take(SEG)
    assert again is not None
    assert id(again) == address
    assert len(again) == SEG
    assert len(pool) == 0


@needs_recycling
def test_pool_resizes_within_capacity_only() -> None:
    pool = BufferPool()
    size = 4 * RECYCLE_MIN
    pool.keep(bytearray(size))
    cap = size + 1
    assert pool.take(cap) is None  # would need a bigger allocation
    assert pool.take(cap // 2 - 1) is None  # would shrink (reallocate) below half
    b = pool.take(cap // 2)
    assert b is not None
    assert len(b) == cap // 2
    assert b.__alloc__() == cap  # the same memory, not a new block
    pool.keep(b)
    del b
    b = pool.take(size)  # and back up, in place
    assert b is not None
    assert len(b) == size
    assert b.__alloc__() == cap


@needs_recycling
def test_pool_bounds_what_it_keeps() -> None:
    pool = BufferPool(max_buffers=2, max_bytes=5 * RECYCLE_MIN)
    pool.keep(bytearray(RECYCLE_MIN - 1))  # too small: not kept
    assert len(pool) == 0
    for _ in range(3):
        pool.keep(bytearray(SEG))
    assert len(pool) == 2
    pool.keep(bytearray(3 * RECYCLE_MIN))  # over max_bytes with the others: the oldest go
    assert len(pool) == 1
    assert pool.nbytes <= 5 * RECYCLE_MIN
    pool.keep(bytearray(6 * RECYCLE_MIN))  # bigger than max_bytes alone
    assert len(pool) == 0
    pool.keep(bytearray(SEG))
    pool.trim()
    assert len(pool) == 0


# --- the parser: reuse, and never overwriting what escaped ----------------------------------------


@needs_recycling
def test_a_segment_copied_into_bytes_is_reused_for_the_next_one() -> None:
    p = parent_parser()
    msg = receive(p, pattern(SEG, 1))
    first = id(msg.bufs[0])
    value = load_result(msg)
    del msg
    assert value == pattern(SEG, 1)
    msg = receive(p, pattern(SEG, 2), 2)
    assert id(msg.bufs[0]) == first  # the warm buffer again (it never left the pool)
    assert load_result(msg) == pattern(SEG, 2)
    assert value == pattern(SEG, 1)  # the bytes made of it are their own memory


@needs_recycling
def test_a_message_not_yet_loaded_keeps_its_segment() -> None:
    p = parent_parser()
    first = receive(p, pattern(SEG, 1))
    second = receive(p, pattern(SEG, 2), 2)  # e.g. a call queued behind another
    assert second.bufs[0] is not first.bufs[0]
    assert load_result(first) == pattern(SEG, 1)
    assert load_result(second) == pattern(SEG, 2)


@needs_recycling
@pytest.mark.parametrize("kind", ["bytearray", "memoryview", "view-of-bytearray", "nested"])
def test_a_value_made_of_a_segment_is_never_overwritten(kind: str) -> None:
    """The segment *is* the value (zero copy): a later frame of the same size must get
    other memory while the value lives, and the value keeps its content."""

    def make(seed: int) -> Any:
        raw = bytearray(pattern(SEG, seed))
        if kind == "memoryview":
            return memoryview(raw)
        if kind == "nested":
            return {"blob": Blob(raw), "n": seed}  # out of band deep inside, like numpy's data
        return raw

    def content(v: Any) -> bytes:
        return bytes(v["blob"].data) if kind == "nested" else bytes(v)

    p = parent_parser()
    values = []
    ids = set()
    for seed in range(1, 6):  # more than the pool keeps: evictions must not matter either
        msg = receive(p, make(seed), seed)
        ids.add(id(msg.bufs[-1]))
        v = load_result(msg)
        del msg
        if kind == "view-of-bytearray":
            v = memoryview(v)[10:]  # only a view of it is left: still its memory
            values.append((v, pattern(SEG, seed)[10:]))
        else:
            values.append((v, pattern(SEG, seed)))
    assert len(ids) == 5  # five live values: five distinct buffers
    for v, expected in values:
        got = bytes(v) if kind == "view-of-bytearray" else content(v)
        assert got == expected
    # Once the values are gone, their memory is free for the next segments.
    del v
    values.clear()
    gc.collect()
    assert POOL.free() >= 1
    msg = receive(p, make(9), 9)
    assert id(msg.bufs[-1]) in ids
    assert content(load_result(msg)) == pattern(SEG, 9)


@needs_recycling
def test_a_reused_buffer_never_shows_stale_bytes() -> None:
    """A kept buffer's old content is overwritten before its message is returned, however
    the new bytes arrive (in small pieces through the receive buffer, or straight in)."""
    p = parent_parser()
    load_result(receive(p, bytearray(b"\xee" * SEG)))
    assert POOL.free() == 1
    data = frame(bytearray(pattern(SEG, 7)), 2)
    out: list[Any] = []
    for i in range(0, len(data), 50_000):
        out += p.feed(data[i : i + 50_000])
    (msg,) = out
    assert load_result(msg) == pattern(SEG, 7)


@needs_recycling
def test_large_in_band_frames_reuse_the_receive_buffer() -> None:
    """A huge msgpack frame (a long str travels in-band) grows the receive buffer; once it
    has passed, the big buffer is kept and the next huge frame lands in it."""
    p = parent_parser()
    text = "x" * SEG
    (msg,) = p.feed(frame(text))
    assert load_result(msg) == text
    p.feed(frame("small", 2))  # the receive buffer shrinks back: the big one is kept
    assert POOL.free() == 1
    (kept,) = POOL._kept
    big = id(kept)
    del kept
    data = frame("z" * SEG, 3)
    out: list[Any] = []
    for i in range(0, len(data), 300_000):
        out += p.feed(data[i : i + 300_000])
        if i == 0:
            assert id(p._buf) == big
    assert load_result(out[0]) == "z" * SEG


def test_limits_still_come_before_any_buffer() -> None:
    """A kept buffer of the right size does not let a segment or frame over the limit in."""
    POOL.keep(bytearray(SEG))
    big = frame(pattern(SEG, 3))
    with pytest.raises(WireError, match="over the limit"):
        parent_parser(max_message=SEG - 1).feed(big)
    with pytest.raises(WireError, match="over the limit"):
        parent_parser(max_message=SEG - 1).feed(HEADER.pack(SEG))


def test_a_lying_segment_allocates_nothing_new() -> None:
    """A segment announced at the size of a kept buffer takes that buffer (no allocation);
    one of another size gets a read-ahead as before. Neither returns stale bytes."""
    POOL.keep(bytearray(SEG))
    lying = msgspec.msgpack.encode(Result(1, FMT_PICKLE, None, [SEG]))
    p = parent_parser()
    assert p.feed(HEADER.pack(len(lying)) + lying + b"\0" * 1000) == []
    assert p._seg is not None
    assert len(p._seg) == (SEG if _memory.RECYCLES else min(SEG, 1024 * 1024))
    assert p.pending == 1000


# --- through real workers -------------------------------------------------------------------------


def numbered(n: int, seed: int, kind: str) -> Any:
    raw = bytearray(pattern(n, seed))
    raw[:8] = seed.to_bytes(8, "little")
    if kind == "bytes":
        return bytes(raw)
    if kind == "memoryview":
        return memoryview(raw)
    if kind == "shaped":
        return memoryview(raw).cast("I", (n // 64, 16))
    return raw


def check(value: Any, n: int, seed: int, kind: str) -> None:
    expected = numbered(n, seed, "bytes")
    if kind == "bytes":
        assert type(value) is bytes
    elif kind == "bytearray":
        assert type(value) is bytearray
    else:
        assert type(value) is memoryview
        if kind == "shaped":
            assert value.shape == (n // 64, 16)
            assert value.format == "I"
    assert bytes(value) == expected, f"payload {seed} changed"


def echo_checked(value: Any, n: int, seed: int, kind: str) -> Any:
    """In the worker: the argument arrived intact; send it back."""
    check(value, n, seed, kind)
    return value


def make_value(n: int, seed: int, kind: str) -> Any:
    return numbered(n, seed, kind)


@pytest.mark.asyncio
@pytest.mark.uvloop
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "shaped"])
async def test_large_payloads_round_trip_intact_and_stay_intact(kind: str) -> None:
    """Arguments and results of several sizes, kept by the caller while more arrive: none
    is overwritten by a later frame, on either side."""
    sizes = [LARGE, RECYCLE_MIN, SEG, 8 * RECYCLE_MIN]
    async with FunctionPool(1, worker="process") as pool:
        kept: list[tuple[Any, int, int]] = []
        for round_ in range(3):
            for j, n in enumerate(sizes):
                seed = round_ * 10 + j
                out = await pool.add_task(echo_checked, numbered(n, seed, kind), n, seed, kind)
                kept.append((out, n, seed))
                made = await pool.add_task(make_value, n, seed + 100, kind)
                kept.append((made, n, seed + 100))
        for value, n, seed in kept:
            check(value, n, seed, kind)


@pytest.mark.asyncio
async def test_numpy_arrays_round_trip_intact() -> None:
    np = pytest.importorskip("numpy")
    async with FunctionPool(1, worker="process") as pool:
        arrays = [np.arange(i * 1_000_000, (i + 1) * 1_000_000, dtype=np.int64).reshape(1000, 1000) for i in range(3)]
        outs = [await pool.add_task(f.identity, a) for a in arrays]
        outs.append(await pool.add_task(f.identity, arrays[0][:, ::2]))  # not contiguous: in-band
        for a, out in zip(arrays, outs, strict=False):
            assert np.array_equal(a, out)
        assert np.array_equal(arrays[0][:, ::2], outs[3])


# --- malloc ---------------------------------------------------------------------------------------


def _in_heap(b: bytearray) -> bool:
    """Whether ``b``'s memory lies in the brk heap (not a block mmapped on its own)."""
    address = ctypes.addressof(ctypes.c_char.from_buffer(b))
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith("[heap]"):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if lo <= address < hi:
                    return True
    return False


def worker_malloc(payload: Any = None) -> tuple[dict[str, int] | None, bool]:
    """In a worker: what taskpool set, and whether a fresh 40 MiB block comes from the heap
    (glibc mmaps blocks that big unless the threshold was raised)."""
    block = bytearray(40 * 1024 * 1024)
    return _memory.malloc_tuning(), _in_heap(block)


needs_glibc = pytest.mark.skipif(not (GLIBC and sys.platform == "linux"), reason="glibc malloc only")


@needs_glibc
@pytest.mark.asyncio
async def test_a_worker_raises_its_mmap_threshold_once_large_buffers_flow() -> None:
    async with FunctionPool(1, worker="process") as pool:
        assert await pool.add_task(worker_malloc) == (None, False)  # small traffic only: untouched
        tuning, in_heap = await pool.add_task(worker_malloc, bytes(SEG))
        assert tuning == {"mmap_threshold": _memory.MMAP_THRESHOLD, "trim_threshold": _memory.MMAP_THRESHOLD}
        assert in_heap


@needs_glibc
@pytest.mark.asyncio
async def test_a_worker_leaves_malloc_alone_when_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_memory.TUNE_ENV, "0")
    async with FunctionPool(1, worker="process") as pool:
        assert await pool.add_task(worker_malloc, bytes(SEG)) == (None, False)
    monkeypatch.delenv(_memory.TUNE_ENV)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(64 * 1024 * 1024))  # glibc's own setting wins
    async with FunctionPool(1, worker="process") as pool:
        tuning, in_heap = await pool.add_task(worker_malloc, bytes(SEG))
        assert tuning is None
        assert in_heap  # glibc applied the user's 64 MiB


_TUNE_IN_A_FRESH_PROCESS = """
import sys
from taskpool import _memory
from tests.test_payloads import _in_heap
before = _in_heap(bytearray(40 * 1024 * 1024))
ok = _memory.tune_malloc()
after = _in_heap(bytearray(40 * 1024 * 1024))
print(before, ok, after, _memory.malloc_tuning())
"""


@needs_glibc
def test_tune_malloc_in_the_parent_is_opt_in_and_takes_effect() -> None:
    # In a fresh interpreter: the test process's own malloc is left as it is.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = (
        subprocess.run(
            [sys.executable, "-c", _TUNE_IN_A_FRESH_PROCESS],
            capture_output=True,
            text=True,
            cwd=root,
            check=True,
            timeout=60,
        )
        .stdout.strip()
        .split(maxsplit=3)
    )
    t = _memory.MMAP_THRESHOLD
    assert out == ["False", "True", "True", f"{{'mmap_threshold': {t}, 'trim_threshold': {t}}}"]


def test_tune_malloc_refuses_nonsense_and_never_raises_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        _memory.tune_malloc(-1)
    monkeypatch.setattr(_memory, "_glibc", lambda: False)
    assert _memory.tune_malloc() is False  # elsewhere than glibc: a no-op
    assert _memory.malloc_tuning() is None


# --- arguments: what is sent is never copied -------------------------------------------------------


def test_large_arguments_still_go_out_of_band_uncopied() -> None:
    raw = bytearray(SEG)
    for value, owner in ((blob := bytes(SEG), blob), (raw, raw), (view := memoryview(raw), view)):
        fmt, _, bufs = dump_args((value,))
        assert fmt == FMT_PICKLE
        (buf,) = bufs
        assert isinstance(buf, memoryview)
        assert buf.obj is owner
    assert dump_value("x" * SEG)[0] == FMT_VALUE  # a str goes in-band (msgpack)


@needs_recycling
def test_call_segments_come_from_the_pool_in_the_worker_direction_too() -> None:
    p: FrameParser[Any] = FrameParser(msgspec.msgpack.Decoder(Call))
    fmt, data, bufs = dump_args((bytes(SEG),))
    wire = b"".join(bytes(c) for c in encode_frame(Call(1, 0, fmt, data, bufs)))
    (msg,) = p.feed(wire)
    first = id(msg.bufs[-1])
    del msg
    (msg,) = p.feed(wire)
    assert id(msg.bufs[-1]) == first
