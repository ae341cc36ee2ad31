"""The status app's cost (issue 11): a pool's throughput with viewers, /status at 1M queued, shutdown.

Three parts, each measured ``--repeat`` times (3 by default), in one run:

- ``sse``: no-op throughput of ``FunctionPool(2)`` (process and thread workers) while its
  status app (``pool.serve_status()``: uvicorn in the pool's loop, loopback) streams to 100
  Server-Sent-Events clients, against the same pool with no server, measured alternately
  in the same run. The clients live in another process (``--sse-clients``, raw sockets),
  so only the serving side shares the pool's loop. Target: ratio >= 0.95.
- ``status``: ``GET /status`` latency with 1,000,000 tasks queued behind a blocked inline
  worker, from a client process making sequential requests on one connection for a few
  seconds (so the report is rebuilt several times: it is cached for 0.5 s); and the
  rebuild itself (``Reporter.current(fresh=True)``) at 10 and at 1M queued. Target:
  p99 < 5 ms. Then the recorder's memory (its reachable objects, the scheduler excluded)
  after 1,000 and after 1,000,000 tasks settled. Target: flat (ratio <= 1.1).
- ``shutdown``: ``taskpool.examples.web.service`` under uvicorn, 50 concurrent keep-alive
  clients posting ``/fib/15`` and 5 event streams open; the time from SIGTERM to the
  process's exit. Target: < 1 s.

Usage::

    python -m benchmarks.bench_web                 # everything, 3 repetitions (~2 minutes)
    python -m benchmarks.bench_web --quick         # CI smoke: small sizes, one repetition
    python -m benchmarks.bench_web --parts status --json results.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import statistics
import sys
import time
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:  # run as a script: python benchmarks/bench_web.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h
from benchmarks import _workloads as wl

PARTS = ("sse", "status", "shutdown")
TOKEN = "bench-token"
SSE_RATIO_TARGET = 0.95
STATUS_P99_TARGET = 0.005
MEMORY_RATIO_TARGET = 1.1
SHUTDOWN_TARGET = 1.0
CHILD_WAIT = 60.0  # seconds a helper process may take to get ready (only reached when broken)
STATUS_EVENT = b"event: status"


async def _boom() -> None:
    """A failing task (inline workers: no need to be importable elsewhere)."""
    raise ValueError("a failure for the recorder's ring")


# --------------------------------------------------------------------------- raw HTTP


async def _connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port, limit=1 << 20)


def _request(method: str, path: str, *, token: str | None = TOKEN) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"{method} {path} HTTP/1.1\r\nHost: bench\r\n{auth}Content-Length: 0\r\n\r\n".encode()


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response with a Content-Length (what every non-streaming route sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


# --------------------------------------------------------------------------- helper processes


async def sse_clients(host: str, port: int, path: str, n: int) -> None:
    """``--sse-clients``: hold ``n`` event streams; "ready" once each got its first status."""
    counts = [0] * n
    ready = asyncio.Event()
    left = n

    async def one(i: int) -> None:
        nonlocal left
        reader, writer = await _connect(host, port)
        writer.write(_request("GET", path))
        tail = b""  # shorter than the pattern: an event split across two reads counts once
        try:
            while data := await reader.read(1 << 16):
                first = counts[i] == 0
                counts[i] += (tail + data).count(STATUS_EVENT)
                tail = data[-(len(STATUS_EVENT) - 1) :]
                if first and counts[i]:
                    left -= 1
                    if left == 0:
                        ready.set()
        finally:
            writer.close()

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.wait_for(ready.wait(), CHILD_WAIT)
    print("ready", flush=True)
    # Read until the parent closes our stdin: the streams stay drained meanwhile.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"status_events": sum(counts)}), flush=True)


async def status_client(host: str, port: int, path: str, seconds: float, gap: float) -> None:
    """``--status-client``: sequential ``GET path`` on one connection for ``seconds``; latencies as JSON."""
    reader, writer = await _connect(host, port)
    request = _request("GET", path)
    lat: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        writer.write(request)
        status, _ = await _response(reader)
        lat.append(time.perf_counter() - t)
        if status != 200:
            raise SystemExit(f"GET {path}: HTTP {status}")
        await asyncio.sleep(gap)  # pacing: the requests spread over several 0.5 s report ticks
    writer.close()
    print(json.dumps(lat), flush=True)


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.bench_web", *args,
        cwd=h.ROOT, env=h.child_env(),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    return host, int(port)


# --------------------------------------------------------------------------- (a) sse


async def _throughput(pool: Any, n: int) -> float:
    add, fn = pool.add_task, wl.noop
    t = time.perf_counter()
    for _ in range(n):
        add(fn)
    await pool.join()
    return n / (time.perf_counter() - t)


async def sse_round(kind: str, n: int, clients: int, with_app: bool) -> dict[str, Any]:
    """One measurement: tasks/s of a fresh pool, with or without the status app (and ``clients`` streams)."""
    from taskpool import FunctionPool

    async with FunctionPool(2, worker=kind, name=f"bench-{kind}") as pool:
        await _throughput(pool, max(1000, n // 10))  # warm: functions known, windows open
        proc = None
        server = None
        try:
            if with_app:
                server = await pool.serve_status(token=TOKEN, announce=False)
                host, port = _host_port(server.url)
                if clients:
                    proc = await _spawn("--sse-clients", host, str(port), "/events", str(clients))
                    assert proc.stdout is not None
                    line = await asyncio.wait_for(proc.stdout.readline(), CHILD_WAIT)
                    if line.strip() != b"ready":
                        raise RuntimeError(f"the SSE clients did not start: {line!r}")
            rate = await _throughput(pool, n)
            streams = server.app.streams if server is not None else 0
        finally:
            events = None
            if proc is not None:
                assert proc.stdin is not None
                assert proc.stdout is not None
                proc.stdin.close()
                out = await asyncio.wait_for(proc.stdout.read(), CHILD_WAIT)
                await proc.wait()
                events = json.loads(out.splitlines()[-1])["status_events"] if out.strip() else None
            if server is not None:
                await server.aclose()
    return {"tasks_per_s": rate, "streams": streams, "status_events": events}


async def part_sse(quick: bool, repeat: int) -> dict[str, Any]:
    sizes = {"process": 20_000 if quick else 200_000, "thread": 50_000 if quick else 500_000}
    clients = 10 if quick else 100
    out: dict[str, Any] = {"clients": clients, "kinds": {}}
    for kind, n in sizes.items():
        base: list[float] = []
        idle: list[float] = []
        served: list[float] = []
        streams = events = 0
        for i in range(repeat):  # alternate, so drift hits every variant alike
            h.progress(f"sse: {kind} round {i + 1}/{repeat}")
            base.append((await sse_round(kind, n, 0, False))["tasks_per_s"])
            idle.append((await sse_round(kind, n, 0, True))["tasks_per_s"])
            r = await sse_round(kind, n, clients, True)
            served.append(r["tasks_per_s"])
            streams, events = r["streams"], r["status_events"]
        out["kinds"][kind] = {
            "n": n,
            "without": base,
            "app_no_clients": idle,
            "with": served,
            "ratio": statistics.median(served) / statistics.median(base),
            "ratio_app_no_clients": statistics.median(idle) / statistics.median(base),
            "baseline_spread": max(base) / min(base) - 1,
            "streams_open": streams,
            "status_events_received": events,
        }
    return out


# --------------------------------------------------------------------------- (b) status and memory


def _reporter(app: Any) -> Any:
    """The app's report builder (private: the benchmark times it directly)."""
    return getattr(app, "_reporter", None) or app.reporter


def _fresh_builds(reporter: Any, times: int) -> list[float]:
    out = []
    for _ in range(times):
        t = time.perf_counter()
        reporter.current(fresh=True)
        out.append(time.perf_counter() - t)
    return out


async def _until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + CHILD_WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.001)


async def status_round(queued: int, seconds: float) -> dict[str, Any]:
    """``GET /status`` latencies (from another process) and rebuild times with ``queued`` tasks waiting."""
    from taskpool import FunctionPool

    release = asyncio.Event()
    async with FunctionPool(1, worker="inline", name="bench-status") as pool:
        blocker = pool.add_task(wl.wait_event, release)
        await _until(lambda: pool.status("active") == 1)
        server = await pool.serve_status(token=TOKEN, announce=False)
        reporter = _reporter(server.app)
        few = _fresh_builds(reporter, 200)
        add, fn = pool.add_task, wl.noop_async
        for _ in range(queued):
            add(fn)
        gc.collect()
        many = _fresh_builds(reporter, 200)
        host, port = _host_port(server.url)
        proc = await _spawn("--status-client", host, str(port), "/status", str(seconds), "0.002")
        out, _ = await asyncio.wait_for(proc.communicate(), CHILD_WAIT + seconds)
        if proc.returncode != 0:
            raise RuntimeError(f"the status client failed (exit code {proc.returncode})")
        lat = json.loads(out)
        depth = pool.status("queued")
        await server.aclose()
        release.set()
        await blocker
    return {
        "queued": depth,
        "http": h.percentiles(lat, (50, 99)) | {"max": max(lat), "requests": len(lat)},
        "build_few": h.percentiles(few, (50, 99)),
        "build_many": h.percentiles(many, (50, 99)),
    }


#: What the recorder's size does not include: code, the loop and timers it is called back by.
_NOT_DATA = (type, types.ModuleType, types.FunctionType, types.MethodType, types.BuiltinFunctionType, asyncio.Handle)


def _deep_size(root: object, skip: set[int]) -> int:
    """Bytes of the data reachable from ``root``: not through ``skip`` (ids), code, loops or timers."""
    seen = set(skip)
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _NOT_DATA) or isinstance(obj, asyncio.AbstractEventLoop):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


async def memory_round(small: int, large: int) -> dict[str, Any]:
    """The recorder's size after ``small`` and after ``large`` tasks settled.

    A report is built at each point (what a viewer does). The rate samples a viewer adds
    every 0.5 s are bounded by time, not by tasks (65 s of them at most): they are left
    out of both points, and their bound is reported on its own.
    """
    from taskpool import FunctionPool, _recorder
    from taskpool.web import status_app

    async with FunctionPool(2, worker="inline", name="bench-memory", keep_records=1000) as pool:
        reporter = _reporter(status_app(pool))
        rec = reporter.recorder
        samples = getattr(rec, "_samples", ())  # bounded by time, not tasks: measured on their own
        skip = {id(rec.sched), id(samples)}
        add, fn, fail = pool.add_task, wl.noop_async, _boom
        sizes = {}
        done = 0
        for target in (small, large):
            while done < target:
                batch = min(50_000, target - done)
                for i in range(batch):
                    add(fail if i % 20 == 0 else fn)  # 5% fail: the recent-failures ring is full at both points
                await pool.join()
                done += batch
            reporter.current(fresh=True)
            gc.collect()
            sizes[target] = _deep_size(rec, skip)
        per_sample = _deep_size(samples[-1], skip) if samples else 0
    most = int(_recorder.SAMPLES_SPAN / _recorder.SAMPLE_EVERY) + 2
    return {
        "small": sizes[small],
        "large": sizes[large],
        "ratio": sizes[large] / sizes[small],
        "samples_now": len(samples),
        "samples_bound_bytes": most * per_sample,
    }


async def part_status(quick: bool, repeat: int) -> dict[str, Any]:
    queued = 100_000 if quick else 1_000_000
    seconds = 1.0 if quick else 3.0
    small, large = 1_000, (100_000 if quick else 1_000_000)
    rounds = []
    for i in range(repeat):
        h.progress(f"status: {queued:,} queued, round {i + 1}/{repeat}")
        rounds.append(await status_round(queued, seconds))
    memory = []
    for i in range(repeat):
        h.progress(f"memory: {small:,} vs {large:,} settled, round {i + 1}/{repeat}")
        memory.append(await memory_round(small, large))
    return {"queued": queued, "rounds": rounds, "settled": [small, large], "memory": memory}


# --------------------------------------------------------------------------- (c) shutdown


async def shutdown_round(clients: int, streams: int, load_seconds: float) -> dict[str, Any]:
    """The service under load; seconds from SIGTERM to exit, and what the load got done."""
    env = {**h.child_env(), "SERVICE_WORKERS": "2", "SERVICE_MAX_QUEUE": "1000", "TASKPOOL_STATUS_TOKEN": TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", "taskpool.examples.web.service:app",
        "--port", "0", "--no-access-log", "--timeout-graceful-shutdown", "10",
        cwd=h.ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    log: list[bytes] = []
    try:
        url = None
        async with asyncio.timeout(CHILD_WAIT):
            while url is None:
                line = await proc.stderr.readline()
                if not line:
                    raise RuntimeError(b"".join(log).decode(errors="replace"))
                log.append(line)
                if b"Uvicorn running on " in line:
                    url = line.split(b"running on ")[1].split()[0].decode()
        draining = asyncio.create_task(proc.stderr.read())
        host, port = _host_port(url)
        answered = [0]
        errors = [0]
        going = True

        async def client() -> None:
            reader, writer = await _connect(host, port)
            request = _request("POST", "/fib/15", token=None)
            try:
                while going:
                    writer.write(request)
                    status, _ = await _response(reader)
                    if status == 200:
                        answered[0] += 1
                    else:
                        errors[0] += 1
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # the server closed the connection: it is shutting down
            finally:
                writer.close()

        async def stream() -> None:
            reader, writer = await _connect(host, port)
            writer.write(_request("GET", "/taskpool/events"))
            try:
                while await reader.read(1 << 16):
                    pass
            except ConnectionError:
                pass
            finally:
                writer.close()

        load = [asyncio.create_task(client()) for _ in range(clients)]
        viewers = [asyncio.create_task(stream()) for _ in range(streams)]
        await _until(lambda: answered[0] >= clients)  # every client is in its loop
        await asyncio.sleep(load_seconds)  # the load runs: this is the measured situation, not a sync
        before = answered[0]
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), CHILD_WAIT)
        took = time.perf_counter() - t0
        going = False
        await asyncio.wait_for(asyncio.gather(*load, *viewers, return_exceptions=True), CHILD_WAIT)
        await draining
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return {
        "seconds": took,
        "exit_code": rc,
        "requests_per_s": before / load_seconds,
        "answered_after_sigterm": answered[0] - before,
        "errors": errors[0],
    }


async def part_shutdown(quick: bool, repeat: int) -> dict[str, Any]:
    rounds = []
    for i in range(repeat):
        h.progress(f"shutdown: service under load, round {i + 1}/{repeat}")
        rounds.append(await shutdown_round(50, 5, 0.5 if quick else 2.0))
    return {"clients": 50, "streams": 5, "rounds": rounds}


# --------------------------------------------------------------------------- report


def _kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(results: dict[str, Any]) -> tuple[str, bool]:
    """Markdown tables of the results, and whether every target was met."""
    lines: list[str] = []
    ok = True
    if "sse" in results:
        r = results["sse"]
        lines += [
            f"#### Throughput with the status app streaming to {r['clients']} SSE clients (no-op tasks, 2 workers)",
            "",
            "Medians of tasks/s; ratios against the pool without the app; spread: half the range of "
            "the runs without the app (the noise). 'App, no client': served, nobody watching (the "
            "recorder attached, uvicorn idle).",
            "",
            "| workers | tasks | without app (spread) | app, no client | app + clients "
            f"| ratio (target ≥ {SSE_RATIO_TARGET}) | ratio, no client | status events received |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for kind, k in r["kinds"].items():
            good = k["ratio"] >= SSE_RATIO_TARGET
            ok &= good
            lines.append(
                f"| {kind} | {k['n']:,} | {h.fmt_rate(statistics.median(k['without']))} "
                f"(±{k['baseline_spread'] * 50:.1f}%) "
                f"| {h.fmt_rate(statistics.median(k['app_no_clients']))} "
                f"| {h.fmt_rate(statistics.median(k['with']))} | {k['ratio']:.3f} {_verdict(good)} "
                f"| {k['ratio_app_no_clients']:.3f} | {k['status_events_received']} |"
            )
        lines.append("")
    if "status" in results:
        r = results["status"]
        lines += [
            f"#### `GET /status` with {r['queued']:,} tasks queued",
            "",
            f"| round | requests | p50 | p99 (target < {_ms(STATUS_P99_TARGET)}) | max "
            "| rebuild p50 / p99 at 10 queued | rebuild p50 / p99 at N queued |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for i, rd in enumerate(r["rounds"], 1):
            good = rd["http"]["p99"] < STATUS_P99_TARGET
            ok &= good
            lines.append(
                f"| {i} | {rd['http']['requests']:,} | {_ms(rd['http']['p50'])} | {_ms(rd['http']['p99'])} "
                f"{_verdict(good)} | {_ms(rd['http']['max'])} "
                f"| {_ms(rd['build_few']['p50'])} / {_ms(rd['build_few']['p99'])} "
                f"| {_ms(rd['build_many']['p50'])} / {_ms(rd['build_many']['p99'])} |"
            )
        small, large = r["settled"]
        bound = max(m["samples_bound_bytes"] for m in r["memory"])
        lines += [
            "",
            f"| round | recorder after {small:,} settled | after {large:,} settled "
            f"| ratio (target ≤ {MEMORY_RATIO_TARGET}) |",
            "| --- | --- | --- | --- |",
        ]
        for i, m in enumerate(r["memory"], 1):
            good = m["ratio"] <= MEMORY_RATIO_TARGET
            ok &= good
            lines.append(f"| {i} | {_kib(m['small'])} | {_kib(m['large'])} | {m['ratio']:.3f} {_verdict(good)} |")
        lines += [
            "",
            "The recorder's data (histograms, restarts, the last failures), the scheduler aside. Its rate "
            f"samples grow with time, not tasks: at most 65 s of them, {_kib(bound)}.",
            "",
        ]
    if "shutdown" in results:
        r = results["shutdown"]
        lines += [
            f"#### SIGTERM to exit: `taskpool.examples.web.service` under uvicorn, {r['clients']} clients "
            f"posting `/fib/15`, {r['streams']} event streams open",
            "",
            f"| round | load (requests/s) | SIGTERM → exit (target < {SHUTDOWN_TARGET:g} s) "
            "| exit code | answered after SIGTERM | errors |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for i, rd in enumerate(r["rounds"], 1):
            good = rd["seconds"] < SHUTDOWN_TARGET and rd["exit_code"] in (0, -signal.SIGTERM)
            ok &= good
            lines.append(
                f"| {i} | {rd['requests_per_s']:,.0f} | {_ms(rd['seconds'])} {_verdict(good)} | {rd['exit_code']} "
                f"| {rd['answered_after_sigterm']} | {rd['errors']} |"
            )
        lines.append("")
    return "\n".join(lines), ok


async def measure(parts: list[str], quick: bool, repeat: int) -> dict[str, Any]:
    """Run the chosen parts; their raw figures."""
    runs: dict[str, Callable[[bool, int], Awaitable[dict[str, Any]]]] = {
        "sse": part_sse,
        "status": part_status,
        "shutdown": part_shutdown,
    }
    return {part: await runs[part](quick, repeat) for part in parts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and one repetition (CI smoke)")
    parser.add_argument(
        "--parts", type=lambda s: s.split(","), default=list(PARTS), help="comma-separated: " + ",".join(PARTS)
    )
    parser.add_argument("--repeat", type=int, default=None, help="repetitions of each measurement (default 3, quick 1)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the measuring process's loop")
    parser.add_argument("--json", metavar="PATH", help="also write the raw figures as JSON ('-' for stdout)")
    # helper processes (started by the parts above)
    parser.add_argument("--sse-clients", nargs=4, metavar=("HOST", "PORT", "PATH", "N"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--status-client", nargs=5, metavar=("HOST", "PORT", "PATH", "S", "GAP"), help=argparse.SUPPRESS
    )
    ns = parser.parse_args(argv)
    if ns.sse_clients:
        host, port, path, n = ns.sse_clients
        asyncio.run(sse_clients(host, int(port), path, int(n)))
        return 0
    if ns.status_client:
        host, port, path, seconds, gap = ns.status_client
        asyncio.run(status_client(host, int(port), path, float(seconds), float(gap)))
        return 0
    unknown = sorted(set(ns.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s): {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    repeat = ns.repeat or (1 if ns.quick else 3)
    runner: Callable[[Any], Any] = asyncio.run
    if ns.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    start = time.perf_counter()
    results = runner(measure([p for p in PARTS if p in ns.parts], ns.quick, repeat))
    text, ok = report(results)
    probe = h.probe_taskpool()
    print(
        f"## taskpool.web benchmarks\n\n{h.header_line(h.run_header(loop=ns.loop, quick=ns.quick, taskpool=probe))}\n"
    )
    print(text)
    print(f"{h.leftover_line()}\n\nTotal wall time: {time.perf_counter() - start:,.0f} s.")
    if ns.json:
        data = json.dumps(results, indent=2)
        if ns.json == "-":
            print(data)
        else:
            Path(ns.json).write_text(data + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
