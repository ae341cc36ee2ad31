"""``taskpool.Progress`` and ``map(..., progress=...)``: drawn on terminals only, counted always.

Terminals are real pseudo terminals (``os.openpty()``); the rate and ETA arithmetic runs on
an injected clock, so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import io
import math
import os
import re
import select
import struct
import sys
import termios
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, TextIO

import pytest

from taskpool import FunctionPool, Progress
from taskpool._demo import Console, watch
from taskpool._progress import RATE_WINDOW, format_duration, format_rate

from . import _funcs as f

CLEAR = "\r\x1b[K"
DEADLINE = 10.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal:
    """A pseudo terminal: ``file`` is its slave end as a text file; ``read`` drains the master."""

    def __init__(self, columns: int = 100) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        self.file: TextIO = open(slave, "w", encoding="utf-8", closefd=True)  # noqa: SIM115
        self.seen = ""

    def read_until(self, pattern: str) -> str:
        """Everything the terminal showed, once ``pattern`` (a regex) is in it."""
        deadline = time.monotonic() + DEADLINE
        while not re.search(pattern, self.seen):
            left = deadline - time.monotonic()
            assert left > 0, f"{pattern!r} never shown; the terminal has: {self.seen!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                self.seen += os.read(self.master, 65536).decode()
        return self.seen

    def close(self) -> None:
        self.file.close()
        os.close(self.master)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    yield term
    term.close()


def drawn(out: io.StringIO) -> list[str]:
    """The lines a progress drew on ``out``, in order."""
    return [part for part in out.getvalue().split(CLEAR) if part]


# --- drawing ----------------------------------------------------------------------------


def test_draws_count_rate_eta_and_a_summary_on_a_terminal(terminal: Terminal) -> None:
    clock = Clock()
    with Progress(10, label="items", file=terminal.file, refresh=0, _clock=clock) as p:
        assert p.enabled  # a terminal: drawn without being asked
        for _ in range(4):
            clock.now += 0.5
            p.advance()
        p.advance(failed=True)
    shown = terminal.read_until(r"items: 5/10 done in [\d.]+s")
    assert re.search(r"items \[#+\.+\] 4/10  40%  2\.0/s  ETA 0:03", shown)  # 6 left at 2 per second
    assert "1 failed" in shown
    assert shown.rstrip().endswith("items: 5/10 done in 2.0s (2.5/s), 1 failed")
    assert "\x1b[K" in shown  # the bar's line was cleared before the summary


def test_the_line_fits_the_terminal() -> None:
    term = Terminal(columns=60)
    try:
        clock = Clock()
        with Progress(1000, label="fits", file=term.file, refresh=0, _clock=clock) as p:
            clock.now += 1
            p.advance(10)
        shown = term.read_until("fits: 10/1000 done")
    finally:
        term.close()
    bars = [line for line in re.split(r"\r\x1b\[K|\r?\n", shown) if line.startswith("fits [")]
    assert bars
    assert all(len(line) <= 59 for line in bars)


def test_a_narrow_terminal_keeps_the_numbers_and_drops_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")  # a StringIO has no terminal: $COLUMNS decides
    out = io.StringIO()
    clock = Clock()
    p = Progress(100, label="narrow", file=out, enabled=True, refresh=0, _clock=clock)
    clock.now += 1
    p.advance(50)
    last = drawn(out)[-1]
    assert "[" not in last
    assert last.startswith("narrow 50/100")
    assert len(last) <= 39


def test_nothing_is_written_when_the_file_is_not_a_terminal(tmp_path: Any) -> None:
    out = io.StringIO()
    with open(tmp_path / "log", "w", encoding="utf-8") as log:
        for file in (out, log):
            with Progress(3, file=file, refresh=0) as p:
                assert not p.enabled
                p.advance(3)
            assert p.done == 3  # still counted
        assert log.tell() == 0
    assert out.getvalue() == ""


def test_enabled_false_writes_nothing_even_on_a_terminal(terminal: Terminal) -> None:
    with Progress(3, file=terminal.file, enabled=False, refresh=0) as p:
        p.advance(3)
        p.write("a line of ours")
    shown = terminal.read_until("a line of ours")
    assert shown.strip() == "a line of ours"  # the line itself; no bar and no summary


def test_write_prints_above_the_bar_and_redraws_it() -> None:
    out = io.StringIO()
    clock = Clock()
    p = Progress(4, label="w", file=out, enabled=True, refresh=0, _clock=clock)
    p.write("before any bar")
    clock.now += 1
    p.advance()
    p.write("hello")
    p.close()
    text = out.getvalue()
    assert text.startswith("before any bar\n")  # no bar yet: nothing to clear
    after = text.split(f"{CLEAR}hello\n", 1)[1]
    assert after.startswith("w [")  # the bar, drawn again under the line
    assert after.endswith("w: 1/4 done in 1.0s (1.0/s)\n")


def test_redraws_are_time_based_not_per_item() -> None:
    out = io.StringIO()
    clock = Clock()
    p = Progress(None, file=out, enabled=True, refresh=0.1, _clock=clock)
    for _ in range(10_000):
        p.advance()
    assert len(drawn(out)) == 1  # the first change draws; the rest waits for the clock
    clock.now += 0.1
    p.advance()
    assert len(drawn(out)) == 2
    assert drawn(out)[-1].startswith("10001 done")


def test_many_advances_stay_cheap() -> None:
    out = io.StringIO()
    p = Progress(1_000_000, file=out, enabled=True)  # the real clock; redrawn every 0.1 s
    start = time.perf_counter()
    for _ in range(200_000):
        p.advance()
    took = time.perf_counter() - start
    assert len(drawn(out)) <= took / 0.1 + 2
    assert p.done == 200_000


@pytest.mark.asyncio
async def test_a_throttled_change_is_drawn_later_by_the_loop() -> None:
    out = io.StringIO()
    p = Progress(5, label="late", file=out, enabled=True, refresh=0.05)
    p.advance()
    p.advance()  # within the throttle: not drawn now...
    assert drawn(out)[-1].startswith("late [") and " 1/5 " in drawn(out)[-1]
    deadline = time.monotonic() + DEADLINE
    while " 2/5 " not in drawn(out)[-1]:  # ...but once the throttle allows, with no further change
        assert time.monotonic() < deadline, out.getvalue()
        await asyncio.sleep(0.01)
    p.close()
    assert p._pending is None


def test_unknown_total_shows_count_and_rate_without_eta(terminal: Terminal) -> None:
    clock = Clock()
    with Progress(label="stream", file=terminal.file, refresh=0, _clock=clock) as p:
        clock.now += 2
        p.advance(30)
        assert p.eta is None
    shown = terminal.read_until("stream: 30 done in 2.0s")
    assert "stream 30 done  15/s" in shown
    assert "ETA" not in shown and "%" not in shown


def test_close_is_idempotent_and_stops_drawing() -> None:
    out = io.StringIO()
    p = Progress(2, file=out, enabled=True, refresh=0)
    p.advance()
    p.close()
    text = out.getvalue()
    p.close()
    p.advance()  # counted, not drawn
    assert out.getvalue() == text
    assert p.closed and p.done == 2
    assert text.count("done in") == 1


@pytest.mark.asyncio
async def test_async_with_closes_it() -> None:
    out = io.StringIO()
    async with Progress(1, label="a", file=out, enabled=True) as p:
        p.advance()
    assert p.closed
    assert re.search(r"a: 1/1 done in [\d.]+s.*\n$", out.getvalue())


def test_a_broken_file_disables_it_instead_of_raising() -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError

    p = Progress(2, file=Broken(), enabled=True, refresh=0)
    p.advance()
    assert not p.enabled
    p.advance()
    p.close()
    assert p.done == 2


# --- arithmetic -------------------------------------------------------------------------


def test_rate_and_eta_follow_the_clock() -> None:
    clock = Clock()
    p = Progress(100, enabled=False, refresh=0, _clock=clock)
    assert (p.rate, p.eta) == (0.0, None)  # nothing measured yet
    clock.now += 2
    p.advance(10)
    assert p.rate == pytest.approx(5.0)
    assert p.eta == pytest.approx(18.0)  # 90 left at 5 per second
    clock.now += 2  # a stall lowers the rate as it goes
    assert p.rate == pytest.approx(2.5)
    assert p.eta == pytest.approx(36.0)
    assert p.elapsed == pytest.approx(4.0)
    p.advance(90)
    assert p.eta == 0.0


def test_the_rate_forgets_what_is_older_than_its_window() -> None:
    clock = Clock()
    p = Progress(None, enabled=False, refresh=0, _clock=clock)
    for _ in range(int(RATE_WINDOW)):  # 100 items/s for a whole window
        clock.now += 1
        p.advance(100)
    for _ in range(int(RATE_WINDOW) * 2):  # then 10 items/s for two windows
        clock.now += 1
        p.advance(10)
    assert 10.0 <= p.rate < 12.0  # measured over the recent window only, not the whole run


def test_formatting() -> None:
    assert [format_rate(r) for r in (0.0, 0.5, 8.25, 812.4, 43_210.0)] == ["0/s", "0.5/s", "8.2/s", "812/s", "43k/s"]
    assert [format_duration(s) for s in (0.2, 5, 754, 3723)] == ["0:01", "0:05", "12:34", "1:02:03"]


def test_total_can_be_set_and_track_grows_it() -> None:
    p = Progress(enabled=False)
    assert p.total is None
    p.total = 7
    assert p.total == 7
    p.total = None
    assert p.eta is None


# --- tracking tasks ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_track_counts_tasks_as_they_settle(kind: str) -> None:
    async with FunctionPool(2, worker=kind) as pool:
        settled = pool.add_task(f.square, 3)
        await settled
        with Progress(enabled=False) as p:
            assert p.track(settled) is p
            assert (p.total, p.done) == (1, 1)  # a settled task counts at once
            p.track([pool.add_task(f.square, i) for i in range(5)])
            p.track(pool.add_task(f.fail, "no") for _ in range(2))
            assert p.total == 8
            await pool.join()
        assert (p.done, p.failed) == (8, 2)


@pytest.mark.asyncio
async def test_a_cancelled_tracked_task_counts_as_failed() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        p = Progress(enabled=False)
        task = pool.add_task(asyncio.sleep, 30)
        p.track(task)
        task.cancel()
        await pool.join()
    assert (p.done, p.failed) == (1, 1)


@pytest.mark.parametrize("bad", [3, "tasks", [1, 2], [None]])
def test_track_wants_tasks(bad: Any) -> None:
    p = Progress(enabled=False)
    with pytest.raises(TypeError, match="track"):
        p.track(bad)
    assert p.total is None  # nothing half-tracked


# --- map --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_map_progress_draws_on_a_terminal(terminal: Terminal, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", terminal.file)  # progress=True draws on stderr
    async with FunctionPool(2, worker="thread") as pool:
        out = [r async for r in pool.map(f.square, range(500), progress=True)]
    assert out == [i * i for i in range(500)]
    shown = terminal.read_until(r"square: 500/500 done in [\d.]+s")
    assert re.search(r"square \[[#.]+\] \d+/500 +\d+%  [\d.k]+/s  ETA", shown)


@pytest.mark.asyncio
async def test_map_progress_shows_nothing_without_a_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    async with FunctionPool(2, worker="inline") as pool:
        out = [r async for r in pool.map(f.square, range(50), progress=True)]
    assert out == [i * i for i in range(50)]
    assert capfd.readouterr() == ("", "")


@pytest.mark.asyncio
async def test_map_counts_items_not_chunks_and_grows_a_shared_total(kind: str) -> None:
    p = Progress(enabled=False)
    async with FunctionPool(2, worker=kind) as pool:
        assert len([r async for r in pool.map(f.square, range(100), chunksize=7, progress=p)]) == 100
        assert (p.total, p.done) == (100, 100)
        assert pool.status("total") == 15  # 15 chunks, counted as 100 items

        async def agen() -> AsyncIterator[int]:
            for i in range(20):
                yield i

        assert len([r async for r in pool.map(f.square, agen(), progress=p)]) == 20
        assert (p.total, p.done) == (100, 120)  # no len(): the total stays as it was
        assert len([r async for r in pool.map(f.square, [1, 2, 3], progress=p)]) == 3
    assert (p.total, p.done, p.failed) == (103, 123, 0)
    assert not p.closed  # the caller's: the map leaves it open


@pytest.mark.asyncio
async def test_map_counts_the_failure_that_ends_it() -> None:
    p = Progress(enabled=False)
    async with FunctionPool(2, worker="inline") as pool:
        with pytest.raises(ValueError, match="bad input 5"):
            async for _ in pool.map(functools.partial(f.fail_on, 5), range(10), chunksize=1, progress=p):
                pass
    assert p.failed == 1
    assert p.done <= 10


@pytest.mark.asyncio
async def test_map_closes_its_own_progress_when_it_ends(terminal: Terminal, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", terminal.file)
    async with FunctionPool(2, worker="inline") as pool:
        results = pool.map(f.square, iter(range(1000)), window=2, chunksize=1, progress=True)
        assert await anext(results) == 0
        await results.aclose()  # type: ignore[attr-defined]  # left early: the summary still replaces the bar
    shown = terminal.read_until(r"square: \d+ done in")
    assert "ETA" not in shown  # a plain iterator has no len(): no total, no ETA


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", ["yes", 1, None, object()])
async def test_map_rejects_a_bad_progress(bad: Any) -> None:
    async with FunctionPool(1, worker="inline") as pool:
        with pytest.raises(TypeError, match="progress must be a bool or a Progress"):
            pool.map(f.square, range(3), progress=bad)


# --- bad arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"total": -1}, ValueError, "total must be >= 0"),
        ({"total": 1.5}, TypeError, "total must be an int"),
        ({"total": True}, TypeError, "total must be an int"),
        ({"label": 3}, TypeError, "label must be a str"),
        ({"enabled": "yes"}, TypeError, "enabled must be a bool"),
        ({"refresh": -0.1}, ValueError, "refresh must be"),
        ({"refresh": math.nan}, ValueError, "refresh must be"),
        ({"refresh": math.inf}, ValueError, "refresh must be"),
        ({"refresh": "fast"}, TypeError, "refresh must be"),
        ({"file": object()}, TypeError, "file must be"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Progress(**kwargs)


def test_bad_advance_and_total() -> None:
    p = Progress(enabled=False)
    with pytest.raises(ValueError, match="n >= 0"):
        p.advance(-1)
    with pytest.raises(TypeError, match="needs an int"):
        p.advance(1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs an int"):
        p.advance(True)
    with pytest.raises(ValueError, match="total must be >= 0"):
        p.total = -3
    assert (p.done, p.total) == (0, None)


# --- the demo ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_demo_bar_follows_a_pool_and_leaves_a_summary() -> None:
    out = io.StringIO()
    console = Console("bar", out)
    pool = FunctionPool(2, worker="inline", name="demo-bar")
    async with pool:
        watcher = asyncio.ensure_future(watch(pool, console))
        async with asyncio.timeout(DEADLINE):
            while not pool.events.wants("task.succeeded"):  # until the watcher listens
                await asyncio.sleep(0)
        tasks = [pool.add_task(f.square, i) for i in range(3)] + [pool.add_task(f.fail, "no")]
        await asyncio.gather(*tasks, return_exceptions=True)
        console.print("a line", 42)
    async with asyncio.timeout(DEADLINE):
        await watcher  # ends when the pool closes
    text = out.getvalue()
    assert "a line 42\n" in text
    assert text.endswith("\n") and "demo-bar: 4/4 done in" in text.splitlines()[-1]
    assert text.splitlines()[-1].endswith(", 1 failed")


@pytest.mark.asyncio
async def test_map_never_asks_a_lazy_input_for_its_length(monkeypatch: pytest.MonkeyPatch) -> None:
    class Declines:
        def __iter__(self) -> Iterator[int]:
            return iter([1, 2])

        def __len__(self) -> int:
            raise TypeError("I do not count")

    async with FunctionPool(1, worker="inline") as pool:
        huge = pool.map(f.square, range(10**20))  # len() would overflow
        assert await anext(huge) == 0
        await huge.aclose()
        assert [v async for v in pool.map(f.square, Declines())] == [1, 4]
        assert [v async for v in pool.map(f.square, Declines(), progress=True)] == [1, 4]
        monkeypatch.setattr(sys, "stderr", None)  # no console at all (pythonw, some services)
        assert [v async for v in pool.map(f.square, [3], progress=True)] == [9]
