"""Hostile workers: a task that breaks its worker's channel, stops its process, or floods output.

Each case ends with a typed error on the task at fault (or none at all) and a pool that keeps
serving, in bounded memory; closing never waits past ``grace`` + 1 s. The tasks that misbehave
are module-level functions here, imported by the real worker processes that run them; a task
finds its channel the way the worker itself does: the ``--fd N`` it was started with.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import stat
import sys
import time
from pathlib import Path

import msgspec
import psutil
import pytest
import structlog.testing

import taskpool._workers._calls as process
from taskpool import FunctionPool, RestartPolicy, SerializationError, TaskCancelled, TaskTimeout, WorkerCrashed
from taskpool._frames import HEADER, encode_frame
from taskpool._spawn import MAX_LINE
from taskpool._wire import FMT_PICKLE, Cancel, Result

from .. import _funcs as f
from .._support import WAIT, Gate, collect_until, process_worker, settle
from . import _faults as x
from ._poll import gone

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

MiB = 1024 * 1024
RSS_SLACK = 50 * MiB  # how much the pool's own memory may grow while a worker misbehaves


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


# --- the misbehaving tasks (run in worker processes only) ------------------------------------


def _channel_fd() -> int:
    """This worker's end of its channel: the fd named by ``--fd`` on its command line."""
    if not x._in_worker():
        raise AssertionError("refusing to write into a channel from the test process")
    fd = int(sys.argv[sys.argv.index("--fd") + 1])
    assert stat.S_ISSOCK(os.fstat(fd).st_mode), "--fd is not the channel socket"
    return fd


def write_to_channel(data: bytes) -> str:
    """Write ``data`` straight into the worker's channel, behind the worker's back."""
    fd = _channel_fd()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:  # the channel is non-blocking: wait until it takes more
            select.select([], [fd], [])
    return "written"


def write_then_arrive(data: bytes, path: str, tag: str) -> str:
    """Write ``data`` into the channel, then arrive at the test's gate (and return)."""
    write_to_channel(data)
    x._arrive(path, tag)
    return tag


def long_line(n: int, tail: str) -> int:
    """Print one line of ``n`` bytes (printable ASCII, cycling, so order shows) in pieces,
    none ending it, then a normal line."""
    out = sys.stdout
    block = bytes(range(33, 127)).decode() * 1000
    left = n
    while left:
        k = min(left, len(block))
        out.write(block[:k])
        left -= k
    out.write(f"\n{tail}\n")
    out.flush()
    return n


def flood(seconds: float) -> int:
    """Write short lines to stdout as fast as the pool takes them, for ``seconds``."""
    lines = "".join(f"flood line {i:04d} {'x' * 80}\n" for i in range(100))
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        sys.stdout.write(lines)
        n += 100
    sys.stdout.flush()
    return n


def result_of(n: int) -> bytes:
    return b"\x01" * n


# --- what the hostile tasks write ------------------------------------------------------------

#: A length header claiming 2 GB, and 16 more bytes of a frame that never completes.
FAKE_HEADER = HEADER.pack(2 * 10**9) + b"\0" * 16
#: A 60-byte frame whose message is not msgpack at all (0xc1 is never used by msgpack).
GARBAGE = HEADER.pack(60) + b"\xc1" * 60
#: A frame for the other direction: a Cancel, which only the worker reads.
WRONG_DIRECTION = b"".join(bytes(c) for c in encode_frame(Cancel(1)))
#: A Result frame announcing a 2 GB out-of-band segment.
_OVERSIZE = msgspec.msgpack.encode(Result(0, FMT_PICKLE, None, [2 * 10**9]))
HUGE_SEGMENT = HEADER.pack(len(_OVERSIZE)) + _OVERSIZE

BAD_STREAMS = {
    "fake_header": FAKE_HEADER,
    "garbage": GARBAGE,
    "wrong_direction": WRONG_DIRECTION,
    "huge_segment": HUGE_SEGMENT,
}


# --- bad frames ------------------------------------------------------------------------------


@pytest.mark.uvloop
@pytest.mark.parametrize("bad", sorted(BAD_STREAMS))
async def test_a_bad_frame_kills_its_worker_and_the_pool_keeps_serving(bad: str) -> None:
    assert len(FAKE_HEADER) == 20
    assert len(GARBAGE) == 64
    async with FunctionPool(1, worker="process", restart=RestartPolicy(delay=0.01)) as pool:
        before = _rss()
        pid = pool.snapshot().workers[0].pid
        async with pool.events.subscribe("worker.log") as logs:
            culprit = pool.add_task(write_to_channel, BAD_STREAMS[bad])
            later = [pool.add_task(f.add, i, 1) for i in range(4)]  # queued behind it
            async with asyncio.timeout(WAIT):
                exc = await settle(culprit)
                assert isinstance(exc, WorkerCrashed), repr(exc)
                assert "channel broken" in str(exc)
                assert (exc.worker_id, exc.signal) == (0, signal.SIGKILL)
                assert [await t for t in later] == [1, 2, 3, 4]  # unstarted: rerun, once
            said = await collect_until(logs, lambda e: "channel broken" in e.line)
        assert said[-1].stream == "stderr"
        assert (culprit.started_at is not None) and all(t.worker_id == 0 for t in later)
        snap = pool.snapshot()
        assert snap.workers[0].restarts == 1
        assert snap.workers[0].pid != pid
        assert pool.status("failed") == 1
        grown = _rss() - before
        assert grown < RSS_SLACK, f"the pool grew by {grown / MiB:.0f} MiB"


@pytest.mark.uvloop
async def test_a_start_read_together_with_the_bad_frame_still_counts() -> None:
    """``Started`` and the garbage behind it arrive in one read: the call had begun, so it
    fails once as crashed rather than going back to the queue to break the next worker."""
    async with Gate() as gate, FunctionPool(1, worker="process", restart=RestartPolicy(delay=0.01)) as pool:
        transport = process_worker(pool)._channel.transport
        transport.pause_reading()  # both wait in the socket until the worker has written them
        try:
            culprit = pool.add_task(write_then_arrive, GARBAGE, gate.path, "wrote")
            await gate.arrived("wrote")
        finally:
            transport.resume_reading()
        async with asyncio.timeout(WAIT):
            assert isinstance(await settle(culprit), WorkerCrashed)
            assert await pool.add_task(f.add, 1, 1) == 2
        assert list(gate.arrivals) == ["wrote"]
        assert pool.snapshot().workers[0].restarts == 1


async def test_a_lying_header_under_the_limit_costs_nothing() -> None:
    """A header claiming 512 MiB (within the limit) whose bytes never come: the pool allocates
    for what arrives, not for what is announced; the task ends by its timeout."""
    async with FunctionPool(1, worker="process", restart=RestartPolicy(delay=0.01)) as pool:
        before = _rss()
        culprit = pool.add_task(write_to_channel, HEADER.pack(512 * MiB) + b"\0" * 60, timeout=1.0)
        async with asyncio.timeout(WAIT):
            assert isinstance(await settle(culprit), TaskTimeout)
            assert await pool.add_task(f.add, 1, 2) == 3
        grown = _rss() - before
        assert grown < RSS_SLACK, f"the pool grew by {grown / MiB:.0f} MiB"


async def test_max_message_size_bounds_what_a_worker_sends() -> None:
    """The limit is the pool's option: a worker refuses to send more (SerializationError, the
    worker keeps serving); one that sends more anyway is killed."""
    async with FunctionPool(1, worker="process", max_message_size=MiB, restart=RestartPolicy(delay=0.01)) as pool:
        pid = pool.snapshot().workers[0].pid
        async with asyncio.timeout(WAIT):
            assert await pool.add_task(result_of, MiB) == b"\x01" * MiB  # at the limit: fine
            exc = await settle(pool.add_task(result_of, MiB + 1))
            assert isinstance(exc, SerializationError), type(exc)
            assert "over the limit" in str(exc.__cause__)
            assert pool.snapshot().workers[0].pid == pid
            exc = await settle(pool.add_task(write_to_channel, HEADER.pack(MiB + 1)))
            assert isinstance(exc, WorkerCrashed), repr(exc)
            assert f"a frame of {MiB + 1} bytes is over the limit of {MiB} bytes" in str(exc)
            assert await pool.add_task(f.add, 2, 2) == 4
        assert pool.snapshot().workers[0].pid != pid


# --- stopped processes -----------------------------------------------------------------------


@pytest.mark.uvloop
@pytest.mark.parametrize("arg_size", [0, 32 * MiB])
async def test_a_stopped_idle_worker_is_replaced_and_its_tasks_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, arg_size: int
) -> None:
    """SIGSTOP on an idle worker: the calls handed to it never start; after START_DEADLINE it
    is killed and they run on its replacement. A call still being written (an argument too
    large for the socket's buffers) gets a second deadline to show the worker reads it."""
    deadline = 0.5
    monkeypatch.setattr(process, "START_DEADLINE", deadline)
    pool = FunctionPool(1, worker="process", restart=RestartPolicy(delay=0.01), log_dir=tmp_path, name="stop")
    async with pool:
        pid = pool.snapshot().workers[0].pid
        assert pid is not None
        async with pool.events.subscribe("worker.exited", "worker.log") as sub:
            os.kill(pid, signal.SIGSTOP)
            try:
                start = time.monotonic()
                tasks = [pool.add_task(x.size_of, b"\x7f" * arg_size) for _ in range(3)]
                tasks.append(pool.add_task(x.pid))
                async with asyncio.timeout(WAIT):
                    events = await collect_until(sub, lambda e: e.topic == "worker.exited")
                    detected = time.monotonic() - start
                    assert await asyncio.gather(*tasks[:3]) == [arg_size] * 3
                    assert await tasks[3] != pid  # the replacement ran them
                    done = time.monotonic() - start
            finally:
                if not gone(pid):
                    os.kill(pid, signal.SIGKILL)
        deadlines = 2 if arg_size else 1
        assert deadline * deadlines <= detected < deadline * deadlines + 1.0, detected
        assert done < deadline * deadlines + 3.0, done
        assert events[-1].signal == signal.SIGKILL
        assert "frozen" in events[-1].reason
        assert any(e.topic == "worker.log" and e.stream == "stderr" and "frozen" in e.line for e in events)
        assert pool.status("started") == 4  # each ran once: none had started on the stopped worker
        assert pool.snapshot().workers[0].restarts == 1
    assert "[stderr] taskpool: no answer within 0.5 s" in (tmp_path / "stop-worker-0.log").read_text()


async def test_a_worker_in_a_long_call_is_not_deemed_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline only times a worker that runs nothing: a sync call longer than it, with
    calls waiting behind it, is left alone."""
    monkeypatch.setattr(process, "START_DEADLINE", 0.2)
    async with FunctionPool(1, worker="process") as pool:
        pid = pool.snapshot().workers[0].pid
        async with asyncio.timeout(WAIT):
            long = pool.add_task(time.sleep, 1.0)
            after = [pool.add_task(f.add, i, 0) for i in range(3)]
            await long
            assert [await t for t in after] == [0, 1, 2]
        snap = pool.snapshot()
        assert (snap.workers[0].pid, snap.workers[0].restarts) == (pid, 0)


# --- output ----------------------------------------------------------------------------------


@pytest.mark.uvloop
async def test_a_20_mb_line_arrives_whole_in_pieces(tmp_path: Path) -> None:
    n = 20 * 10**6
    expected = (bytes(range(33, 127)) * (n // 94 + 1))[:n].decode()
    with structlog.testing.capture_logs() as logs:
        async with FunctionPool(1, worker="process", log_dir=tmp_path, name="long") as pool:
            async with pool.events.subscribe("worker.log") as sub:
                async with asyncio.timeout(WAIT):
                    assert await pool.add_task(long_line, n, "a normal line") == n
                events = await collect_until(sub, lambda e: e.line == "a normal line")
    # Compared as flags: a failing comparison of 20 MB strings would print them.
    pieces = [e.line for e in events[:-1] if e.stream == "stdout"]
    assert max(map(len, pieces)) <= MAX_LINE
    assert (len(pieces), sum(map(len, pieces))) == (-(-n // MAX_LINE), n)
    exact = "".join(pieces) == expected
    assert exact, "the pieces joined differ from the line written"
    logged = [r["line"] for r in logs if r.get("event") == "worker output" and r["stream"] == "stdout"]
    exact = "".join(logged[: len(pieces)]) == expected
    assert exact, "structlog's pieces differ from the line written"
    assert logged[len(pieces)] == "a normal line"
    text = (tmp_path / "long-worker-0.log").read_text()
    head, _, rest = text.partition("a normal line\n")
    exact = head.replace("\n", "") == expected
    assert exact, "the log file's pieces differ from the line written"
    assert rest == ""


async def test_endless_output_leaves_the_pool_responsive() -> None:
    """A task floods stdout for a second: the other worker's tasks keep their pace, a
    subscriber that does not read loses the oldest events (counted), memory stays bounded."""
    async with FunctionPool(2, worker="process") as pool:
        before = _rss()
        async with pool.events.subscribe("worker.log", maxsize=100) as sub:
            flooding = pool.add_task(flood, 1.0)
            slowest = 0.0
            async with asyncio.timeout(WAIT):
                while not flooding.done():
                    t0 = time.monotonic()
                    assert await pool.add_task(f.add, 1, 1) == 2
                    slowest = max(slowest, time.monotonic() - t0)
                lines = await flooding
            assert sub.dropped > 0
            assert len(sub._buffer) <= 100
        assert lines > 1000
        assert slowest < 0.5, f"a 1 + 1 task took {slowest:.3f} s during the flood"
        grown = _rss() - before
        assert grown < RSS_SLACK, f"the pool grew by {grown / MiB:.0f} MiB"


# --- closing a pool of hostile workers -------------------------------------------------------


@pytest.mark.uvloop
async def test_closing_with_a_flooding_and_a_stopped_worker_is_bounded() -> None:
    """One worker floods its output without end, the other is stopped: ``aclose(grace=)``
    still returns within ``grace`` + 1 s, the flooding task cancelled."""
    grace = 0.5
    pool = FunctionPool(2, worker="process")
    await pool.start()
    stopped = None
    try:
        async with pool.events.subscribe("worker.log") as sub:
            flooding = pool.add_task(flood, 30.0)
            await collect_until(sub, lambda e: e.line.startswith("flood line"))
        assert flooding.worker_id is not None
        stopped = pool.snapshot().workers[1 - flooding.worker_id].pid
        assert stopped is not None
        os.kill(stopped, signal.SIGSTOP)
        start = time.monotonic()
        await pool.aclose(grace=grace)
        took = time.monotonic() - start
    finally:
        await pool.aclose(cancel=True, grace=0)  # a no-op once closed
        if stopped is not None and not gone(stopped):
            os.kill(stopped, signal.SIGKILL)
    assert took < grace + 1.0, took
    assert isinstance(await settle(flooding), TaskCancelled)
