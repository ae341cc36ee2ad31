"""Process workers (issue "process workers"): taskpool against the process-pool peers.

Every peer is driven from asyncio with the same number of workers, runs the same
task functions (``benchmarks._workloads``), and is measured in a fresh interpreter
per (workload, peer) pair. Usage::

    python -m benchmarks.bench_process [--quick] [--peers taskpool,loky] [--workloads latency]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec

if __package__ in {None, ""}:  # run as a script: python benchmarks/bench_process.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h
from benchmarks import _workloads as wl
from benchmarks._peers import PEERS, Peer

WORKERS = 2
T = TypeVar("T")
FLOOR_FUNCTIONS = ("measure_floor", "bench_floor", "measure", "run_floor", "floor", "ping_pong")


# ---------------------------------------------------------------------------- child side


async def _with_peer(peer: Peer, body: Callable[[], Awaitable[T]]) -> T:
    await peer.start()
    try:
        return await body()
    finally:
        await peer.stop()


async def throughput(peer: Peer, p: dict[str, Any]) -> dict[str, Any]:
    """(a) ``n`` no-op tasks submitted at once, then wait for all of them."""
    n, fn = p["n"], peer.task(wl.noop)

    async def body() -> dict[str, Any]:
        distinct = await peer.warm()
        await peer.batch(fn, [()] * p["warmup"])

        async def once() -> None:
            results = await peer.batch(fn, [()] * n)
            if len(results) != n:
                raise AssertionError(f"{len(results)} results for {n} tasks")

        stats = await h.time_async(once, repeat=p["repeat"], warmup=0)
        return {
            "tasks_per_s": n / stats.median,
            "best_tasks_per_s": n / stats.min,
            "seconds": stats.as_dict(),
            "warm_workers": distinct,
        }

    return await _with_peer(peer, body)


async def latency(peer: Peer, p: dict[str, Any]) -> dict[str, Any]:
    """(b) one tiny task at a time, awaited before the next is sent."""
    fn = peer.task(wl.noop)

    async def body() -> dict[str, Any]:
        await peer.warm()
        for _ in range(p["warmup"]):
            await peer.call(fn)
        samples: list[float] = []
        clock = time.perf_counter
        for _ in range(p["n"]):
            start = clock()
            await peer.call(fn)
            samples.append(clock() - start)
        return {
            **h.percentiles(samples, (50, 90, 99)),
            "mean": statistics.fmean(samples),
            "min": min(samples),
            "n": len(samples),
        }

    return await _with_peer(peer, body)


async def cold_start(peer: Peer, p: dict[str, Any]) -> dict[str, Any]:
    """(c) a fresh pool of ``workers``: first result, then every worker answering, and RSS.

    The peer's library is imported before the clock starts: an application pays that
    once, and it is not the pool's start-up.
    """
    workers = peer.workers
    with tempfile.TemporaryDirectory(prefix="taskpool-bench-cold-") as tmp:
        start = time.perf_counter()
        await peer.start()
        try:
            started = time.perf_counter() - start
            await peer.call(peer.task(wl.getpid))
            first = time.perf_counter() - start
            pids = await peer.batch(peer.task(wl.barrier_pid), [(tmp, workers, p["barrier_timeout"])] * workers)
            every = time.perf_counter() - start
            rss = [h.rss_bytes(pid) for pid in sorted(set(pids))]
        finally:
            await peer.stop()
    return {
        "start_returned_s": started,
        "first_result_s": first,
        "all_answered_s": every if len(set(pids)) == workers else None,
        "distinct_workers": len(set(pids)),
        "rss_median": statistics.median(rss),
        "rss_max": max(rss),
        "rss_each": rss,
    }


async def cpu(peer: Peer, p: dict[str, Any]) -> dict[str, Any]:
    """(d) ``tasks`` x fib(``n``) in pure Python: speedup over running them serially here.

    Serial and pooled runs alternate (the pool idle during the serial one), so that a
    drift in the machine's speed hits both alike. "speedup" is the median of the
    per-pair ratios; "best_speedup" is best serial / best pooled time, the capability
    once noise (which only ever slows a run down) is taken out: the ratio uses it.
    """
    tasks, n, fn = p["tasks"], p["n"], peer.task(wl.fib)
    expected = wl.fib(n)

    def serial() -> None:
        for _ in range(tasks):
            wl.fib(n)

    async def pooled() -> None:
        results = await peer.batch(fn, [(n,)] * tasks)
        if results != [expected] * tasks:
            raise AssertionError("wrong fib results")

    async def body() -> dict[str, Any]:
        await peer.warm()
        serial()
        await pooled()
        serial_s: list[float] = []
        pooled_s: list[float] = []
        for _ in range(p["repeat"]):
            serial_s.append(h.time_sync(serial, repeat=1, warmup=0).min)
            pooled_s.append((await h.time_async(pooled, repeat=1, warmup=0)).min)
        speedups = [a / b for a, b in zip(serial_s, pooled_s, strict=True)]
        return {
            "serial_s": statistics.median(serial_s),
            "parallel_s": statistics.median(pooled_s),
            "speedup": statistics.median(speedups),
            "best_speedup": min(serial_s) / min(pooled_s),
            "speedups": speedups,
        }

    return await _with_peer(peer, body)


async def payload(peer: Peer, p: dict[str, Any]) -> dict[str, Any]:
    """(e) a ``mib`` MiB bytes argument echoed back, one round trip at a time."""
    size = p["mib"] * 2**20
    data = b"\x5a" * size
    fn = peer.task(wl.echo)

    async def body() -> dict[str, Any]:
        await peer.warm()

        async def once() -> None:
            out = await peer.call(fn, data)
            if len(out) != size:
                raise AssertionError(f"echoed {len(out)} bytes of {size}")

        stats = await h.time_async(once, repeat=p["round_trips"], warmup=1)
        return {
            "round_trip_s": stats.median,
            "mib_per_s": p["mib"] / stats.median,
            "best_mib_per_s": p["mib"] / stats.min,
        }

    return await _with_peer(peer, body)


async def coroutines(peer: Peer, p: dict[str, Any]) -> dict[str, Any]:
    """(f) ``n`` coroutine tasks, each awaiting asyncio.sleep(``sleep``), submitted at once."""
    if not peer.runs_coroutines:
        raise h.NotApplicable("runs plain functions only")
    n, pause = p["n"], p["sleep"]

    async def body() -> dict[str, Any]:
        await peer.warm()
        await peer.batch(wl.sleep_async, [(pause,)] * max(1, n // 10))

        async def once() -> None:
            await peer.batch(wl.sleep_async, [(pause,)] * n)

        stats = await h.time_async(once, repeat=p["repeat"], warmup=0, budget=p["budget"])
        return {
            "seconds": stats.median,
            "tasks_per_s": n / stats.median,
            "concurrency": n * pause / stats.median,
        }

    return await _with_peer(peer, body)


CHILDREN: dict[str, Callable[[Peer, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "throughput": throughput,
    "latency": latency,
    "cold": cold_start,
    "cpu": cpu,
    "payload": payload,
    "coroutines": coroutines,
}


async def child(params: dict[str, Any]) -> dict[str, Any]:
    """Entry point of one (workload, peer) child (see ``benchmarks._runner``)."""
    peer = PEERS[params["peer"]](params["workers"], **params.get("options", {}))
    return await CHILDREN[params["workload"]](peer, params)


async def floor_child(params: dict[str, Any]) -> dict[str, Any]:
    """Call the measuring function of ``benchmarks/bench_floor.py``, if it is there.

    The first of :data:`FLOOR_FUNCTIONS` it defines is called with those of its
    parameters that :func:`_floor_arguments` knows (sizes follow ``--quick``).
    """
    if not (h.ROOT / "benchmarks" / "bench_floor.py").exists():
        raise h.NotApplicable("benchmarks/bench_floor.py not present")
    module = importlib.import_module("benchmarks.bench_floor")
    for name in FLOOR_FUNCTIONS:
        fn = getattr(module, name, None)
        if callable(fn):
            break
    else:
        raise h.NotApplicable(f"bench_floor.py defines none of {', '.join(FLOOR_FUNCTIONS)}")
    known = _floor_arguments(params["quick"], params["loop"])
    kwargs: dict[str, Any] = {}
    for parameter in inspect.signature(fn).parameters.values():
        if parameter.name in known:
            kwargs[parameter.name] = known[parameter.name]
        elif parameter.default is inspect.Parameter.empty and parameter.kind not in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ):
            raise h.NotApplicable(f"bench_floor.{name}() wants {parameter.name!r}, which the harness does not know")
    if inspect.iscoroutinefunction(fn):
        result = await fn(**kwargs)
    else:  # it may run an event loop of its own: keep it off ours
        result = await asyncio.to_thread(fn, **kwargs)
    return {"function": name, "result": msgspec.to_builtins(result)}


def _floor_arguments(quick: bool, loop: str) -> dict[str, Any]:
    """Arguments a floor function may take: the same sizes as workloads (a) and (b)."""
    latency = next(w for w in WORKLOADS if w.key == "latency").params(quick)
    throughput = next(w for w in WORKLOADS if w.key == "throughput").params(quick)
    return {
        "quick": quick,
        "rounds": latency["n"],
        "messages": throughput["n"],
        "loop": loop,
        "child_loop": "auto",
    }


# ---------------------------------------------------------------------------- parent side


@dataclass(frozen=True, slots=True)
class Workload:
    key: str
    title: str
    description: str
    columns: list[h.Column]
    ratio_key: str
    ratio_better: h.Better
    full: dict[str, Any]
    quick: dict[str, Any]
    workers: int = WORKERS
    #: one fresh child per repetition (cold start), instead of repetitions inside one child
    fresh_per_repeat: bool = False
    coroutines_only: bool = False
    timeout: float = 120.0
    notes: list[str] = field(default_factory=list)

    def params(self, quick: bool) -> dict[str, Any]:
        return dict(self.quick if quick else self.full)


WORKLOADS: list[Workload] = [
    Workload(
        "throughput",
        "(a) Throughput: no-op tasks submitted at once",
        "N no-op tasks submitted at once to a warm pool of 2 workers, then all results "
        "awaited; median and best of the timed batches.",
        [
            h.Column("tasks_per_s", "tasks/s (median)", "rate"),
            h.Column("best_tasks_per_s", "tasks/s (best)", "rate"),
        ],
        "tasks_per_s",
        "higher",
        full={"n": 20_000, "warmup": 2_000, "repeat": 3},
        quick={"n": 2_000, "warmup": 200, "repeat": 2},
    ),
    Workload(
        "latency",
        "(b) Latency: sequential round trip of one tiny task",
        "One no-op task at a time, each awaited before the next is sent, on a warm pool of 2 workers.",
        [
            h.Column("p50", "p50", "seconds"),
            h.Column("p90", "p90", "seconds"),
            h.Column("p99", "p99", "seconds"),
            h.Column("min", "min", "seconds"),
        ],
        "p50",
        "lower",
        full={"n": 2_000, "warmup": 200},
        quick={"n": 200, "warmup": 20},
    ),
    Workload(
        "cold",
        "(c) Cold start of 4 workers",
        "From creating the pool to: its start call returning, the first result, and all 4 "
        "workers answering at once (4 barrier tasks that each wait for 4 distinct pids); "
        "then each worker's RSS. A fresh interpreter per repetition; medians.",
        [
            h.Column("start_returned_s", "start returned", "seconds"),
            h.Column("first_result_s", "first result", "seconds"),
            h.Column("all_answered_s", "all 4 answered", "seconds"),
            h.Column("rss_median", "RSS/worker (median)", "bytes"),
            h.Column("rss_max", "RSS/worker (max)", "bytes"),
        ],
        "all_answered_s",
        "lower",
        full={"repeat": 3, "barrier_timeout": 10.0},
        quick={"repeat": 1, "barrier_timeout": 10.0},
        workers=4,
        fresh_per_repeat=True,
        timeout=60.0,
        notes=[
            "aiomultiprocess runs here with childconcurrency=1, so that 4 barrier tasks "
            "reach 4 workers (by default one worker takes up to 16 tasks at once).",
        ],
    ),
    Workload(
        "cpu",
        "(d) CPU-bound: 32 tasks of pure-Python fib(24)",
        "Speedup of the batch over running the same calls serially in the driving process, "
        "serial and pooled runs alternating: the median of the per-pair ratios, and best "
        "serial / best pooled time, which the ratio uses (noise on a shared machine only "
        "slows runs down). 2 workers: the ideal is min(2, CPUs).",
        [
            h.Column("serial_s", "serial", "seconds"),
            h.Column("parallel_s", "pool (median)", "seconds"),
            h.Column("speedup", "speedup (median)", "times"),
            h.Column("best_speedup", "speedup (best)", "times"),
        ],
        "best_speedup",
        "higher",
        full={"tasks": 32, "n": 24, "repeat": 7},
        quick={"tasks": 8, "n": 22, "repeat": 3},
    ),
    Workload(
        "payload",
        "(e) Large payload: a 32 MiB bytes argument echoed back",
        "One echo task at a time with a bytes argument that comes back as the result; "
        "MiB/s = payload size / round-trip time (the bytes cross twice).",
        [
            h.Column("round_trip_s", "round trip (median)", "seconds"),
            h.Column("mib_per_s", "MiB/s (median)", "mibps"),
            h.Column("best_mib_per_s", "MiB/s (best)", "mibps"),
        ],
        "mib_per_s",
        "higher",
        full={"mib": 32, "round_trips": 5},
        quick={"mib": 4, "round_trips": 2},
    ),
    Workload(
        "coroutines",
        "(f) Coroutine tasks: each awaits asyncio.sleep(0.01)",
        "N coroutine tasks submitted at once; concurrency = N * 10 ms / elapsed, i.e. "
        "how many sleeps overlap across the 2 workers.",
        [
            h.Column("seconds", "elapsed (median)", "seconds"),
            h.Column("tasks_per_s", "tasks/s", "rate"),
            h.Column("concurrency", "effective concurrency", "plain"),
        ],
        "tasks_per_s",
        "higher",
        full={"n": 2_000, "sleep": 0.01, "repeat": 2, "budget": 20.0},
        quick={"n": 200, "sleep": 0.01, "repeat": 1, "budget": 5.0},
        coroutines_only=True,
        notes=[
            "Only taskpool and aiomultiprocess accept coroutine functions as tasks; "
            "aiomultiprocess runs up to 16 at once per worker (childconcurrency default); "
            "taskpool runs with FunctionPool(concurrency=16), the same 16 per worker.",
        ],
    ),
]


PEER_NAMES = list(PEERS)
WORKLOAD_NAMES = [w.key for w in WORKLOADS]


def _median_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
        merged[key] = statistics.median(values) if len(values) == len(runs) else runs[0][key]
    merged["runs"] = runs
    return merged


def _measure(workload: Workload, peer_name: str, opts: h.Options, probe: h.TaskpoolProbe) -> h.Row:
    peer = PEERS[peer_name]
    label = f"{peer.label} ({peer.start_method})"
    if workload.coroutines_only and not peer.runs_coroutines:
        return h.Row(label, "n/a", note="runs plain functions only")
    if peer_name == "taskpool" and not probe.ok:
        return h.Row(label, "skipped", note=probe.skip_note())
    params = workload.params(opts.quick)
    params.update(workload=workload.key, peer=peer_name, workers=workload.workers)
    if peer_name == "aiomultiprocess" and workload.key == "cold":
        params["options"] = {"childconcurrency": 1}
    if peer_name == "taskpool" and workload.key == "coroutines":
        # Like aiomultiprocess's default childconcurrency=16: 16 coroutines per worker.
        params["options"] = {"concurrency": 16}
    timeout = opts.timeout or (workload.timeout / (2 if opts.quick else 1))
    repeats = params["repeat"] if workload.fresh_per_repeat else 1
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    for _ in range(repeats):
        result = h.run_in_child("benchmarks.bench_process:child", params, loop=opts.loop, timeout=timeout)
        h.progress(f"  {workload.key:<11} {peer_name:<16} {result.status:<6} {result.seconds:6.1f} s  {result.note()}")
        if result.note():
            notes.append(result.note())
        if result.status != "ok":
            return h.Row(label, result.status, note="; ".join(notes))
        runs.append(result.data)
    metrics = runs[0] if len(runs) == 1 else _median_metrics(runs)
    if workload.key == "cold" and metrics.get("all_answered_s") is None:
        notes.append(f"only {metrics['distinct_workers']} distinct workers answered the barrier")
    return h.Row(label, "ok", metrics, note="; ".join(dict.fromkeys(notes)))


def measure_floor(opts: h.Options) -> str:
    """One line describing the raw pipe ping-pong floor (``bench_floor.py``), or n/a."""
    result = h.run_in_child(
        "benchmarks.bench_process:floor_child",
        {"quick": opts.quick, "loop": opts.loop},
        loop=opts.loop,
        timeout=opts.timeout or (30.0 if opts.quick else 60.0),
    )
    if result.status == "n/a":
        return f"floor: n/a ({result.detail})"
    if result.status != "ok":
        return f"floor: n/a (bench_floor {result.status}: {result.note() or 'no detail'})"
    value = result.data["result"]
    if isinstance(value, dict):
        text = ", ".join(f"{k}={h.fmt_auto(k, v)}" for k, v in value.items() if not isinstance(v, str))
    elif isinstance(value, float):
        text = f"round trip {h.fmt_seconds(value)}"
    else:
        text = str(value)
    return f"floor (raw pipe ping-pong, bench_floor.{result.data['function']}): {text}"


def collect(opts: h.Options, probe: h.TaskpoolProbe) -> list[h.Section]:
    """Every selected workload, as one table each."""
    h.progress("[process] floor")
    floor = measure_floor(opts)
    h.progress(f"  {floor}")
    sections: list[h.Section] = []
    for workload in WORKLOADS:
        if not opts.wants("workload", workload.key):
            continue
        h.progress(f"[process] {workload.key}")
        section = h.Section(
            key=f"process.{workload.key}",
            title=workload.title,
            description=f"{workload.description} {h.describe_params(workload.params(opts.quick))}",
            columns=workload.columns,
            ratio_key=workload.ratio_key,
            ratio_better=workload.ratio_better,
            subject=f"{PEERS['taskpool'].label} ({PEERS['taskpool'].start_method})",
            notes=[*workload.notes, floor],
        )
        for name in PEERS:
            if opts.wants("peer", name):
                section.rows.append(_measure(workload, name, opts, probe))
        if not probe.ok:
            section.notes.insert(0, probe.skip_note())
        sections.append(section)
    return sections


def peer_notes() -> list[str]:
    return [f"- {cls.label} ({cls.start_method}): {cls.notes}" for cls in PEERS.values() if cls.notes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    h.add_common_arguments(parser)
    opts = h.options_from(parser.parse_args(argv))
    h.check_names(opts, peers=PEER_NAMES, workloads=WORKLOAD_NAMES)
    probe = h.probe_taskpool()
    if not probe.ok:
        h.progress(probe.skip_note())
    header = h.run_header(loop=opts.loop, quick=opts.quick, taskpool=probe)
    sections = collect(opts, probe)
    footer = ["#### How each peer is driven", "", *peer_notes(), "", h.leftover_line()]
    h.emit(opts, header, sections, footer, title="Process workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
