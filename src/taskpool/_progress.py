"""``Progress``: a one-line progress display (count, bar, rate, ETA) for terminals only.

Standard library only, so ``import taskpool`` stays light. Drawing is time-based: an
``advance`` costs a counter update and a clock read, and the line is redrawn at most every
``refresh`` seconds, so counting a million items does not slow them measurably.
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Self, TextIO

from ._task import Task

__all__ = ["RATE_WINDOW", "Progress", "format_duration", "format_rate"]

#: Seconds of recent history the rate (and so the ETA) is measured over.
RATE_WINDOW = 10.0
#: The least seconds between two samples of that history (it stays small at any rate).
SAMPLE_EVERY = RATE_WINDOW / 50

_CLEAR = "\r\x1b[K"  # back to the start of the line, then erase to its end


def _check_total(total: object) -> int | None:
    if total is None:
        return None
    if not isinstance(total, int) or isinstance(total, bool):
        raise TypeError(f"total must be an int or None, got {type(total).__name__}")
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    return total


def _is_tty(file: TextIO) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, OSError, ValueError):  # no isatty, or a closed file
        return False


def _width(file: TextIO) -> int:
    """The terminal's columns: the file's own terminal, else $COLUMNS or stdout's, else 80."""
    try:
        columns = os.get_terminal_size(file.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    return columns if columns > 0 else shutil.get_terminal_size((80, 24)).columns


def format_rate(rate: float) -> str:
    """``0.52/s``, ``8.3/s``, ``812/s``, ``43k/s``."""
    if rate < 10:
        return f"{rate:.2g}/s" if rate < 1 else f"{rate:.1f}/s"
    if rate < 10_000:
        return f"{rate:.0f}/s"
    return f"{rate / 1000:.0f}k/s"


def format_duration(seconds: float) -> str:
    """``0:05``, ``12:34``, ``1:02:03`` (rounded up to the second)."""
    s = math.ceil(max(0.0, seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """A progress line on a terminal: label, bar, ``done/total``, percent, rate, ETA, failures.

    Feed it with :meth:`advance`, or let it follow tasks with :meth:`track`; ``pool.map(...,
    progress=True)`` uses one too. While enabled it redraws one line of ``file`` at most
    every ``refresh`` seconds (and once more ``refresh`` seconds after the last change, when
    an event loop is running), prints :meth:`write` lines above it, and on :meth:`close`
    replaces it with a summary line. Disabled, it writes nothing at all (but
    :meth:`write`'s own lines) and still counts.

    Use it as a context manager (``with`` or ``async with``) to close it. It is not
    thread-safe: call it from one thread, as pool callbacks do (they run on the pool's loop).

    Args:
        total: how many items are expected; ``None`` when unknown (then no bar, no percent
            and no ETA). :meth:`track` and ``map`` grow it.
        label: shown at the start of the line and of the summary.
        file: where to draw (default: ``sys.stderr``, as it is when the progress is made).
        enabled: draw or not; ``None`` (the default) draws only when ``file`` is a terminal.
        refresh: the least seconds between two redraws (0: on every change).

    Attributes:
        label: the label (one line); may be changed.
        enabled: whether it draws; turned off for good when writing to ``file`` fails.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: ``total`` < 0, or ``refresh`` negative or not finite.
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        label: str = "",
        file: TextIO | None = None,
        enabled: bool | None = None,
        refresh: float = 0.1,
        _clock: Callable[[], float] = time.monotonic,  # for tests
    ) -> None:
        self._total = _check_total(total)
        if not isinstance(label, str):
            raise TypeError(f"label must be a str, got {type(label).__name__}")
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool or None, got {type(enabled).__name__}")
        if not isinstance(refresh, (int, float)) or isinstance(refresh, bool):
            raise TypeError(f"refresh must be a number of seconds, got {type(refresh).__name__}")
        if not math.isfinite(refresh) or refresh < 0:
            raise ValueError(f"refresh must be a finite number >= 0, got {refresh!r}")
        self._file: TextIO = sys.stderr if file is None else file
        if not callable(getattr(self._file, "write", None)):
            raise TypeError(f"file must be a text file with write(), got {type(self._file).__name__}")
        self.label: str = " ".join(label.split())  # one line, whatever it was given
        self.enabled: bool = _is_tty(self._file) if enabled is None else enabled
        self._refresh = float(refresh)
        self._clock = _clock
        self._start = _clock()
        self._done = 0
        self._failed = 0
        self._samples: collections.deque[tuple[float, int]] = collections.deque([(self._start, 0)])
        self._next_draw = -math.inf  # the first change draws at once
        self._shown = False  # the bar is on screen
        self._pending: asyncio.TimerHandle | None = None
        self._closed = False

    # --- counts ------------------------------------------------------------------------

    @property
    def total(self) -> int | None:
        """How many items are expected, or ``None`` when unknown; settable.

        Raises:
            TypeError, ValueError: when set to anything but ``None`` or an int >= 0.
        """
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        self._total = _check_total(value)
        self._changed()

    @property
    def done(self) -> int:
        """Items finished so far, failed ones included."""
        return self._done

    @property
    def failed(self) -> int:
        """Items that failed (or, for tracked tasks, were cancelled)."""
        return self._failed

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def elapsed(self) -> float:
        """Seconds since the progress was made."""
        return self._clock() - self._start

    @property
    def rate(self) -> float:
        """Items per second over the last :data:`RATE_WINDOW` seconds or so (0.0 at first)."""
        now = self._clock()
        t0, d0 = self._samples[0]
        return (self._done - d0) / (now - t0) if now > t0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until ``total`` at the current rate; ``None`` when the total is unknown or
        nothing was measured yet; 0.0 once ``done`` reached it."""
        if self._total is None:
            return None
        left = self._total - self._done
        if left <= 0:
            return 0.0
        rate = self.rate
        return left / rate if rate > 0 else None

    def advance(self, n: int = 1, *, failed: bool = False) -> None:
        """Count ``n`` more items done (and failed too, with ``failed=True``).

        Counting goes on after :meth:`close`, without drawing.

        Raises:
            TypeError: ``n`` is not an int.
            ValueError: ``n`` < 0.
        """
        # The hot path: an exact type check first, the cheapest.
        if type(n) is not int and (not isinstance(n, int) or isinstance(n, bool)):
            raise TypeError(f"advance() needs an int, got {type(n).__name__}")
        if n < 0:
            raise ValueError(f"advance() needs n >= 0, got {n}")
        self._done += n
        if failed:
            self._failed += n
        self._changed()

    def track(self, tasks: Task[Any] | Iterable[Task[Any]]) -> Self:
        """Follow tasks: each adds one to ``total`` now and advances the progress when it
        settles (a failed or cancelled task counts as failed). Returns the progress.

        Raises:
            TypeError: ``tasks`` is neither a ``Task`` nor an iterable of them.
        """
        if isinstance(tasks, Task):
            tasks = (tasks,)
        elif not isinstance(tasks, Iterable):
            raise TypeError(f"track() needs a Task or an iterable of tasks, got {type(tasks).__name__}")
        batch = list(tasks)
        for task in batch:
            if not isinstance(task, Task):
                raise TypeError(f"track() needs tasks, got {type(task).__name__}")
        self._total = (self._total or 0) + len(batch)
        for task in batch:  # a settled task calls back at once: count it after the total grew
            task.add_done_callback(self._task_done)
        self._changed()
        return self

    def _task_done(self, task: Task[Any]) -> None:
        self.advance(1, failed=task.exception() is not None)

    # --- drawing -----------------------------------------------------------------------

    def write(self, line: str = "") -> None:
        """Print ``line`` (and a newline) to ``file``, above the bar when one is shown; the
        line is printed when disabled too."""
        text = f"{line}\n"
        if self._shown:
            text = _CLEAR + text + self._line(self._clock())
        self._put(text)

    def close(self) -> None:
        """Stop drawing: replace the bar with a summary line (when enabled). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self.enabled:
            self._put((_CLEAR if self._shown else "") + self._summary() + "\n")
            self._shown = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Progress {self.label!r} {self._done}/{self._total} failed={self._failed}>"

    def _changed(self) -> None:
        now = self._clock()
        if now >= self._next_draw:
            self._tick(now)
        elif self._pending is None and self.enabled and not self._closed:
            # Redraw once the throttle allows, so the line never lags for long behind
            # the last change: the loop's clock is monotonic too.
            loop = asyncio.events._get_running_loop()
            if loop is not None:
                self._pending = loop.call_later(self._next_draw - now, self._deferred)

    def _deferred(self) -> None:
        self._pending = None
        if not self._closed:
            self._tick(self._clock())

    def _tick(self, now: float) -> None:
        samples = self._samples
        if now - samples[-1][0] >= SAMPLE_EVERY:
            samples.append((now, self._done))
            # Keep the newest sample at least RATE_WINDOW old as the base of the rate.
            while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW:
                samples.popleft()
        self._next_draw = now + self._refresh
        if self.enabled and not self._closed:
            self._put(_CLEAR + self._line(now))
            self._shown = True

    def _line(self, now: float) -> str:
        columns = _width(self._file)
        done, total = self._done, self._total
        t0, d0 = self._samples[0]
        rate = (done - d0) / (now - t0) if now > t0 else 0.0
        head = f"{self.label} " if self.label else ""
        failed = f"  {self._failed} failed" if self._failed else ""
        if total is None:
            text = f"{head}{done} done  {format_rate(rate)}{failed}"
            return text[: columns - 1]
        share = min(1.0, done / total) if total else 1.0
        eta = 0.0 if done >= total else (total - done) / rate if rate > 0 else None
        tail = (
            f" {done}/{total} {share * 100:3.0f}%  {format_rate(rate)}  "
            f"ETA {format_duration(eta) if eta is not None else '?'}{failed}"
        )
        bar_width = min(40, columns - 1 - len(head) - len(tail) - 2)
        if bar_width < 10:  # a narrow terminal: the numbers matter more than the bar
            return (head + tail.lstrip())[: columns - 1]
        filled = int(bar_width * share)
        return f"{head}[{'#' * filled}{'.' * (bar_width - filled)}]{tail}"

    def _summary(self) -> str:
        elapsed = self._clock() - self._start
        count = f"{self._done}/{self._total}" if self._total is not None else f"{self._done}"
        took = f"{elapsed:.2f}s" if elapsed < 1 else f"{elapsed:.1f}s" if elapsed < 60 else format_duration(elapsed)
        rate = f" ({format_rate(self._done / elapsed)})" if elapsed > 0 and self._done else ""
        failed = f", {self._failed} failed" if self._failed else ""
        return f"{self.label + ': ' if self.label else ''}{count} done in {took}{rate}{failed}"

    def _put(self, text: str) -> None:
        try:
            self._file.write(text)
            self._file.flush()
        except (OSError, ValueError):  # a closed terminal or pipe must not break the work
            self.enabled = False
            self._shown = False
