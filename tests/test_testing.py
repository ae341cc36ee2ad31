"""taskpool.testing on its own: the Gate and its task functions, without a pool.

The rest of the suite uses the Gate through pools of every kind; these tests pin down its
own contract (release, fail, hang-up, open on exit, readable timeouts) with plain
coroutines, a plain thread and a plain subprocess, so a Gate bug is not mistaken for a
pool bug.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any

import pytest

from taskpool.testing import Gate, block_gate, wait_gate

from ._support import WAIT

pytestmark = pytest.mark.asyncio


async def test_release_by_tag_in_any_order_and_arrivals_in_order() -> None:
    async with Gate() as gate:
        a = asyncio.ensure_future(wait_gate(gate.path, "a"))
        await gate.arrived("a")
        b = asyncio.ensure_future(wait_gate(gate.path, "b", 42))
        await gate.arrived("b")
        assert list(gate.arrivals) == ["a", "b"]
        gate.release("b")
        assert await asyncio.wait_for(b, WAIT) == 42
        assert not a.done()
        gate.release("a")
        assert await asyncio.wait_for(a, WAIT) == "a"
        assert list(gate.hangups) == []


async def test_a_release_before_arrival_lets_the_task_through_at_once() -> None:
    async with Gate() as gate:
        gate.release("early")
        assert await asyncio.wait_for(wait_gate(gate.path, "early"), WAIT) == "early"
        assert list(gate.arrivals) == ["early"]


async def test_fail_makes_the_task_raise_value_error_with_its_tag() -> None:
    async with Gate() as gate:
        task = asyncio.ensure_future(wait_gate(gate.path, "doomed"))
        await gate.arrived("doomed")
        gate.release("doomed", fail=True)
        with pytest.raises(ValueError, match="doomed"):
            await asyncio.wait_for(task, WAIT)


async def test_open_releases_every_task_now_and_later_but_not_a_failed_tag() -> None:
    async with Gate() as gate:
        gate.release("bad", fail=True)
        waiting = [asyncio.ensure_future(wait_gate(gate.path, tag)) for tag in ("x", "y")]
        await gate.arrived_count(2)
        gate.open()
        assert await asyncio.wait_for(asyncio.gather(*waiting), WAIT) == ["x", "y"]
        assert await asyncio.wait_for(wait_gate(gate.path, "later"), WAIT) == "later"
        with pytest.raises(ValueError, match="bad"):
            await asyncio.wait_for(wait_gate(gate.path, "bad"), WAIT)


async def test_a_cancelled_wait_is_a_hang_up() -> None:
    async with Gate() as gate:
        task = asyncio.ensure_future(wait_gate(gate.path, "gone"))
        await gate.arrived("gone")
        task.cancel()
        await gate.hung_up("gone")
        assert list(gate.hangups) == ["gone"]
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_block_gate_blocks_a_thread_until_released() -> None:
    results: list[Any] = []
    async with Gate() as gate:
        thread = threading.Thread(target=lambda: results.append(block_gate(gate.path, "t", "done")))
        thread.start()
        try:
            await gate.arrived("t")
            assert thread.is_alive()
            gate.release("t")
        finally:
            await asyncio.to_thread(thread.join, WAIT)
    assert results == ["done"]


async def test_leaving_the_gate_releases_a_blocked_thread() -> None:
    results: list[Any] = []
    async with Gate() as gate:
        thread = threading.Thread(target=lambda: results.append(block_gate(gate.path, "forgotten")))
        thread.start()
        await gate.arrived("forgotten")
    await asyncio.to_thread(thread.join, WAIT)
    assert results == ["forgotten"]
    assert not os.path.exists(os.path.dirname(gate.path))  # and the socket is gone


async def test_another_process_arrives_and_its_death_is_a_hang_up() -> None:
    code = "import sys; from taskpool.testing import block_gate; print(block_gate(sys.argv[1], sys.argv[2]))"
    async with Gate() as gate:
        released = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, gate.path, "released", stdout=asyncio.subprocess.PIPE
        )
        killed = await asyncio.create_subprocess_exec(sys.executable, "-c", code, gate.path, "killed")
        try:
            await gate.arrived("released", "killed")
            gate.release("released")
            out, _ = await asyncio.wait_for(released.communicate(), WAIT)
            assert out.decode().strip() == "released"
            killed.kill()
            await gate.hung_up("killed")
        finally:
            for proc in (released, killed):
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
    assert "released" not in gate.hangups


async def test_a_wait_that_times_out_fails_with_what_it_waited_for() -> None:
    async with Gate(timeout=0.05) as gate:
        with pytest.raises(AssertionError, match=r"arrival of \('nobody',\).*arrivals=\[\]"):
            await gate.arrived("nobody")


async def test_misuse_is_reported() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Gate(timeout=0)
    gate = Gate()
    with pytest.raises(RuntimeError, match="no socket yet"):
        gate.path  # noqa: B018
    with pytest.raises(RuntimeError, match="not open"):
        await gate.arrived("x")
    async with gate:
        pass
    with pytest.raises(RuntimeError, match="used once"):
        await gate.__aenter__()


async def test_no_gate_listening_is_an_os_error(tmp_path: Any) -> None:
    with pytest.raises(OSError):
        await wait_gate(str(tmp_path / "nothing"), "x")
    with pytest.raises(OSError):
        block_gate(str(tmp_path / "nothing"), "x")
