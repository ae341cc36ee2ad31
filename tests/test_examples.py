"""The ported seed examples, run as scripts, checked against the seed's behaviour.

Each runs in a subprocess (``python -m taskpool.examples.NAME``, ``taskpool demo``) in
about a second or two; the checks are on what the seed prints: the race winner line,
each result line, ``DONE! N``, the runtime line, and the chaining states.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys

import pytest

from .conftest import KINDS

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif("process" not in KINDS, reason="the examples run process workers"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_LIMIT = 90.0  # seconds: a bound on a whole script, only reached when it hangs

#: What the scaled-down calls return (the seed's values where its sizes were kept).
RESULTS = {
    "fib(32)": "2178309",
    "find_primes_up_to(17000000)": "1091314",  # the seed's 1091314: same size
    "tribonacci(27)": "2555757",
}
PI = re.compile(r"^3\.14159265358\d*$")
RUNTIME = re.compile(r"^Script runtime: (\d+\.\d+) sec$")


async def run(*args: str) -> list[str]:
    """Run ``python *args`` from the repository root; its stdout lines (exit code 0)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(RUN_LIMIT):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "Error" not in out.decode(), out.decode()
    return out.decode().splitlines()


def results(lines: list[str]) -> dict[str, str]:
    """``meta value`` lines: the seed's ``then`` output."""
    out = {}
    for line in lines:
        name, _, value = line.rpartition(" ")
        if re.match(r"^\w+\(\d+\)( #2)?$", name):
            out[name] = value
    return out


def check_race_and_results(lines: list[str], metas: list[str]) -> None:
    first = [line for line in lines if line.startswith("Finished First: ")]
    assert len(first) == 1
    winner, _, value = first[0].removeprefix("Finished First: ").partition(" = ")
    got = results(lines)
    assert sorted(got) == sorted(metas)
    for meta, expected in RESULTS.items():
        if meta in got:
            assert got[meta] == expected
    # The race winner is the first result printed, with the same value.
    printed = [line.rpartition(" ")[0] for line in lines if line.rpartition(" ")[0] in metas]
    assert printed[0] == winner
    assert got[winner] == value
    # "Finished First" comes before the results, then a blank line (the seed's "\n").
    assert lines.index(first[0]) < lines.index(f"{printed[0]} {got[printed[0]]}")
    assert lines[lines.index(first[0]) + 1] == ""


def check_done(lines: list[str], counts: list[int]) -> None:
    assert [line for line in lines if line.startswith("DONE!")] == [f"DONE! {n}" for n in counts]
    runtimes = [RUNTIME.match(line) for line in lines if line.startswith("Script runtime")]
    assert len(runtimes) == len(counts)
    assert all(m is not None and float(m.group(1)) > 0 for m in runtimes)
    for n in counts:  # each DONE! is followed by two blank lines, then the runtime
        i = lines.index(f"DONE! {n}")
        assert lines[i + 1 : i + 3] == ["", ""]
        assert RUNTIME.match(lines[i + 3])


async def test_basic_workers() -> None:
    lines = await run("-m", "taskpool.examples.basic_workers")
    metas = ["fib(32)", "find_primes_up_to(17000000)", "tribonacci(27)", "estimate_pi(25)"]
    check_race_and_results(lines, metas)
    assert PI.match(results(lines)["estimate_pi(25)"])
    check_done(lines, [4])


async def test_shared_workers() -> None:
    lines = await run("-m", "taskpool.examples.shared_workers")
    metas = ["fib(32)", "find_primes_up_to(17000000)", "tribonacci(27)", "estimate_pi(25)", "estimate_pi(25) #2"]
    check_race_and_results(lines, metas)
    got = results(lines)
    # The seed's values exactly: two estimates, then a third added to them.
    assert got["estimate_pi(25)"] == "6.283185307179574"
    assert got["estimate_pi(25) #2"] == "9.424777960769362"
    order = [line.rpartition(" ")[0] for line in lines if line.rpartition(" ")[0] in metas]
    assert order.index("estimate_pi(25)") < order.index("estimate_pi(25) #2")  # chained follow-up
    check_done(lines, [5])


def states(lines: list[str], label: str) -> list[int]:
    return [int(line.split(":  ")[1]) for line in lines if re.match(rf"^{label}: state\([\d, ]*\):  \d+$", line)]


async def test_stateful_chaining() -> None:
    lines = await run("-m", "taskpool.examples.stateful_chaining")
    assert lines[:2] == ["Available worker:  Yes", "Available worker:  No"]
    assert states(lines, "A") == [0, 1, 2]
    assert states(lines, "B") == [0, 1, 2]
    assert states(lines, "B2") == [2, 3, 4]  # continues B's worker and state
    assert states(lines, "C") == [0, 1, 2]
    assert states(lines, "C2") == [0, 1, 2]  # a fresh worker: starts from 0
    for line in ("A: add(1, 2):  3", "B: add(5, 6):  11", "B2: add(15, 16):  31", "C2: add(111, 112):  223"):
        assert line in lines
    assert "A: fib():  2178309" in lines
    # B2 starts only once B is done.
    assert lines.index("B: fib():  1346269") < lines.index("B2: state():  2")
    check_done(lines, [4, 5])
    first_round = lines[: lines.index("DONE! 4")]
    records = [line for line in first_round if line.startswith("Done ")]
    assert sorted(records) == [
        "Done A! Success {'meta': 1}",
        "Done B! Success None",
        "Done B2! Success None",
        "Done C! Success None",
    ]
    second_round = lines[lines.index("DONE! 4") : lines.index("DONE! 5")]
    assert [line for line in second_round if line.startswith("Done ")][-1] == "Done C2! Success None"
    assert "80 %" in second_round  # 4 of 5 completed while C2 ran: the seed's "80 %"
    percents = [line for line in lines if line.endswith(" %")]
    assert len(percents) == 5
    assert all(re.match(r"^\d+(\.\d{1,3})? %$", p) for p in percents)


async def test_process_pool() -> None:
    lines = await run("-m", "taskpool.examples.process_pool")
    metas = ["fib(32)", "find_primes_up_to(17000000)", "tribonacci(27)", "estimate_pi(25)"]
    check_race_and_results(lines, metas)
    check_done(lines, [4])


async def test_demo_runs_every_scenario_with_status_lines() -> None:
    lines = await run("-m", "taskpool", "demo", "--progress", "lines")
    headers = [line for line in lines if line.startswith("=== ")]
    assert headers == [
        "=== Basic Independent Workers (basic, worker=process) ===",
        "=== Shared Worker Instances (shared, worker=process) ===",
        "=== Stateful Worker Chaining (chaining, worker=process) ===",
        "=== The pool's own tasks on workers (tasks, worker=process) ===",
    ]
    check_done(lines, [4, 5, 4, 5, 4])
    status = [line for line in lines if line.startswith("  [status] ")]
    assert any(re.search(r"succeeded on worker \d+: 4/4 done \(100%\)$", s) for s in status)
    assert sum(line.startswith("Finished First: ") for line in lines) == 3


async def test_demo_list_and_unknown_scenario() -> None:
    assert (await run("-m", "taskpool", "demo", "--list"))[0].startswith("basic ")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "taskpool", "demo", "--scenario", "nope", cwd=ROOT, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(RUN_LIMIT):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"unknown scenario(s): nope" in err


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")
async def test_cluster_server_as_a_script() -> None:
    from .test_services import ask_pid, free_port

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "taskpool.examples.cluster_server", str(port), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(RUN_LIMIT):
            line = (await proc.stdout.readline()).decode()
        assert line == f"listening on http://127.0.0.1:{port}/ (pid {proc.pid})\n"
        assert await ask_pid(port) == proc.pid
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(RUN_LIMIT):
            await proc.wait()
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
