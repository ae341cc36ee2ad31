"""What ``taskpool top`` draws: one status from the status app (``GET /status``) as lines of text.

Pure functions, no I/O, except the terminal's own handling at the end (:class:`Screen`,
:func:`terminal`): :func:`render` fits a frame to a terminal's width and height (or to
neither, for plain output), and tolerates missing or odd fields, since the server may be another
taskpool version. Every value from the server is cleaned of control characters before it can
reach a terminal.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["ENTER", "LEAVE", "SGR", "Line", "Screen", "Status", "clean", "plain", "render", "terminal"]

ENTER = "\x1b[?1049h\x1b[?25l"  # alternate screen, hide the cursor
LEAVE = "\x1b[?25h\x1b[?1049l"  # show the cursor, leave the alternate screen

Status = dict[str, Any]
Line = tuple[str, str]  # (style, text): style names a colour in SGR, "" for none

SGR = {"head": "7", "thead": "1", "fail": "31", "warn": "1;33", "dead": "31", "restarting": "33"}
_CONTROL = dict.fromkeys([*range(32), *range(127, 160)], " ")  # C0, DEL and C1 (0x9b is CSI to some)


def clean(value: Any, limit: int = 200) -> str:
    """A server-given value as one safe line: no escape sequences or newlines reach the terminal."""
    return "-" if value is None else str(value)[:limit].translate(_CONTROL)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _dur(value: Any) -> str:
    v = _num(value)
    if v is None:
        return "-"
    if v < 0.001:
        return f"{v * 1e6:.0f}us"
    if v < 1:
        return f"{v * 1e3:.1f}ms" if v < 0.01 else f"{v * 1e3:.0f}ms"
    if v < 60:
        return f"{v:.2f}s"
    if v < 3600:
        return f"{int(v // 60)}m{int(v % 60):02d}s"
    return f"{int(v // 3600)}h{int(v % 3600 // 60):02d}m"


def _clock(value: Any) -> str:
    v = _num(value)
    if v is None:
        return "-"
    try:
        return time.strftime("%H:%M:%S", time.localtime(v))
    except (OverflowError, OSError, ValueError):  # a time no clock shows
        return "-"


def _pct(value: Any) -> str:
    v = _num(value)
    return "-" if v is None else f"{v * 100:.0f}%"


def _wrap(label: str, items: list[str], width: int | None) -> list[str]:
    """``label`` then ``items``, two spaces apart, wrapped to ``width`` under the label."""
    lines, line = [], f"{label:<9}"
    for item in items:
        if width is not None and len(line) > 9 and len(line) + 2 + len(item) > width:
            lines.append(line)
            line = " " * 9
        line += ("  " if len(line) > 9 else "") + item
    return [*lines, line]


def _timing(label: str, hist: Any) -> str:
    h = hist if isinstance(hist, dict) else {}
    n = clean(h.get("count", 0), 12)
    return f"{label} p50 {_dur(h.get('p50'))} p90 {_dur(h.get('p90'))} p99 {_dur(h.get('p99'))} (n={n})"


def _worker_row(w: dict[str, Any]) -> Line:
    where = w.get("pid") if w.get("pid") is not None else w.get("thread_name")
    if w.get("node"):
        where = f"{w['node']}:{where}" if where is not None else w["node"]
    role = "" if w.get("role", "pool") == "pool" else f"{clean(w.get('role'))} {clean(w.get('name'), 40)}"
    state = clean(w.get("state"), 12)
    task = w.get("current_task")
    text = (
        f"{clean(w.get('id'), 6):>5}  {state:<10}  {_pct(w.get('utilisation')):>4}  "
        f"{'' if task is None else clean(task, 10):>7}  {clean(w.get('tasks_done', 0), 9):>7}  "
        f"{clean(w.get('restarts', 0), 6):>4}  {clean(where, 16):<16}  {role}"
    )
    return (state if state in SGR else "", text.rstrip())


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _bar(util: float | None) -> str:
    if util is None:
        return "-"
    filled = round(min(max(util, 0.0), 1.0) * 10)
    return f"[{'#' * filled}{'.' * (10 - filled)}] {util * 100:.0f}%"


def _link_word(link: str) -> str:
    """The connection state in one word, for the header."""
    if link.startswith("polling"):
        return "polling"
    return link.split(",", 1)[0].split(" (", 1)[0]


_COUNTS = ("queued", "active", "completed", "succeeded", "failed", "cancelled", "remaining", "total")
_THEAD = f"{'ID':>5}  {'STATE':<10}  {'UTIL':>4}  {'TASK':>7}  {'DONE':>7}  {'RST':>4}  {'PID/NODE':<16}  ROLE"


def render(status: Status, *, width: int | None = None, height: int | None = None, link: str = "") -> list[Line]:
    """The frame for one status: ``(style, text)`` lines fitting ``width`` x ``height`` (None: no limit).

    ``link`` says how the view is connected (``live``, ``polling ...``, ``disconnected ...``); a
    poll or a disconnection gets a line of its own. Every value from the server is cleaned of control characters,
    and a missing or odd field shows as ``-`` rather than failing.
    """
    s = status
    counts = _dict(s.get("counts"))
    title, name = clean(s.get("title") or s.get("name"), 60), clean(s.get("name"), 60)
    head = f" {title}{'' if title == name else f' ({name})'}  {clean(s.get('kind'), 20)} x{clean(s.get('pool_size'))}"
    head += f"  {clean(s.get('state'), 12)}"
    right = f"{_link_word(link)}  {_clock(s.get('time'))} ".lstrip()
    head = head.ljust(width - len(right)) + right if width is not None else f"{head}  {right}"
    top: list[Line] = [("head", head)]
    if link not in ("", "live", "connecting"):
        top.append(("warn" if link.startswith("disconnected") else "", f" {clean(link)}"))
    tasks = [f"{k} {clean(counts[k])}" for k in _COUNTS if k in counts]
    tasks += [f"{clean(k, 20)} {clean(v)}" for k, v in counts.items() if k not in _COUNTS and k != "started"]
    queue_depth = s.get("queue_depth", counts.get("queued"))
    sections = {
        "Tasks": tasks or ["-"],
        "Rates": [f"{clean(k, 20)} {_num(v) or 0.0:.1f}/s" for k, v in _dict(s.get("rates")).items()] or ["-"],
        "Queue": [
            f"depth {clean(queue_depth)}",
            f"oldest {_dur(s.get('queue_oldest_age'))}",
            f"utilisation {_bar(_num(s.get('utilisation')))}",
        ],
        "Timing": [_timing("run", s.get("run_seconds")), _timing("wait", s.get("wait_seconds"))],
        "Restarts": [f"{clean(k, 20)} {clean(v)}" for k, v in _dict(s.get("restarts")).items()] or ["none"],
    }
    for label, items in sections.items():
        top += [("", line) for line in _wrap(label, items, width)]

    workers = [w for w in _list(s.get("workers")) if isinstance(w, dict)]
    failures = [
        (
            "fail",
            f"  #{clean(f.get('id'), 10):<6} {_clock(f.get('finished_at'))}  w{clean(f.get('worker_id'), 6):<3} "
            f"{clean(f.get('meta'))}  {clean(f.get('error'), 300)}",
        )
        for f in _list(s.get("failures"))
        if isinstance(f, dict)
    ]
    shown = workers
    if height is not None:  # failures keep up to 3 rows (and a title); workers get the rest
        room = height - len(top) - 2 - (2 + min(3, len(failures)) if failures else 0)
        if len(workers) > room:
            shown = workers[: max(0, room - 1)]
    lines = [*top, ("", ""), ("thead", _THEAD), *(_worker_row(w) for w in shown)]
    if len(shown) < len(workers):
        lines.append(("", f"  ... {len(workers) - len(shown)} more workers"))
    if failures:
        lines += [("", ""), ("thead", f"Latest failures ({len(failures)})"), *failures]
    if height is not None:
        lines = lines[:height]
    if width is not None:
        lines = [(style, text[:width]) for style, text in lines]
    return lines


def plain(lines: list[Line]) -> str:
    """A frame as plain text (no escape sequences), one line each."""
    return "".join(text.rstrip() + "\n" for _, text in lines)


# --- the terminal -------------------------------------------------------------------------


class Screen:
    """Full-screen drawing on a terminal: each frame overwrites the last, line by line."""

    def __init__(self, out: TextIO, colour: bool) -> None:
        self.out = out
        self.colour = colour

    def draw(self, lines: list[Line], height: int) -> None:
        buf = []
        for row, (style, text) in enumerate(lines[:height], 1):
            sgr = SGR.get(style) if self.colour else None
            # Erase first, then write: an erase after a full-width line would eat its last column.
            buf.append(f"\x1b[{row};1H\x1b[2K" + (f"\x1b[{sgr}m{text}\x1b[0m" if sgr else text))
        buf.append(f"\x1b[{len(lines) + 1};1H\x1b[J" if len(lines) < height else "")
        self.out.write("".join(buf))
        self.out.flush()


@contextlib.contextmanager
def terminal(out: TextIO, key_fd: int | None) -> Iterator[None]:
    """Alternate screen, hidden cursor and (when ``key_fd``) cbreak input, restored however the block ends."""
    saved = None
    if key_fd is not None:
        import termios
        import tty

        saved = termios.tcgetattr(key_fd)
        tty.setcbreak(key_fd)  # keys arrive one by one, unechoed; Ctrl-C still raises SIGINT
    try:
        out.write(ENTER + "\x1b[2J")
        out.flush()
        yield
    finally:
        try:
            out.write("\x1b[0m" + LEAVE)
            out.flush()
        finally:
            if saved is not None and key_fd is not None:
                import termios

                termios.tcsetattr(key_fd, termios.TCSADRAIN, saved)
