"""The Ray kind's own behaviour, on the session's shared local Ray."""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from taskpool import (
    FunctionPool,
    PoolBroken,
    RestartPolicy,
    SerializationError,
    TaskCancelled,
    TaskTimeout,
    WorkerCrashed,
)
from tests.ray import _funcs as rf

pytestmark = [pytest.mark.ray]


@pytest.mark.asyncio
async def test_node_in_snapshots_and_no_pid() -> None:
    async with FunctionPool(2, worker="ray") as pool:
        host, pid = await pool.add_task(rf.where)
        snap = pool.snapshot()
        assert [w.node for w in snap.workers] == [host, host]
        assert all(w.pid is None and w.kind == "ray" for w in snap.workers)
        assert pid != os.getpid()


@pytest.mark.asyncio
async def test_a_chunk_result_that_cannot_be_sent_fails_only_its_item() -> None:
    async with FunctionPool(1, worker="ray") as pool:
        fn = functools.partial(rf.lock_on, 5)
        out = [v async for v in pool.map(fn, range(10), chunksize=10, return_exceptions=True)]
        assert [v for i, v in enumerate(out) if i != 5] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
        assert isinstance(out[5], SerializationError)
        ex = pool.executor()  # an executor's chunk: the results before it, then the error

        def consume() -> tuple[list[object], BaseException | None]:
            got: list[object] = []
            try:
                for v in ex.map(fn, range(10), chunksize=10):
                    got.append(v)
            except TypeError as exc:
                return got, exc
            return got, None

        got, exc = await asyncio.to_thread(consume)
        assert got == [0, 1, 2, 3, 4]
        assert isinstance(exc, TypeError) and "lock" in str(exc)
        ex.shutdown(wait=False)


@pytest.mark.asyncio
async def test_a_plain_calls_run_time_is_its_own_while_the_actors_loop_is_held() -> None:
    # The call's start and end are taken in the thread that runs it: a coroutine blocking
    # the actor's loop as the call ends must not stretch the call's recorded run time.
    async with FunctionPool(1, worker="ray", concurrency=2) as pool:
        held = pool.add_task(rf.hold_the_loop, 0.005, 0.3)
        call = pool.add_task(rf.timed_busy, 0.05)
        own = await call
        await held
        rec = call.record
        assert rec.started_at is not None and rec.finished_at is not None
        run = rec.finished_at - rec.started_at
        assert abs(run - own) <= 0.002, f"recorded {run * 1000:.1f} ms for a call that ran {own * 1000:.1f} ms"


@pytest.mark.asyncio
async def test_a_dead_actor_is_worker_crashed_without_exitcode_and_replaced() -> None:
    async with FunctionPool(1, worker="ray", restart=RestartPolicy(mode="on-failure", delay=0)) as pool:
        with pytest.raises(WorkerCrashed) as info:
            await pool.add_task(rf.crash)
        assert info.value.exitcode is None and info.value.signal is None
        assert await pool.add_task(abs, -2) == 2  # a fresh actor took the slot
        assert pool.snapshot().workers[0].restarts == 1


@pytest.mark.asyncio
async def test_a_blocking_call_timed_out_kills_and_replaces_its_actor() -> None:
    async with FunctionPool(1, worker="ray") as pool:
        _, first = await pool.add_task(rf.where)
        with pytest.raises(TaskTimeout):
            await pool.add_task(rf.block, 60, timeout=0.5)
        _, second = await pool.add_task(rf.where)
        assert second != first  # the blocked actor was killed, another took its place


@pytest.mark.asyncio
async def test_an_async_call_is_cancelled_inside_its_actor_which_lives_on() -> None:
    async with FunctionPool(1, worker="ray") as pool:
        _, before = await pool.add_task(rf.where)
        async with pool.events.subscribe("progress", "cancelled") as sub:
            task = pool.add_task(rf.talk_then_wait, "a")
            assert (await anext(sub)).topic == "progress"
            assert task.cancel()
            event = await asyncio.wait_for(anext(sub), 30)
            assert (event.topic, event.data, event.task_id) == ("cancelled", "a", task.id)
        with pytest.raises(TaskCancelled):
            await task
        _, after = await pool.add_task(rf.where)
        assert after == before  # same actor: nothing was killed


@pytest.mark.asyncio
async def test_an_answer_taken_in_late_spares_the_call_running_beside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pool takes in a cancelled call's answer later than the cancel grace (here: its
    # reply held back) while another call runs on the same actor. The shared control
    # block says the cancelled call ended: its actor must not be killed for it, which
    # would fail the other call, which nobody cancelled.
    from taskpool import _ray_worker
    from taskpool.testing import Gate, block_gate, wait_gate

    monkeypatch.setattr(_ray_worker, "CANCEL_GRACE", 0.1)
    async with FunctionPool(1, worker="ray", concurrency=2) as pool, Gate() as gate:
        _, before = await pool.add_task(rf.where)
        # The private worker object (no public API hands it out): the live one of this pool.
        core = pool._core  # type: ignore[attr-defined]
        found = [
            w
            for w in gc.get_objects()
            if isinstance(w, _ray_worker.RayWorker) and w.host is core and w._actor is not None
        ]
        assert len(found) == 1, found
        worker = found[0]
        assert worker._block is not None  # on this machine: starts are read from the block
        xt = pool.add_task(wait_gate, gate.path, "x")
        y = pool.add_task(block_gate, gate.path, "y")
        await gate.arrived("x", "y")
        held: list[object] = []
        released = False
        on_reply = worker._on_reply

        def holding(ref: object) -> None:
            _, answers = ref.result()  # type: ignore[attr-defined]
            if any(a[0] == xt.id for a in answers) and not released:
                held.append(ref)
            else:
                on_reply(ref)

        monkeypatch.setattr(worker, "_on_reply", holding)
        worker.sync_starts()
        assert xt.cancel() is True  # cancelled in the actor, while Y runs beside it
        async with asyncio.timeout(30):
            await gate.hung_up("x")  # X stopped
            for _ in range(2):  # the grace runs out, twice
                handle = worker._timers[xt.id]
                while worker._timers.get(xt.id) is handle:
                    await asyncio.sleep(0.01)
            while not held:
                await asyncio.sleep(0.01)
        assert xt.id in worker._calls
        released = True
        for ref in held:
            on_reply(ref)
        gate.release("y")
        assert await asyncio.wait_for(y, 30) == "y"
        _, after = await pool.add_task(rf.where)
        assert after == before  # same actor: nothing was killed


@pytest.mark.asyncio
async def test_publish_and_output_reach_the_pool_while_the_call_runs() -> None:
    async with FunctionPool(1, worker="ray") as pool:
        async with pool.events.subscribe("progress", "worker.log") as sub:
            task = pool.add_task(rf.talk_then_wait, "live")
            seen = set()
            while len(seen) < 3:
                event = await asyncio.wait_for(anext(sub), 30)
                if event.topic == "worker.log":
                    seen.add((event.topic, event.stream, event.line))
                else:
                    seen.add((event.topic, None, event.data))
            assert not task.done()  # all of it arrived during the call
            assert seen == {
                ("progress", None, "live"),
                ("worker.log", "stdout", "out live"),
                ("worker.log", "stderr", "err live"),
            }
            task.cancel()


@pytest.mark.asyncio
async def test_publish_from_a_blocking_call_arrives_before_it_returns() -> None:
    async with FunctionPool(1, worker="ray") as pool:
        async with pool.events.subscribe("progress") as sub:
            task = pool.add_task(rf.talk_while_blocking, "sync", 2.0)
            event = await asyncio.wait_for(anext(sub), 30)
            assert event.data == "sync" and not task.done()
            assert await task == "sync"


@pytest.mark.asyncio
async def test_initializer_runs_in_each_actor_and_its_failure_breaks_the_pool(tmp_path: object) -> None:
    async with FunctionPool(2, worker="ray", initializer=rf.good_init, initargs=("ok",)) as pool:
        assert await pool.add_task(rf.init_value) == "ok"
    with pytest.raises(PoolBroken, match="initializer failed: ValueError: no config"):
        async with FunctionPool(1, worker="ray", initializer=rf.bad_init):
            pass


def _script(body: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(body)
    full_env = {**os.environ, **env, "PYTHONPATH": os.getcwd()}
    full_env.pop("TASKPOOL_TEST_KINDS", None)
    cmd = [sys.executable, "-c", code]
    return subprocess.run(cmd, check=False, env=full_env, capture_output=True, text=True, timeout=120)


PRIVATE = """
import asyncio, psutil, ray
from taskpool import FunctionPool
async def main():
    async with FunctionPool(1, worker="ray") as pool:
        await pool.add_task(abs, -1)
        print("GCS", ray.get_runtime_context().gcs_address)
    print("AFTER", ray.is_initialized(), len(psutil.Process().children(recursive=True)))
asyncio.run(main())
"""


def test_a_private_ray_never_joins_a_stray_cluster_and_stops_with_its_pool(ray_address: str) -> None:
    # RAY_ADDRESS names the session's cluster: a stray one for a pool asked for no address.
    out = _script(PRIVATE, {"RAY_ADDRESS": ray_address, "TASKPOOL_RAY_ADDRESS": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line[:3] in ("GCS", "AFT"))
    assert lines["GCS"] != ray_address
    assert lines["AFTER"] == "False 0"  # disconnected, and no Ray process left behind


CLOSE_SHORT = """
import asyncio, psutil, ray
from taskpool import FunctionPool
async def main():
    pool = FunctionPool(2, worker="ray")
    await pool.start()
    await pool.add_task(abs, -1)
    await pool.aclose(grace=0.5)  # shorter than stopping the private Ray takes
    print("AFTER", ray.is_initialized(), len(psutil.Process().children(recursive=True)))
asyncio.run(main())
"""


def test_closing_with_a_short_grace_leaves_no_ray_and_starts_none(ray_address: str) -> None:
    # The grace ran out while the pool stopped its private Ray: the workers, all ended,
    # were killed anyway, and a kill through Ray after it stopped started a new Ray
    # (Ray's auto-init: here it would have joined the stray RAY_ADDRESS).
    out = _script(CLOSE_SHORT, {"RAY_ADDRESS": ray_address, "TASKPOOL_RAY_ADDRESS": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "AFTER False 0" in out.stdout.splitlines(), out.stdout


UNREACHABLE = """
import asyncio, ray
from taskpool import FunctionPool
async def main():
    try:
        async with FunctionPool(1, worker="ray"):
            print("JOINED")
    except ConnectionError as exc:
        print("REFUSED", exc)
    print("AFTER", ray.is_initialized())
asyncio.run(main())
"""


def test_a_cluster_that_cannot_be_reached_fails_the_start() -> None:
    # Ray's own ray.init retries such an address for minutes; the pool fails at once.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # (closed again: nothing listens there)
    out = _script(UNREACHABLE, {"TASKPOOL_RAY_ADDRESS": f"127.0.0.1:{port}"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"REFUSED cannot reach the Ray cluster at '127.0.0.1:{port}'" in out.stdout, out.stdout
    assert "AFTER False" in out.stdout.splitlines()


def test_joining_through_the_environment_never_stops_the_cluster(ray_address: str) -> None:
    import ray

    out = _script(PRIVATE, {"TASKPOOL_RAY_ADDRESS": ray_address})
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"GCS {ray_address}" in out.stdout
    assert "AFTER False 0" in out.stdout  # only left it
    assert ray.is_initialized()

    @ray.remote(num_cpus=0)
    def alive() -> int:
        return 1

    assert ray.get(alive.remote(), timeout=60) == 1  # the cluster still runs


TWO_NODES = """
import asyncio, os
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False,
                  "node_ip_address": "127.0.0.1"})
cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
cluster.wait_for_nodes()
os.environ["TASKPOOL_RAY_ADDRESS"] = cluster.address
from taskpool import FunctionPool
from tests.ray import _funcs as rf
async def main():
    async with FunctionPool(4, worker="ray") as pool:
        nodes = await asyncio.gather(*[pool.add_task(rf.node_id) for _ in range(8)])
        print("NODES", len(set(nodes)), len({w.node for w in pool.snapshot().workers}))
try:
    asyncio.run(main())
finally:
    cluster.shutdown()
"""


def test_two_local_nodes_share_the_calls() -> None:
    # Two Ray nodes on this machine, on loopback only: Ray otherwise swaps a loopback
    # address for the host's own IP (where a loopback-bound cluster does not answer).
    out = _script(TWO_NODES, {"TASKPOOL_RAY_ADDRESS": "", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "NODES 2 1" in out.stdout  # both nodes ran calls (one host name: this machine)
