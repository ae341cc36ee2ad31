"""Worker kinds are found through a registry that other packages extend; the core asks
a kind's capabilities, never its name."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Iterator
from typing import Any

import pytest

import taskpool._workers as registry
from taskpool import FunctionPool, import_persistent_worker
from taskpool._workers._inline import InlineWorker
from taskpool.workers import Capabilities, Worker, kind_names, register_kind

from . import _funcs as f


class RenamedInline(InlineWorker):
    """The inline kind under another name: the core must treat it by what it can do."""

    kind = "renamed"


class EntryPointKind(InlineWorker):
    kind = "from-entry-point"


@pytest.fixture(autouse=True)
def _restore_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_entry_points_read", False)
    yield


@pytest.mark.asyncio
async def test_a_registered_kind_runs_the_whole_contract() -> None:
    register_kind("renamed", RenamedInline)
    assert "renamed" in kind_names()
    done: list[int] = []
    async with FunctionPool(2, worker="renamed") as pool:
        pool.then(lambda r, t: done.append(r))
        assert await pool.add_task(f.add, 1, 2) == 3
        assert await pool.add_task(f.async_add, 2, 2) == 4
        snap = pool.snapshot()
    assert done == [3, 4]
    assert {w.kind for w in snap.workers} == {"renamed"}


@pytest.mark.asyncio
async def test_a_kind_sharing_the_interpreter_gets_a_private_module_copy_whatever_its_name() -> None:
    register_kind("renamed", RenamedInline)
    async with import_persistent_worker("taskpool.examples.math", worker="renamed") as math:
        assert await math.add(1, 2) == 3  # add counts its calls in the module
        assert await math.counter == 1
    import taskpool.examples.math as real

    assert real.counter == 0  # the parent's module was never touched


@pytest.mark.asyncio
async def test_kinds_come_from_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = importlib.metadata.EntryPoint(
        name="from-entry-point", value=f"{__name__}:EntryPointKind", group=registry.ENTRY_POINT_GROUP
    )

    def entry_points(**kw: Any) -> list[importlib.metadata.EntryPoint]:
        return [ep] if kw.get("group") == registry.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    async with FunctionPool(1, worker="from-entry-point") as pool:
        assert await pool.add_task(f.add, 2, 3) == 5
    assert "from-entry-point" in kind_names()


def test_bad_registrations_and_unknown_kinds_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_kind("process", RenamedInline)
    with pytest.raises(TypeError, match="Worker subclass"):
        register_kind("x", object)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not be empty"):
        register_kind("", RenamedInline)
    register_kind("broken", "no.such.module:Kind")
    with pytest.raises(ValueError, match="could not be loaded"):
        FunctionPool(1, worker="broken")
    register_kind("not-a-worker", "taskpool.examples.math:add")
    with pytest.raises(ValueError, match="not a Worker subclass"):
        FunctionPool(1, worker="not-a-worker")
    with pytest.raises(ValueError, match="worker must be one of 'process', 'thread', 'inline'"):
        FunctionPool(1, worker="nope")


def test_every_built_in_kind_declares_its_capabilities() -> None:
    for name in ("process", "thread", "inline"):
        cls = registry.backend(name)
        assert issubclass(cls, Worker)
        assert isinstance(cls.capabilities, Capabilities)
        assert cls.kind == name
    assert registry.backend("process").capabilities.isolated
    assert not registry.backend("thread").capabilities.isolated


def test_memory_limits_need_a_kind_that_reports_memory() -> None:
    register_kind("renamed", RenamedInline)
    with pytest.raises(ValueError, match="max_memory_per_worker"):
        FunctionPool(1, worker="renamed", max_memory_per_worker=10**9)


class SlowCleanupInline(InlineWorker):
    """A kind whose pool_closed takes longer than the grace (as stopping a private Ray does)."""

    kind = "slow-cleanup"
    kills = 0
    cleaned = False

    @classmethod
    async def pool_closed(cls, spec: Any) -> None:
        await asyncio.sleep(1.2)  # the cleanup's own slowness, longer than the grace below
        cls.cleaned = True

    def kill(self) -> None:
        type(self).kills += 1
        super().kill()


@pytest.mark.asyncio
async def test_a_kinds_slow_cleanup_is_waited_for_and_ended_workers_are_not_killed() -> None:
    # Every worker has ended when pool_closed runs: a grace running out then must not
    # kill them (a kill through Ray once it stopped started a new Ray), only wait.
    register_kind("slow-cleanup", SlowCleanupInline)
    SlowCleanupInline.kills, SlowCleanupInline.cleaned = 0, False
    pool = FunctionPool(2, worker="slow-cleanup")
    await pool.start()
    assert await pool.add_task(f.add, 1, 2) == 3
    await pool.aclose(grace=0)
    assert SlowCleanupInline.cleaned  # aclose waited for it
    assert SlowCleanupInline.kills == 0
    assert pool.state == "closed"
