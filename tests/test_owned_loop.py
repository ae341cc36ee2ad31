"""Loops taskpool owns run on uvloop when it is installed, asyncio's otherwise.

The command line's loop is checked through its real entry point (``taskpool._cli.main``,
in this process, and ``python -m taskpool`` as a subprocess): what runs on it records the
running loop's type.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from taskpool import _cli, _demo
from taskpool._loop import loop_factory, new_event_loop, run

from ._support import WAIT

try:
    import uvloop
except ImportError:  # pragma: no cover - a dependency wherever it builds
    uvloop = None

needs_uvloop = pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Loop types seen by record_loop and probe, in order.
seen: list[type[asyncio.AbstractEventLoop]] = []


async def record_loop(name: str = "probe") -> None:
    """A service for ``taskpool serve --worker inline``: it runs on the command's own loop."""
    loop = asyncio.get_running_loop()
    seen.append(type(loop))
    print(f"loop={type(loop).__module__}.{type(loop).__qualname__}", flush=True)


async def probe(say: Callable[..., Any], worker: str, watch: Callable[..., Any]) -> None:
    """A ``taskpool demo`` scenario."""
    seen.append(type(asyncio.get_running_loop()))


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    seen.clear()
    monkeypatch.setattr(_cli, "_quiet_logs", lambda: None)  # configures structlog for good


def without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # "import uvloop" raises ImportError


def is_uvloop(loop_type: type[asyncio.AbstractEventLoop]) -> bool:
    return uvloop is not None and issubclass(loop_type, uvloop.Loop)


@needs_uvloop
def test_the_factory_prefers_uvloop() -> None:
    assert loop_factory() == (uvloop.new_event_loop, True)
    assert loop_factory("uvloop") == (uvloop.new_event_loop, True)
    assert loop_factory("asyncio") == (asyncio.new_event_loop, False)
    loop = new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_the_factory_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    without_uvloop(monkeypatch)
    assert loop_factory() == (asyncio.new_event_loop, False)
    with pytest.raises(ImportError):
        loop_factory("uvloop")
    with pytest.raises(ValueError, match="loop must be"):
        loop_factory("trio")


@pytest.mark.parametrize("have_uvloop", [True, False])
def test_run_runs_on_the_chosen_loop_then_closes_it(have_uvloop: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if have_uvloop and uvloop is None:
        pytest.skip("uvloop is not installed")
    if not have_uvloop:
        without_uvloop(monkeypatch)
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> str:
        loops.append(asyncio.get_running_loop())
        assert asyncio.get_event_loop() is loops[0]
        return "done"

    assert run(main()) == "done"
    assert is_uvloop(type(loops[0])) is have_uvloop
    assert loops[0].is_closed()


def test_run_closes_the_coroutine_when_the_loop_kind_is_bad() -> None:
    async def main() -> None:
        raise AssertionError("never runs")

    coro = main()
    with pytest.raises(ValueError):
        run(coro, kind="nope")
    assert coro.cr_frame is None  # closed: no "never awaited" warning


@pytest.mark.parametrize("have_uvloop", [True, False])
def test_taskpool_demo_runs_on_uvloop_when_installed(
    have_uvloop: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if have_uvloop and uvloop is None:
        pytest.skip("uvloop is not installed")
    if not have_uvloop:
        without_uvloop(monkeypatch)
    monkeypatch.setitem(_demo.SCENARIOS, "probe", ("Probe", probe))
    assert _cli.main(["demo", "--scenario", "probe", "--progress", "off"]) == 0
    assert len(seen) == 1
    assert is_uvloop(seen[0]) is have_uvloop
    assert "=== Probe (probe" in capsys.readouterr().out


@pytest.mark.parametrize("have_uvloop", [True, False])
def test_taskpool_serve_runs_on_uvloop_when_installed(
    have_uvloop: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if have_uvloop and uvloop is None:
        pytest.skip("uvloop is not installed")
    if not have_uvloop:
        without_uvloop(monkeypatch)
    target = f"{__name__}:record_loop"
    assert _cli.main(["serve", target, "--worker", "inline", "--restart", "never"]) == 0
    assert len(seen) == 1
    assert is_uvloop(seen[0]) is have_uvloop
    assert "loop=" in capsys.readouterr().out


@needs_uvloop
def test_python_m_taskpool_serve_runs_on_uvloop() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taskpool", "serve", f"{__name__}:record_loop", "--worker", "inline"]
        + ["--restart", "never"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "loop=uvloop.Loop" in done.stdout, done.stdout
