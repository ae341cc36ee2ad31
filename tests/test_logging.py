"""Logging: silent until the application configures it; stdlib ``logging`` or structlog then.

A pool logs through the standard ``logging`` logger ``"taskpool"`` (``"taskpool.worker"``
for what workers print) unless structlog is configured, then through structlog. The
subprocess tests run a real program, so nothing the suite configured leaks in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
import structlog.testing

from taskpool import FunctionPool, WorkerCrashed
from taskpool._cli import _quiet_logs
from taskpool._log import LOGGER_NAME, WORKER_LOGGER_NAME, Logger, get_logger

from ._support import WAIT, settle
from .conftest import KINDS
from .faults import _faults as x

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_process = pytest.mark.skipif("process" not in KINDS, reason="needs process workers")

# A program whose process worker prints (stdout and stderr), then crashes, and whose hook
# raises: every kind of message taskpool logs at warning and error.
PROGRAM = textwrap.dedent(
    """
    import asyncio, logging, sys

    {setup}

    from taskpool import FunctionPool, WorkerCrashed
    from tests.faults._faults import chatter, last_words

    async def main():
        async with FunctionPool(1, worker="process", name="talk") as pool:
            pool.then(lambda value, task: 1 / 0)
            assert await pool.add_task(chatter, "A") == "A"
            try:
                await pool.add_task(last_words, "Z")
            except WorkerCrashed:
                pass
            else:
                raise SystemExit("the worker did not crash")

    asyncio.run(main())
    """
)

# Counts the taskpool records made, without a handler (a handler would be configuration).
COUNT_RECORDS = textwrap.dedent(
    """
    import atexit
    made = []
    make = logging.getLogRecordFactory()
    def factory(*args, **kwargs):
        record = make(*args, **kwargs)
        if record.name.startswith("taskpool"):
            made.append(record.getMessage())
        return record
    logging.setLogRecordFactory(factory)
    atexit.register(lambda: open(sys.argv[1], "w").write("\\n".join(made)))
    """
)


def run_program(*args: str, setup: str = "") -> subprocess.CompletedProcess[str]:
    code = PROGRAM.format(setup=setup)
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=WAIT * 3, check=False
    )


def run_snippet(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
        check=False,
    )


@pytest.fixture
def no_structlog() -> Iterator[None]:
    """structlog unconfigured for the test (another test's ``capture_logs`` configures it
    for good), as it was afterwards."""
    was, config = structlog.is_configured(), structlog.get_config()
    structlog.reset_defaults()
    try:
        yield
    finally:
        if was:
            structlog.configure(**config)
        else:
            structlog.reset_defaults()


def records(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(LOGGER_NAME) and getattr(r, "event", None) == event]


# --- quiet by default ----------------------------------------------------------------


@needs_process
def test_a_program_that_configured_nothing_prints_nothing(tmp_path: Any) -> None:
    made = tmp_path / "records"
    proc = run_program(str(made), setup=COUNT_RECORDS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == ""
    logged = made.read_text()
    # It did log (at warning and error): nothing of it reached the terminal.
    assert "worker exited pool=talk worker_id=0" in logged
    assert "hook raised pool=talk hook=then" in logged
    assert "worker output pool=talk worker_id=0 stream=stderr line='stderr line A'" in logged


@needs_process
def test_with_basicconfig_the_records_reach_the_handler() -> None:
    proc = run_program(setup="logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    err = proc.stderr.splitlines()
    assert "INFO taskpool.worker: worker output pool=talk worker_id=0 stream=stdout line='stdout line A'" in err
    assert "WARNING taskpool.worker: worker output pool=talk worker_id=0 stream=stderr line='last error Z'" in err
    exited = [line for line in err if line.startswith("WARNING taskpool: worker exited pool=talk worker_id=0")]
    assert exited == ["WARNING taskpool: worker exited pool=talk worker_id=0 reason='exited with code 7' exitcode=7"]
    hook = err.index("ERROR taskpool: hook raised pool=talk hook=then task_id=1")
    assert "ZeroDivisionError: division by zero" in err[hook:]  # exc_info passed through


# --- stdlib logging, in this process -------------------------------------------------------


@needs_process
@pytest.mark.asyncio
async def test_records_carry_their_keys(no_structlog: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    async with FunctionPool(1, worker="process", name="keys") as pool:
        pool.then(lambda value, task: 1 / 0)
        async with asyncio.timeout(WAIT):
            assert await pool.add_task(x.chatter, "A") == "A"
            assert isinstance(await settle(pool.add_task(x.last_words, "Z")), WorkerCrashed)
    (exited,) = records(caplog, "worker exited")
    assert exited.name == "taskpool" and exited.levelno == logging.WARNING
    assert (exited.pool, exited.worker_id, exited.exitcode) == ("keys", 0, 7)  # type: ignore[attr-defined]
    (hook,) = records(caplog, "hook raised")
    assert hook.levelno == logging.ERROR and hook.hook == "then"  # type: ignore[attr-defined]
    assert hook.exc_info is not None and hook.exc_info[0] is ZeroDivisionError
    assert hook.pathname.endswith("_hooks.py")  # the record names the line that logged
    lines = {(r.stream, r.line, r.levelno) for r in records(caplog, "worker output")}  # type: ignore[attr-defined]
    assert ("stdout", "stdout line A", logging.INFO) in lines
    assert ("stderr", "stderr line A", logging.WARNING) in lines
    assert {r.name for r in records(caplog, "worker output")} == {WORKER_LOGGER_NAME}


@pytest.mark.asyncio
async def test_logging_configured_after_the_pool_was_made_applies(
    no_structlog: None, caplog: pytest.LogCaptureFixture
) -> None:
    pool = FunctionPool(1, worker="inline", name="late")
    caplog.set_level(logging.ERROR, logger=LOGGER_NAME)
    async with pool:
        pool.then(lambda value, task: 1 / 0)
        async with asyncio.timeout(WAIT):
            await pool.add_task(abs, -1)
    assert [r.getMessage() for r in records(caplog, "hook raised")] == ["hook raised pool=late hook=then task_id=1"]


def test_message_and_extra(no_structlog: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    log = get_logger(pool="p").bind(module="m")  # "module" is a LogRecord attribute
    log.warning("shadowed", names=["a", "b"], reason="two words", why=None, n=3)
    (record,) = caplog.records
    assert record.getMessage() == "shadowed pool=p module=m names=['a', 'b'] reason='two words' n=3"
    assert record.module == "test_logging"  # the record's own attribute is untouched
    assert record.taskpool_module == "m"  # type: ignore[attr-defined]
    assert record.why is None and record.event == "shadowed"  # type: ignore[attr-defined]


def test_exception_logs_the_exception_being_handled(no_structlog: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER_NAME)
    try:
        raise KeyError("boom")
    except KeyError:
        get_logger().exception("failed", service="s")
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None and record.exc_info[0] is KeyError


def test_nothing_is_formatted_for_a_disabled_level(no_structlog: None, caplog: pytest.LogCaptureFixture) -> None:
    class Loud:
        def __repr__(self) -> str:
            raise AssertionError("formatted although nobody wants it")

    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    get_logger().child("worker").info("worker output", line=Loud())
    assert caplog.records == []


def test_the_library_logger_has_a_null_handler() -> None:
    # Without it, Python's last-resort handler prints warnings when nothing is configured.
    assert any(type(h) is logging.NullHandler for h in logging.getLogger(LOGGER_NAME).handlers)


# --- structlog ---------------------------------------------------------------------------


@needs_process
@pytest.mark.asyncio
async def test_with_structlog_configured_the_events_reach_structlog(
    no_structlog: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    capture = structlog.testing.LogCapture()
    names: list[str] = []

    def logger_name(logger: Any, method: str, event: Any) -> Any:
        names.append(logger.name)
        return event

    structlog.configure(processors=[logger_name, capture], logger_factory=structlog.stdlib.LoggerFactory())
    async with FunctionPool(1, worker="process", name="sl") as pool:
        async with asyncio.timeout(WAIT):
            assert await pool.add_task(x.chatter, "A") == "A"
            assert isinstance(await settle(pool.add_task(x.last_words, "Z")), WorkerCrashed)
    by_event = {e["event"]: e for e in capture.entries}
    assert by_event["worker exited"]["pool"] == "sl"
    assert by_event["worker exited"]["log_level"] == "warning"
    outputs = [(e["stream"], e["line"]) for e in capture.entries if e["event"] == "worker output"]
    assert ("stdout", "stdout line A") in outputs
    assert {"taskpool", "taskpool.worker"} <= set(names)  # the names stdlib-based setups filter on
    assert caplog.records == []  # structlog's processors decided: not logged a second time


def test_capture_logs_sees_a_logger_made_before_it() -> None:
    log = get_logger(pool="early")
    with structlog.testing.capture_logs() as logs:
        log.error("hook raised", hook="then")
    assert logs == [{"event": "hook raised", "pool": "early", "hook": "then", "log_level": "error"}]


# --- the command line's console output -------------------------------------------------------


def test_the_cli_console_shows_warnings_on_stderr_without_worker_output() -> None:
    proc = run_snippet(
        """
        from taskpool._cli import _quiet_logs
        from taskpool._log import get_logger
        _quiet_logs()
        _quiet_logs()  # installed once
        log = get_logger(pool="p")
        log.info("not shown")
        log.warning("worker exited", worker_id=1, reason="crashed")
        log.child("worker").warning("worker output", worker_id=1, stream="stderr", line="x")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith(" [WARNING] taskpool: worker exited pool=p worker_id=1 reason=crashed")


def test_the_cli_console_leaves_a_configured_program_alone() -> None:
    proc = run_snippet(
        """
        import logging
        logging.basicConfig(format="app: %(message)s")
        from taskpool._cli import _quiet_logs
        from taskpool._log import get_logger
        _quiet_logs()
        get_logger().warning("worker exited", worker_id=1)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["app: worker exited worker_id=1"]


def test_the_cli_console_is_not_installed_here() -> None:
    # Under pytest the root logger has handlers: the program (pytest) configured logging.
    before = list(logging.getLogger(LOGGER_NAME).handlers)
    _quiet_logs()
    assert logging.getLogger(LOGGER_NAME).handlers == before
    assert isinstance(get_logger(), Logger)
