"""Shared helpers of the benchmarks: timing, statistics, isolation, report tables.

The parent process (``bench_*.py``, ``run.py``) never runs a peer itself. Every
(workload, peer) pair runs in a fresh interpreter started through
``python -m benchmarks._runner``, so that no peer inherits another's worker
processes, caches, imported modules or heap, and a peer that hangs is killed
after ``--timeout`` seconds and reported as ``hang``::

    parent (bench_process.py)                    child (benchmarks._runner)
    ─────────────────────────                    ──────────────────────────
    spec.json ── python -m benchmarks._runner ─▶ import target, run it on the
                 (new session, timeout)          chosen event loop, stop the
    result.json ◀──────────────────────────────  peer, check its children
    look for leftovers of the child's session    are gone, write result.json

This module is imported by the children too, so it keeps its imports light.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TextIO

import psutil

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

Status = Literal["ok", "hang", "error", "n/a", "skipped"]
Better = Literal["higher", "lower"]

#: Processes that multiprocessing/loky keep until their parent interpreter exits, by design.
_HELPER_MARKERS = ("resource_tracker", "semaphore_tracker", "forkserver")


class NotApplicable(Exception):
    """Raised by a child benchmark when the workload does not apply to the peer."""


# ---------------------------------------------------------------------------- statistics


@dataclass(frozen=True, slots=True)
class Stats:
    """Summary of repeated measurements (seconds, or whatever unit was measured)."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        if not values:
            raise ValueError("Stats.of() needs at least one value")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n}


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile() of an empty sequence")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentiles(values: Sequence[float], ps: Iterable[float] = (50, 90, 99)) -> dict[str, float]:
    """``{"p50": ..., "p90": ..., "p99": ...}`` of ``values``."""
    return {f"p{p:g}": percentile(values, p) for p in ps}


def time_sync(fn: Callable[[], object], *, repeat: int, warmup: int = 1, budget: float | None = None) -> Stats:
    """Run ``fn`` ``warmup`` times untimed, then up to ``repeat`` times timed.

    With ``budget`` (seconds), stop repeating once the timed runs used it up
    (at least one timed run always happens).
    """
    for _ in range(warmup):
        fn()
    values: list[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        values.append(time.perf_counter() - start)
        if budget is not None and sum(values) >= budget:
            break
    return Stats.of(values)


async def time_async(
    fn: Callable[[], Awaitable[object]],
    *,
    repeat: int,
    warmup: int = 1,
    budget: float | None = None,
) -> Stats:
    """Like :func:`time_sync` for a coroutine function."""
    for _ in range(warmup):
        await fn()
    values: list[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        values.append(time.perf_counter() - start)
        if budget is not None and sum(values) >= budget:
            break
    return Stats.of(values)


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of ``pid`` (default: this process), in bytes."""
    return int(psutil.Process(pid).memory_info().rss)


# ---------------------------------------------------------------------------- formatting


def fmt_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:,.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:,.2f} ms"
    return f"{seconds:,.2f} s"


def fmt_micros(seconds: float) -> str:
    """Seconds as microseconds with two decimals: for per-call costs compared row to row."""
    return f"{seconds * 1e6:,.2f} µs"


def fmt_rate(per_second: float) -> str:
    return f"{per_second:,.0f}/s"


def fmt_bytes(n: float) -> str:
    if abs(n) < 10_000:
        return f"{n:,.0f} B"
    return f"{n / 2**20:,.1f} MiB"


def fmt_mibps(mib_per_second: float) -> str:
    return f"{mib_per_second:,.0f} MiB/s"


def fmt_times(x: float) -> str:
    return f"{x:,.2f}x"


def fmt_plain(x: object) -> str:
    if isinstance(x, float):
        return f"{x:,.3g}"
    return str(x)


def fmt_auto(key: str, value: object) -> str:
    """Format ``value`` by the naming convention of its key (``*_per_s``, ``*_s``, ``p99``)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if key.endswith("_per_s"):
            return fmt_rate(value)
        if key.endswith(("_s", "_seconds")) or (key[:1] == "p" and key[1:].isdigit()):
            return fmt_seconds(value)
        if key.endswith("_us"):
            return fmt_seconds(value / 1e6)
        if key.endswith("_ms"):
            return fmt_seconds(value / 1e3)
    return fmt_plain(value)


_FORMATTERS: dict[str, Callable[[Any], str]] = {
    "seconds": fmt_seconds,
    "micros": fmt_micros,
    "rate": fmt_rate,
    "bytes": fmt_bytes,
    "mibps": fmt_mibps,
    "times": fmt_times,
    "plain": fmt_plain,
}


# ---------------------------------------------------------------------------- report tables


@dataclass(frozen=True, slots=True)
class Column:
    """One metric column of a table: ``key`` into :attr:`Row.metrics`."""

    key: str
    label: str
    kind: str = "plain"  # a key of _FORMATTERS

    def render(self, metrics: Mapping[str, Any]) -> str:
        value = metrics.get(self.key)
        if value is None:
            return "—"
        return _FORMATTERS[self.kind](value)


@dataclass(slots=True)
class Row:
    peer: str
    status: Status
    metrics: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"peer": self.peer, "status": self.status, "metrics": self.metrics, "note": self.note}


@dataclass(slots=True)
class Section:
    """One workload: a table with one row per peer, and the ratio of taskpool against each."""

    key: str
    title: str
    description: str
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the metric the ratio compares, and whether more of it is better
    ratio_key: str | None = None
    ratio_better: Better = "higher"
    #: the row the ratios are taken against (the subject); None: no ratio column
    subject: str | None = "taskpool"
    #: minimum acceptable ratio against given peers, e.g. {"asyncio.gather": 0.5}
    targets: dict[str, float] = field(default_factory=dict)

    def ratio(self, row: Row) -> float | None:
        """How many times better the subject is than ``row`` (> 1: the subject wins)."""
        if self.ratio_key is None or self.subject is None:
            return None
        subject = next((r for r in self.rows if r.peer == self.subject and r.status == "ok"), None)
        if subject is None or row.status != "ok" or row is subject:
            return None
        mine, theirs = subject.metrics.get(self.ratio_key), row.metrics.get(self.ratio_key)
        if not mine or not theirs:
            return None
        return float(mine / theirs if self.ratio_better == "higher" else theirs / mine)

    def _ratio_cell(self, row: Row) -> str:
        if row.peer == self.subject:
            return "(subject)"
        value = self.ratio(row)
        if value is None:
            return "n/a"
        cell = fmt_times(value)
        target = self.targets.get(row.peer)
        if target is not None:
            cell += f" (target ≥ {target:g}: {'ok' if value >= target else 'MISSED'})"
        return cell

    def to_markdown(self) -> str:
        headers = ["peer", *(c.label for c in self.columns)]
        if self.ratio_key is not None and self.subject is not None:
            on = next((c.label for c in self.columns if c.key == self.ratio_key), self.ratio_key)
            headers.append(f"taskpool vs peer, on {on} (>1: taskpool better)")
        headers.append("status / notes")
        lines = [f"### {self.title}", "", self.description, ""]
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "|".join(" --- " for _ in headers) + "|")
        for row in self.rows:
            ok = row.status == "ok"
            cells = [row.peer, *(c.render(row.metrics) if ok else "—" for c in self.columns)]
            if self.ratio_key is not None and self.subject is not None:
                cells.append(self._ratio_cell(row))
            status = row.status if not row.note else f"{row.status}: {row.note}"
            cells.append(status)
            lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
        if self.notes:
            lines.append("")
            lines.extend(f"- {note}" for note in self.notes)
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "description": self.description,
            "ratio_key": self.ratio_key,
            "ratio_better": self.ratio_better,
            "subject": self.subject,
            "targets": self.targets,
            "rows": [{**r.to_json(), "ratio": self.ratio(r)} for r in self.rows],
            "notes": self.notes,
        }


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------------- header


def run_header(*, loop: str, quick: bool, taskpool: TaskpoolProbe) -> dict[str, Any]:
    """Facts about this run, recorded at the top of the report."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    versions: dict[str, str] = {}
    for dist in ("anyio", "uvloop", "loky", "pebble", "aiomultiprocess", "msgspec", "cloudpickle"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(terse=True),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "loop": loop,
        "mode": "quick" if quick else "full",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "taskpool": taskpool.version if taskpool.ok else f"not importable: {taskpool.error}",
        "versions": versions,
    }


def header_line(header: Mapping[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in header["versions"].items())
    return (
        f"python {header['python']} ({header['implementation']}, {header['platform']}) · "
        f"{header['cpus_usable']} CPUs usable of {header['cpu_count']} · loop {header['loop']} · "
        f"{header['mode']} mode · {header['date']} · taskpool {header['taskpool']} · {versions}"
    )


# ---------------------------------------------------------------------------- options


@dataclass(slots=True)
class Options:
    quick: bool = False
    json_path: str | None = None
    loop: str = "asyncio"
    timeout: float | None = None  # per child; None: the benchmark's default
    peers: list[str] | None = None
    workloads: list[str] | None = None

    def wants(self, kind: Literal["peer", "workload"], name: str) -> bool:
        chosen = self.peers if kind == "peer" else self.workloads
        return chosen is None or name in chosen


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small sizes: a CI smoke run finishing in seconds")
    parser.add_argument(
        "--json",
        dest="json_path",
        nargs="?",
        const="-",
        metavar="PATH",
        help="also write the results as JSON to PATH ('-' or no PATH: JSON on stdout instead of markdown)",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of the driving (parent-side) process",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds one (workload, peer) child may take before it is reported as 'hang'",
    )
    parser.add_argument("--peers", type=_csv, default=None, help="comma-separated peer names")
    parser.add_argument("--workloads", type=_csv, default=None, help="comma-separated workload names")


def check_names(opts: Options, *, peers: Iterable[str], workloads: Iterable[str]) -> None:
    """Exit with a usage error when ``--peers`` or ``--workloads`` names something unknown."""
    for kind, chosen, known in (("peer", opts.peers, set(peers)), ("workload", opts.workloads, set(workloads))):
        unknown = sorted(set(chosen or ()) - known)
        if unknown:
            raise SystemExit(f"unknown {kind}(s): {', '.join(unknown)}; choose from {', '.join(sorted(known))}")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def options_from(ns: argparse.Namespace) -> Options:
    return Options(
        quick=ns.quick,
        json_path=ns.json_path,
        loop=ns.loop,
        timeout=ns.timeout,
        peers=ns.peers,
        workloads=ns.workloads,
    )


def describe_params(params: Mapping[str, Any]) -> str:
    """``"Parameters: n=20,000, repeat=3."`` for the sizes of a workload."""
    parts = [f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in params.items()]
    return f"Parameters: {', '.join(parts)}."


def leftover_line() -> str:
    """The closing check of a run: no child process of ours may be left."""
    left = leftover_children(include_helpers=True)
    return f"Child processes left at the end: {left or 'none'}."


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout stays a clean markdown report."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- isolation


def child_env() -> dict[str, str]:
    """The environment of a child: this checkout (``benchmarks`` and ``src``) first on the path.

    Workers that the peers spawn inherit it, so ``benchmarks._workloads`` and the
    checkout's ``taskpool`` are importable in every worker, whatever the start method.
    """
    env = dict(os.environ)
    parts = [str(ROOT), str(SRC)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


@dataclass(slots=True)
class ChildResult:
    status: Status
    data: dict[str, Any] = field(default_factory=dict)
    detail: str = ""
    seconds: float = 0.0
    #: processes the peer left running after it was shut down (seen by the child)
    leaked: list[str] = field(default_factory=list)
    #: processes of the child's session still alive after the child exited (seen by the parent)
    orphans: list[str] = field(default_factory=list)

    def note(self) -> str:
        parts = [self.detail] if self.detail else []
        if self.leaked:
            parts.append(f"LEAKED {len(self.leaked)} process(es) after shutdown: {self.leaked[:3]}")
        if self.orphans:
            parts.append(f"ORPHANED {len(self.orphans)} process(es): {self.orphans[:3]}")
        return "; ".join(parts)


def run_in_child(target: str, params: Mapping[str, Any], *, loop: str, timeout: float) -> ChildResult:
    """Run ``async def target(params) -> dict`` in a fresh interpreter, within ``timeout``.

    ``target`` is ``"package.module:function"``. The child runs in a session of its
    own; on timeout it is asked for a faulthandler dump (SIGUSR1), then the whole
    session is killed and the result is ``hang``.
    """
    with tempfile.TemporaryDirectory(prefix="taskpool-bench-") as tmp:
        spec_path, out_path, err_path = (Path(tmp) / n for n in ("spec.json", "out.json", "stderr"))
        spec = {"target": target, "params": dict(params), "loop": loop, "out": str(out_path)}
        spec_path.write_text(json.dumps(spec))
        start = time.perf_counter()
        with err_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks._runner", str(spec_path)],
                cwd=ROOT,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
            hung = False
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                hung = True
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGUSR1)  # the runner dumps every thread's stack
                time.sleep(1.0)
                _kill_session(proc.pid)
                proc.kill()
                proc.wait()
        seconds = time.perf_counter() - start
        orphans = _reap_session(proc.pid)
        stderr_tail = _tail(err_path.read_text(errors="replace"))
        if hung:
            return ChildResult(
                "hang",
                detail=f"no result within {timeout:g} s (killed)",
                seconds=seconds,
                orphans=orphans,
                data={"stderr": stderr_tail},
            )
        if not out_path.exists():
            last = stderr_tail.strip().splitlines()[-1:] or [""]
            return ChildResult(
                "error",
                detail=f"child exited {proc.returncode} without a result: {last[0][:200]}",
                seconds=seconds,
                orphans=orphans,
                data={"stderr": stderr_tail},
            )
        result = json.loads(out_path.read_text())
    return ChildResult(
        result["status"],
        data=result.get("data", {}),
        detail=result.get("detail", ""),
        seconds=seconds,
        leaked=result.get("leaked", []),
        orphans=orphans,
    )


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _session_members(sid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def _kill_session(sid: int) -> None:
    for proc in _session_members(sid):
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _reap_session(sid: int, *, grace: float = 3.0) -> list[str]:
    """Processes of the child's session that outlive it by more than ``grace`` s: killed, listed."""
    deadline = time.monotonic() + grace
    members = _session_members(sid)
    while members and time.monotonic() < deadline:
        time.sleep(0.05)
        members = _session_members(sid)
    described = [describe(p) for p in members]
    for proc in members:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return described


def describe(proc: psutil.Process) -> str:
    try:
        cmdline = " ".join(proc.cmdline())[:120]
    except psutil.Error:
        cmdline = "?"
    return f"{proc.pid} {cmdline}"


def is_helper(proc: psutil.Process) -> bool:
    """multiprocessing's resource tracker / forkserver: they live until their parent exits."""
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(marker in cmdline for marker in _HELPER_MARKERS)


def leftover_children(*, grace: float = 3.0, include_helpers: bool = False) -> list[str]:
    """Children of this process still alive after ``grace`` s: killed, and described.

    Used by a child after it shut its peer down (helpers excluded: they exit with the
    interpreter, and the parent checks that), and by ``run.py`` at the very end.
    """
    me = psutil.Process()

    def alive() -> list[psutil.Process]:
        found = []
        for proc in me.children(recursive=True):
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            if include_helpers or not is_helper(proc):
                found.append(proc)
        return found

    deadline = time.monotonic() + grace
    procs = alive()
    while procs and time.monotonic() < deadline:
        time.sleep(0.05)
        procs = alive()
    described = [describe(p) for p in procs]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return described


# ---------------------------------------------------------------------------- taskpool probe


@dataclass(frozen=True, slots=True)
class TaskpoolProbe:
    ok: bool
    version: str = ""
    error: str = ""

    def skip_note(self) -> str:
        return f"taskpool not importable: {self.error}"


_PROBE = "import taskpool\nfrom taskpool import FunctionPool\nprint(getattr(taskpool, '__version__', 'checkout'))\n"


def probe_taskpool(timeout: float = 60.0) -> TaskpoolProbe:
    """Can a child import ``FunctionPool`` from taskpool (the checkout's ``src/`` first)?"""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return TaskpoolProbe(False, error=f"'import taskpool' took more than {timeout:g} s")
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return TaskpoolProbe(False, error=lines[-1] if lines else f"exit code {done.returncode}")
    return TaskpoolProbe(True, version=done.stdout.strip())


# ---------------------------------------------------------------------------- output


def emit(
    opts: Options,
    header: Mapping[str, Any],
    sections: Sequence[Section],
    footer: Sequence[str] = (),
    *,
    title: str,
    stream: TextIO | None = None,
) -> None:
    """Markdown on stdout (unless ``--json -``); JSON to ``--json PATH``."""
    out = stream or sys.stdout
    document = {
        "header": dict(header),
        "sections": [s.to_json() for s in sections],
        "footer": list(footer),
    }
    if opts.json_path == "-":
        json.dump(document, out, indent=2)
        out.write("\n")
        return
    out.write(f"## {title}\n\n")
    out.write(f"{header_line(header)}\n\n")
    for section in sections:
        out.write(section.to_markdown())
        out.write("\n")
    for line in footer:
        out.write(f"{line}\n")
    if opts.json_path:
        Path(opts.json_path).write_text(json.dumps(document, indent=2) + "\n")
