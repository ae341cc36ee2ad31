"""Shared fixtures: the worker-kind matrix, event loops, and leak and hang detection.

* ``KINDS`` is the one list of worker kinds every ``kind``-parametrised test runs on:
  ``"inline"`` and ``"thread"``, plus ``"process"`` as soon as ``taskpool._workers._process``
  imports. ``TASKPOOL_TEST_KINDS=inline,thread`` narrows it (e.g. while a kind is in the works).
* Async tests use pytest-asyncio (strict mode: mark them ``@pytest.mark.asyncio``). Each
  runs on asyncio's own loop; tests (or modules) marked ``@pytest.mark.uvloop`` run on
  uvloop too.
* Like CPython's ``test_concurrent_futures``: every test fails if it leaves a thread or a
  child process behind, and a test that hangs dumps every thread's stack.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import sys
import threading
import time

import psutil
import pytest
from hypothesis import HealthCheck, settings

KINDS = ["inline", "thread"]
try:
    import taskpool._workers._process  # noqa: F401
except ImportError:
    pass
else:
    KINDS.append("process")
from tests.ray import session as ray_session  # noqa: E402

if ray_session.kinds_want_ray():  # only when asked: Ray starts slowly and is an extra
    KINDS.append("ray")
if os.environ.get("TASKPOOL_TEST_KINDS"):
    KINDS = [k for k in KINDS if k in os.environ["TASKPOOL_TEST_KINDS"].split(",")]

#: Kinds whose workers are not the pool's own loop: a plain function may block there.
OFFLOOP_KINDS = [k for k in KINDS if k != "inline"]

try:
    import uvloop
except ImportError:  # pragma: no cover - a dependency wherever it builds
    uvloop = None

os.environ["TASKPOOL_TESTS_PARENT_PID"] = str(os.getpid())  # see tests._funcs.crash_worker

LEAK_GRACE = 5.0  # seconds a finishing thread or child process gets to end
HANG_DUMP_AFTER = 100.0  # seconds: before pytest-timeout's 120 s

settings.register_profile(
    "taskpool",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("taskpool")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "uvloop: also run this async test on uvloop")


@pytest.fixture(scope="session", autouse=True)
def _shared_ray() -> object:
    """The session's one local Ray, started before the first test when the matrix has ray."""
    if "ray" in KINDS:
        ray_session.start()
    yield
    ray_session.stop()


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    factories: dict[str, object] = {"asyncio": asyncio.new_event_loop}
    if uvloop is not None and item.get_closest_marker("uvloop") is not None:
        factories["uvloop"] = uvloop.new_event_loop
    return factories


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Each worker kind in turn."""
    return request.param


@pytest.fixture(params=OFFLOOP_KINDS)
def offloop_kind(request: pytest.FixtureRequest) -> str:
    """Each worker kind whose tasks do not run on the pool's loop."""
    return request.param


@pytest.fixture(autouse=True)
def _dump_on_hang() -> object:
    try:  # the captured stderr (shown with the failure), or the real one if it has no fd
        sys.stderr.fileno()
        out = sys.stderr
    except (AttributeError, OSError, ValueError):
        out = sys.__stderr__
    faulthandler.dump_traceback_later(HANG_DUMP_AFTER, repeat=False, file=out)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def _structlog_isolated() -> object:
    """Each test starts with structlog unconfigured, as an application that has not set it up.

    ``structlog.testing.capture_logs()`` leaves structlog configured when it ends; the
    tests after it would log through structlog's console renderer (rich tracebacks, some
    milliseconds each on the loop) instead of taskpool's quiet default.
    """
    yield
    import structlog

    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _no_leaks() -> object:
    """Fail a test that leaves threads or child processes behind.

    Threads and processes that are on their way out get a short, bounded join; what
    is still alive after it is a leak (children are then killed so the suite goes on).
    """
    me = psutil.Process()
    threads_before = set(threading.enumerate())
    children_before = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = time.monotonic() + LEAK_GRACE
    leaked_threads = []
    for t in threading.enumerate():
        if t in threads_before or t is threading.current_thread():
            continue
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            leaked_threads.append(t.name)
    new_children = [
        p for p in me.children(recursive=True) if p.pid not in children_before and not ray_session.is_shared(p)
    ]
    _, alive = psutil.wait_procs(new_children, timeout=max(0.1, deadline - time.monotonic()))
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=LEAK_GRACE)
    problems = []
    if leaked_threads:
        problems.append(f"leaked threads: {leaked_threads}")
    if alive:
        problems.append(f"leaked child processes: {[p.pid for p in alive]}")
    if problems:
        pytest.fail("; ".join(problems))
