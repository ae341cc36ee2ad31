"""Kept-alive services: ``pool.keep_alive`` runs long-lived functions in dedicated workers.

Service functions (``tests._modules.services``) announce themselves with a ``svc.up``
event carrying their pid and thread; tests wait on those, never on the clock.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import psutil
import pytest

from taskpool import FunctionPool, PoolClosed, RestartPolicy, Service, ServiceEvent, UserEvent
from taskpool.examples import cluster_server
from tests._modules import services as svc

from ._support import WAIT, Gate, caps, collect, collect_until
from .conftest import KINDS, OFFLOOP_KINDS

pytestmark = pytest.mark.asyncio

SERVICE_KINDS = OFFLOOP_KINDS  # a service's instances hold their workers: off the pool's loop
PROCESS = [k for k in ("process",) if k in KINDS]


@pytest.fixture(params=SERVICE_KINDS)
def skind(request: pytest.FixtureRequest) -> str:
    return request.param


async def ups(sub: Any, n: int) -> list[dict[str, Any]]:
    """The data of the next ``n`` ``svc.up`` events."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT):
        async for event in sub:
            if isinstance(event, UserEvent) and event.topic == "svc.up":
                out.append(event.data)
                if len(out) == n:
                    return out
    raise AssertionError(f"only {len(out)} of {n} instances came up")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def service_events(events: list[Any], topic: str) -> list[ServiceEvent]:
    return [e for e in events if isinstance(e, ServiceEvent) and e.topic == topic]


# --- running ---------------------------------------------------------------------------------


async def test_instances_run_concurrently_in_dedicated_workers(skind: str) -> None:
    async with FunctionPool(1, worker="inline", name="host") as pool:
        async with pool.events.subscribe("svc.*", "service.*") as sub:
            service = pool.keep_alive(svc.forever, "api", name="api", instances=3, worker=skind)
            assert isinstance(service, Service)
            up = await ups(sub, 3)
            if caps(skind).isolated:
                assert len({u["pid"] for u in up}) == 3  # a process each
            else:
                assert len({u["thread"] for u in up}) == 3  # a thread each
            assert service.state == "running"
            assert service.runs == [1, 1, 1]
            workers = [w for w in pool.snapshot().workers if w.role == "service"]
            assert len(workers) == 3
            assert {w.name for w in workers} == {"host:api"}
            assert {w.kind for w in workers} == {skind}
            assert {w.state for w in workers} == {"busy"}
            assert [w.id for w in workers] == [1, 2, 3]  # after the pool's own worker

            await service.stop()
            assert service.state == "stopped"
            events = await collect_until(sub, lambda e: e.topic == "service.stopped")
    downs = [e for e in events if isinstance(e, UserEvent) and e.topic == "svc.down"]
    assert len(downs) == 3  # async instances were cancelled: their cleanup ran
    exited = service_events(events, "service.exited")
    assert sorted(e.instance for e in exited) == [0, 1, 2]
    assert {e.reason for e in exited} == {"stopped"}
    if caps(skind).has_pid:
        assert all(gone(u["pid"]) for u in up)


async def test_service_added_before_the_pool_starts(skind: str) -> None:
    pool = FunctionPool(1, worker="inline")
    service = pool.keep_alive(svc.forever, "early", name="early", worker=skind)
    assert service.state == "new"
    async with pool, pool.events.subscribe("svc.up") as sub:
        await ups(sub, 1)
        assert service.state == "running"
    assert service.state == "stopped"  # the pool's exit stopped it


async def test_pool_exit_stops_services(skind: str) -> None:
    async with FunctionPool(1, worker="inline") as pool:
        async with pool.events.subscribe("svc.*") as sub:
            a = pool.keep_alive(svc.forever, "a", name="a", instances=2, worker=skind)
            b = pool.keep_alive(svc.forever, "b", name="b", worker=skind)
            up = await ups(sub, 3)
    assert (a.state, b.state) == ("stopped", "stopped")
    if caps(skind).has_pid:
        assert all(gone(u["pid"]) for u in up)
    with pytest.raises(PoolClosed):
        pool.keep_alive(svc.forever, name="late")


# --- restarts ----------------------------------------------------------------------------------


async def test_failing_instance_is_restarted_with_backoff_until_the_limit(skind: str) -> None:
    policy = RestartPolicy(mode="always", delay=0.01, backoff=2.0, limit=3)
    async with FunctionPool(1, worker="inline") as pool, pool.events.subscribe("service.*") as sub:
        service = pool.keep_alive(svc.fails, name="flaky", restart=policy, worker=skind)
        events = await collect_until(sub, lambda e: e.topic == "service.stopped")
    topics = [e.topic.partition(".")[2] for e in events]
    assert topics == [
        *("started", "exited", "restarted") * 2,
        "started",
        "exited",
        "broken",
        "stopped",
    ]
    started = service_events(events, "service.started")
    assert [e.attempt for e in started] == [0, 1, 2]
    restarted = service_events(events, "service.restarted")
    assert [e.attempt for e in restarted] == [1, 2]
    assert [e.delay for e in restarted] == pytest.approx([0.01, 0.02])
    exited = service_events(events, "service.exited")
    assert all("RuntimeError: fails failed" in (e.reason or "") for e in exited)
    (broken,) = service_events(events, "service.broken")
    assert broken.instance == 0
    assert service.state == "broken"
    assert service.runs == [3]


@pytest.mark.skipif(not PROCESS, reason="process workers unavailable")
async def test_crashing_instance_is_restarted_in_a_new_process() -> None:
    policy = RestartPolicy(mode="on-failure", delay=0.0, limit=2)
    async with FunctionPool(1, worker="inline") as pool:
        async with pool.events.subscribe("service.*", "svc.up") as sub:
            service = pool.keep_alive(svc.crashes, name="crashy", restart=policy)
            events = await collect_until(sub, lambda e: e.topic == "service.broken")
        pids = [e.data["pid"] for e in events if isinstance(e, UserEvent)]
        assert len(pids) == 2 and pids[0] != pids[1]
        exited = service_events(events, "service.exited")
        assert all("WorkerCrashed" in (e.reason or "") for e in exited)
        assert service_events(events, "service.restarted")[0].attempt == 1
        await service.wait()
        assert service.state == "broken"


async def test_returning_instance_restarts_only_with_always(skind: str) -> None:
    async with FunctionPool(1, worker="inline") as pool, pool.events.subscribe("service.*") as sub:
        once = pool.keep_alive(svc.returns, name="once", restart=RestartPolicy(mode="on-failure"), worker=skind)
        await once.wait()  # not restarted: the service ends by itself
        assert once.state == "stopped"
        assert once.runs == [1]

        again = pool.keep_alive(
            svc.returns, name="again", restart=RestartPolicy(mode="always", delay=0.0, limit=1), worker=skind
        )
        events = await collect_until(
            sub, lambda e: e.topic == "service.started" and e.service == "again" and e.attempt == 3
        )
        await again.stop()
    restarted = [e for e in service_events(events, "service.restarted") if e.service == "again"]
    assert [e.reason for e in restarted] == ["returned"] * 3  # a clean end never spends the limit
    assert again.state == "stopped"


# --- stopping ----------------------------------------------------------------------------------


@pytest.mark.skipif(not PROCESS, reason="process workers unavailable")
async def test_stop_kills_a_blocking_process_instance_within_grace() -> None:
    async with FunctionPool(1, worker="inline") as pool, pool.events.subscribe("svc.up") as sub:
        service = pool.keep_alive(svc.blocking, "blocking", 60.0, name="blocking", grace=1.0)
        (up,) = await ups(sub, 1)
        start = time.monotonic()
        await service.stop()
        assert time.monotonic() - start < 1.0 + 2.0
        assert gone(up["pid"])
        assert service.state == "stopped"


@pytest.mark.skipif("thread" not in KINDS, reason="thread workers unavailable")
async def test_stop_abandons_a_blocking_thread_instance_within_grace() -> None:
    async with Gate() as gate:
        async with FunctionPool(1, worker="inline") as pool, pool.events.subscribe("svc.up") as sub:
            service = pool.keep_alive(svc.blocking_gate, gate.path, "b", name="blocking", worker="thread", grace=0.2)
            await ups(sub, 1)
            await gate.arrived("b")
            start = time.monotonic()
            await service.stop()
            assert time.monotonic() - start < 0.2 + 2.0
            assert service.state == "stopped"
        gate.release("b")  # a thread cannot be killed: let it end, or it would leak


@pytest.mark.skipif(not PROCESS, reason="process workers unavailable")
async def test_async_instance_gets_the_whole_grace_to_clean_up() -> None:
    async with FunctionPool(1, worker="inline") as pool, pool.events.subscribe("svc.*") as sub:
        # Cleanup takes 1.5 s: longer than a plain task's cancel grace, shorter than ours.
        service = pool.keep_alive(svc.slow_cleanup, "slow", 1.5, name="slow", grace=10.0)
        await ups(sub, 1)
        await service.stop()
        (down,) = await collect(sub, 1, "svc.down")
        assert down.topic == "svc.down"


@pytest.mark.skipif(not PROCESS, reason="process workers unavailable")
async def test_async_instance_overrunning_grace_is_killed() -> None:
    async with FunctionPool(1, worker="inline") as pool, pool.events.subscribe("svc.*") as sub:
        service = pool.keep_alive(svc.slow_cleanup, "slow", 60.0, name="slow", grace=0.3)
        (up,) = await ups(sub, 1)
        start = time.monotonic()
        await service.stop()
        assert time.monotonic() - start < 0.3 + 2.0
        assert gone(up["pid"])
        assert sub.get_nowait() is None  # no svc.down: it never finished its cleanup


async def test_kill_stops_at_once(skind: str) -> None:
    async with FunctionPool(1, worker="inline") as pool, pool.events.subscribe("svc.up") as sub:
        service = pool.keep_alive(svc.forever, "k", name="k", worker=skind, grace=60.0)
        await ups(sub, 1)
        service.kill()
        async with asyncio.timeout(WAIT):
            await service.wait()
        assert service.state == "stopped"


async def test_a_service_that_cannot_start_breaks_alone() -> None:
    async with FunctionPool(1, worker="inline") as pool, pool.events.subscribe("service.*") as sub:
        service = pool.keep_alive(svc.forever, name="doomed", worker="thread")

        async def no_workers() -> None:
            raise RuntimeError("no worker could be started")

        service._core.start = no_workers  # type: ignore[method-assign]  # fault injection
        events = await collect_until(sub, lambda e: e.topic == "service.stopped")
        assert [e.topic for e in events] == ["service.broken", "service.stopped"]
        assert events[0].instance == -1
        assert "RuntimeError: no worker could be started" in (events[0].reason or "")
        assert service.state == "broken"
        assert pool.state == "running"  # the pool goes on
        assert await pool.add_task(abs, -3) == 3


# --- validation --------------------------------------------------------------------------------


async def test_keep_alive_validates_its_arguments() -> None:
    async with FunctionPool(1, worker="inline") as pool:
        pool.keep_alive(svc.forever, name="taken", worker="thread")
        with pytest.raises(ValueError, match="already used"):
            pool.keep_alive(svc.forever, name="taken")
        with pytest.raises(ValueError, match="name"):
            pool.keep_alive(svc.forever, name="")
        with pytest.raises(ValueError, match="instances"):
            pool.keep_alive(svc.forever, name="none", instances=0)
        with pytest.raises(TypeError, match="callable"):
            pool.keep_alive("svc.forever", name="str")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="RestartPolicy"):
            pool.keep_alive(svc.forever, name="bad", restart="always")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="grace"):
            pool.keep_alive(svc.forever, name="bad", grace=-1.0)


# --- the cluster pattern: SO_REUSEPORT -------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def ask_pid(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK")
    return int(body.split()[1])


async def spread(port: int, want: set[int], tries: int = 200) -> set[int]:
    """Connect until every pid in ``want`` answered (at most ``tries`` connections)."""
    seen: set[int] = set()
    for _ in range(tries):
        seen.add(await ask_pid(port))
        if seen >= want:
            break
    return seen


@pytest.mark.skipif(not PROCESS or not hasattr(socket, "SO_REUSEPORT"), reason="needs processes and SO_REUSEPORT")
async def test_cluster_server_spreads_connections_over_instances() -> None:
    port = free_port()
    async with FunctionPool(1, worker="inline") as pool:
        async with pool.events.subscribe("cluster.listening") as sub:
            service = pool.keep_alive(cluster_server.main, port, name="cluster", instances=2)
            listening = await collect(sub, 2, "cluster.listening events")
        pids = {e.data["pid"] for e in listening}
        assert len(pids) == 2
        async with asyncio.timeout(WAIT):
            seen = await spread(port, pids)
        assert seen == pids  # more than one process answered on the one port
        await service.stop()
    with pytest.raises(OSError):
        await ask_pid(port)  # stopped: nobody listens any more
