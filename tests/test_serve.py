"""``taskpool serve``, run as a real subprocess: output prefixes, log files, signals, exit codes.

Every wait is bounded (``WAIT``); a process still running when a test ends is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable

import pytest

from ._support import WAIT
from .conftest import KINDS

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif("process" not in KINDS, reason="taskpool serve runs process workers"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICES = "tests._modules.services"


class Serve:
    """A ``python -m taskpool serve ...`` subprocess and the lines it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def until(self, predicate: Callable[[str], bool], what: str) -> str:
        """Read stdout until a line matches (bounded)."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    raw = await self.proc.stdout.readline()
                    if not raw:
                        break
                    line = raw.decode().rstrip("\n")
                    self.lines.append(line)
                    if predicate(line):
                        return line
        except TimeoutError:
            pass
        raise AssertionError(f"no line with {what}; got {self.lines}")

    async def finish(self) -> tuple[int, str, str]:
        """Wait for the exit (bounded); return (exit code, rest of stdout, stderr)."""
        async with asyncio.timeout(WAIT):
            out, err = await self.proc.communicate()
        rest = out.decode()
        self.lines.extend(rest.splitlines())
        assert self.proc.returncode is not None
        return self.proc.returncode, rest, err.decode()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)


@contextlib.asynccontextmanager
async def serve(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Serve]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskpool",
        "serve",
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield Serve(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


async def test_output_is_prefixed_and_logged_per_worker_and_sigterm_stops_gracefully(tmp_path: object) -> None:
    logs = os.path.join(str(tmp_path), "logs")
    async with serve(f"{SERVICES}:main", "--instances", "2", "--log-dir", logs) as srv:
        up = re.compile(r"^main\.([01]) \| main up in (\d+)$")
        pids: dict[str, str] = {}
        while len(pids) < 2:
            line = await srv.until(lambda s: up.match(s) is not None, "an instance's prefixed output")
            m = up.match(line)
            assert m is not None
            pids[m.group(1)] = m.group(2)
        # Each instance's stderr line, prefixed (both: the log files are checked below).
        seen = {line[:6] for line in srv.lines if line.startswith("main.") and "| to stderr" in line}
        while len(seen) < 2:
            line = await srv.until(lambda s: s.startswith("main.") and "| to stderr" in s, "stderr, prefixed")
            seen.add(line[:6])
        srv.signal(signal.SIGTERM)
        code, _, err = await srv.finish()
    assert code == 0, (srv.lines, err)
    assert any(line.startswith("[taskpool] SIGTERM: stopping main (grace 5 s)") for line in srv.lines)
    assert sorted(line for line in srv.lines if line.endswith("exited (stopped)")) == [
        "[taskpool] main.0 exited (stopped)",
        "[taskpool] main.1 exited (stopped)",
    ]
    assert "worker output" not in err  # shown once, prefixed; not again in the log
    files = sorted(os.listdir(logs))
    assert len(files) == 2
    contents = "".join(pathlib.Path(logs, f).read_text(encoding="utf-8") for f in files)
    for pid in pids.values():
        assert f"main up in {pid}" in contents
    assert contents.count("to stderr") == 2


async def test_first_sigint_stops_gracefully() -> None:
    async with serve(f"{SERVICES}:amain", "--name", "api") as srv:
        await srv.until(lambda s: s.startswith("api.0 | amain up in"), "the instance up")
        srv.signal(signal.SIGINT)
        code, _, err = await srv.finish()
    assert code == 0, (srv.lines, err)
    assert any(line.startswith("[taskpool] SIGINT: stopping api") for line in srv.lines)
    assert "[taskpool] api.0 exited (stopped)" in srv.lines


async def test_second_sigint_forces_the_stop_and_exits_130() -> None:
    # The instance takes 30 s to clean up after cancellation, within a grace of 60 s.
    async with serve(f"{SERVICES}:stubborn", "--grace", "60") as srv:
        await srv.until(lambda s: s.startswith("stubborn.0 | stubborn up in "), "the instance up")
        srv.signal(signal.SIGINT)
        await srv.until(lambda s: s.endswith("| stubborn cleaning up"), "the graceful stop under way")
        srv.signal(signal.SIGINT)
        code, _, err = await srv.finish()  # bounded: well before the 30 s cleanup
    assert code == 130, (srv.lines, err)
    assert any("again: killing stubborn now" in line for line in srv.lines)


async def test_restart_limit_spent_exits_1() -> None:
    args = (f"{SERVICES}:crash_main", "--restart-limit", "2", "--restart-delay", "0.01")
    async with serve(*args) as srv:
        code, _, err = await srv.finish()
    assert code == 1, (srv.lines, err)
    assert sum(line.startswith("crash_main.0 | crash_main up in") for line in srv.lines) == 2
    assert any(line.startswith("[taskpool] crash_main.0 restarted after 0.01 s (attempt 1)") for line in srv.lines)
    assert any(line.startswith("[taskpool] crash_main.0 broken") for line in srv.lines)
    assert "[taskpool] crash_main: restart limit spent, giving up" in srv.lines


async def test_failure_not_restarted_exits_1_and_clean_end_exits_0() -> None:
    async with serve(f"{SERVICES}:crash_main", "--restart", "never") as srv:
        code, _, err = await srv.finish()
    assert code == 1, (srv.lines, err)
    async with serve(f"{SERVICES}:returns", "--restart", "on-failure") as srv:
        code, _, err = await srv.finish()
    assert code == 0, (srv.lines, err)
    assert "[taskpool] returns.0 exited (returned)" in srv.lines


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (f"{SERVICES}:no_such_function", "has no attribute 'no_such_function'"),
        ("tests._modules.no_such_module:main", "No module named 'tests._modules.no_such_module'"),
        (SERVICES, "expected MODULE:FUNCTION"),
        (f"{SERVICES}:_funcs", "is not callable"),
    ],
)
async def test_bad_target_exits_2_with_a_clear_message(target: str, message: str) -> None:
    async with serve(target) as srv:
        code, out, err = await srv.finish()
    assert code == 2
    assert err.startswith(f"taskpool serve: cannot load {target}: ")
    assert message in err
    assert out == ""


async def test_bad_arguments_exit_2() -> None:
    async with serve(f"{SERVICES}:amain", "--instances", "0") as srv:
        code, _, err = await srv.finish()
    assert code == 2
    assert "--instances must be >= 1" in err


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")
async def test_cluster_example_under_serve() -> None:
    from .test_services import free_port, spread

    port = free_port()
    env = {"TASKPOOL_CLUSTER_PORT": str(port)}
    async with serve("taskpool.examples.cluster_server:main", "--instances", "2", env=env) as srv:
        listening = re.compile(r"^main\.[01] \| listening on http://127\.0\.0\.1:(\d+)/ \(pid (\d+)\)$")
        pids: set[int] = set()
        while len(pids) < 2:
            line = await srv.until(lambda s: listening.match(s) is not None, "an instance listening")
            m = listening.match(line)
            assert m is not None and int(m.group(1)) == port
            pids.add(int(m.group(2)))
        async with asyncio.timeout(WAIT):
            assert await spread(port, pids) == pids
        srv.signal(signal.SIGTERM)
        code, _, err = await srv.finish()
    assert code == 0, (srv.lines, err)
