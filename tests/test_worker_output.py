"""``worker_output=``: where what process workers print goes ("log", "inherit", "events").

Every process worker's output has been read by the time its pool is closed (the worker's
run ends after its pipes reach EOF), so the tests look at what arrived after closing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import taskpool
from taskpool import FunctionPool, RestartPolicy, WorkerCrashed
from taskpool._log import LOGGER_NAME, WORKER_LOGGER_NAME
from taskpool._options import PoolOptions
from taskpool._workers._output import pass_through

from ._modules import services
from ._support import WAIT, collect_until, settle
from .conftest import KINDS
from .faults import _faults as x

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_process = pytest.mark.skipif("process" not in KINDS, reason="needs process workers")


@pytest.fixture
def stdlib_logging(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """structlog unconfigured (so taskpool logs through ``logging``), every level captured."""
    was, config = structlog.is_configured(), structlog.get_config()
    structlog.reset_defaults()
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    try:
        yield caplog
    finally:
        if was:
            structlog.configure(**config)
        else:
            structlog.reset_defaults()


def output_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.stream, r.line) for r in caplog.records if r.name == WORKER_LOGGER_NAME]  # type: ignore[attr-defined]


def drain(sub: Any) -> list[tuple[str, str]]:
    out = []
    while (event := sub.get_nowait()) is not None:
        out.append((event.stream, event.line))
    return out


async def chatter_then_crash(pool: FunctionPool) -> None:
    async with asyncio.timeout(WAIT):
        assert await pool.add_task(x.chatter, "A") == "A"
        assert isinstance(await settle(pool.add_task(x.last_words, "Z")), WorkerCrashed)


# --- the three modes on the process kind ------------------------------------------------


@needs_process
@pytest.mark.asyncio
async def test_log_gives_records_and_events(
    stdlib_logging: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async with FunctionPool(1, worker="process", name="log", log_dir=tmp_path) as pool:
        assert pool.worker_output == "log"
        async with pool.events.subscribe("worker.log") as sub:
            await chatter_then_crash(pool)
            events = await collect_until(sub, lambda e: e.line == "last error Z")
            events_seen = [(e.stream, e.line) for e in events] + drain(sub)
    expected = {("stdout", "stdout line A"), ("stderr", "stderr line A"), ("stderr", "last error Z")}
    assert expected <= set(events_seen)
    assert expected <= set(output_records(stdlib_logging))
    assert "line A" not in capfd.readouterr().out  # not written through
    assert "[stderr] last error Z\n" in (tmp_path / "log-worker-0.log").read_text()


@needs_process
@pytest.mark.asyncio
async def test_events_gives_events_and_no_records(
    stdlib_logging: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async with FunctionPool(1, worker="process", name="ev", worker_output="events", log_dir=tmp_path) as pool:
        async with pool.events.subscribe("worker.log") as sub:
            await chatter_then_crash(pool)
            events = await collect_until(sub, lambda e: e.line == "last error Z")
    assert ("stdout", "stdout line A") in [(e.stream, e.line) for e in events]
    assert output_records(stdlib_logging) == []
    assert [r.getMessage() for r in stdlib_logging.records if r.name == LOGGER_NAME and r.event == "worker exited"]  # type: ignore[attr-defined]
    captured = capfd.readouterr()
    assert "line A" not in captured.out and "line A" not in captured.err
    text = (tmp_path / "ev-worker-0.log").read_text()
    assert "stdout line A\n" in text and "[stderr] last error Z\n" in text


@needs_process
@pytest.mark.asyncio
async def test_inherit_writes_through_to_our_stdout_and_stderr(
    stdlib_logging: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async with FunctionPool(1, worker="process", name="inh", worker_output="inherit", log_dir=tmp_path) as pool:
        async with pool.events.subscribe("worker.log") as sub:
            await chatter_then_crash(pool)
            assert await pool.add_task(x.chatter, "B") == "B"  # a fresh worker: still written through
        events = drain(sub)
    captured = capsys.readouterr()  # sys.stdout / sys.stderr as pytest swapped them: looked up at each write
    assert "stdout line A\n" in captured.out and "last words Z\n" in captured.out and "stdout line B\n" in captured.out
    assert "stderr line A\nraw stderr A\n" in captured.err and "last error Z\n" in captured.err
    assert events == []
    assert output_records(stdlib_logging) == []
    text = (tmp_path / "inh-worker-0.log").read_text()
    assert "stdout line A\n" in text and "[stderr] last error Z\n" in text and "stdout line B\n" in text


@needs_process
def test_inherit_reaches_a_programs_own_stdout() -> None:
    code = textwrap.dedent(
        """
        import asyncio
        from taskpool import FunctionPool
        from tests.faults._faults import chatter

        async def main():
            async with FunctionPool(1, worker="process", worker_output="inherit") as pool:
                await pool.add_task(chatter, "café ✓")

        asyncio.run(main())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        timeout=WAIT * 3,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == "stdout line café ✓\n"
    assert proc.stderr.decode() == "stderr line café ✓\nraw stderr café ✓\n"


class Chunks:
    """A stand-in for a pipe's StreamReader, giving these chunks one read at a time."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    async def read(self, n: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


@pytest.mark.asyncio
async def test_a_character_split_between_reads_stays_whole(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = tmp_path / "copy.log"
    with log.open("w", encoding="utf-8") as f:
        reader = Chunks(b"caf\xc3", b"\xa9 \xe2\x82", b"\xac\nno newline", b"\xff")
        await pass_through(reader, "stderr", f, "[stderr] ")  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert err == "café €\nno newline\ufffd"
    assert log.read_text(encoding="utf-8") == "[stderr] café €\n[stderr] no newline\ufffd\n"


# --- the option reaches persistent workers and services ----------------------------------------


@needs_process
@pytest.mark.asyncio
async def test_a_persistent_worker_uses_its_pools_option(
    stdlib_logging: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FunctionPool(1, worker="inline", worker_output="inherit") as pool:
        async with pool.import_persistent_worker("builtins", worker="process") as proxy:
            async with asyncio.timeout(WAIT):
                await proxy.call("print", "from the persistent worker", flush=True)
    assert "from the persistent worker\n" in capsys.readouterr().out
    assert output_records(stdlib_logging) == []


@needs_process
@pytest.mark.asyncio
async def test_a_service_uses_its_pools_option(stdlib_logging: pytest.LogCaptureFixture) -> None:
    async with FunctionPool(1, worker="inline", worker_output="events") as pool:
        async with pool.events.subscribe("worker.log") as sub:
            service = pool.keep_alive(services.forever, "svc", name="svc", restart=RestartPolicy(mode="never"))
            await collect_until(sub, lambda e: e.line.startswith("svc up in"))
            async with asyncio.timeout(WAIT):
                await service.stop()
    assert output_records(stdlib_logging) == []


@pytest.mark.asyncio
async def test_thread_and_inline_workers_print_to_our_stdout_themselves(capsys: pytest.CaptureFixture[str]) -> None:
    for kind in ("thread", "inline"):
        async with FunctionPool(1, worker=kind, worker_output="events") as pool:  # accepted, nothing to route
            async with asyncio.timeout(WAIT):
                await pool.add_task(print, f"printed by a {kind} worker")
    out = capsys.readouterr().out
    assert "printed by a thread worker\n" in out and "printed by a inline worker\n" in out


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("loud", ValueError, "worker_output must be one of 'log', 'inherit', 'events', got 'loud'"),
        ("", ValueError, "worker_output must be one of"),
        ("LOG", ValueError, "got 'LOG'"),
        (None, TypeError, "worker_output must be a str, got NoneType"),
        (sys.stdout, TypeError, "worker_output must be a str"),
    ],
)
def test_bad_values_are_refused(value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(")):
        FunctionPool(1, worker="inline", worker_output=value)


def test_options_default_and_check() -> None:
    options = PoolOptions.checked(
        pool_size=1,
        worker="inline",
        max_queue=None,
        task_timeout=None,
        max_tasks_per_worker=None,
        max_memory_per_worker=None,
        restart=None,
        log_dir=None,
        keep_records=0,
        name="o",
        concurrency=1,
    )
    assert options.worker_output == "log"
    assert FunctionPool(1, worker="inline", worker_output="inherit").worker_output == "inherit"
    assert taskpool.FunctionPool is FunctionPool
