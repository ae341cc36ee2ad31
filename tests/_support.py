"""Test-side helpers: the :class:`Gate` tasks wait at, event collection, and worker lookup.

The :class:`Gate` is taskpool's public one (:class:`taskpool.testing.Gate`): the suite tests
the pool the way its users are told to test their own code. It is re-exported here so the
tests import it with the rest of their helpers.

No helper here sleeps to synchronise: each wait is on a condition becoming true, bounded
by a generous deadline that turns a hang into a readable failure.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskpool._workers import Capabilities, backend
from taskpool.testing import Gate

if TYPE_CHECKING:
    from taskpool import FunctionPool

__all__ = ["WAIT", "Gate", "collect", "collect_until", "process_worker", "settle"]

WAIT = 10.0  # seconds: only ever reached when a test is broken (also the Gate's default)


async def collect(sub: Any, n: int, what: str = "events") -> list[Any]:
    """The next ``n`` events of subscription ``sub`` (bounded wait)."""
    out: list[Any] = []
    try:
        async with asyncio.timeout(WAIT):
            while len(out) < n:
                out.append(await anext(sub))
    except TimeoutError:
        raise AssertionError(f"got {len(out)} of {n} {what}: {out}") from None
    return out


async def collect_until(sub: Any, predicate: Callable[[Any], bool]) -> list[Any]:
    """Events of ``sub`` up to and including the first one matching ``predicate``."""
    out: list[Any] = []
    try:
        async with asyncio.timeout(WAIT):
            async for event in sub:
                out.append(event)
                if predicate(event):
                    return out
    except TimeoutError:
        pass
    raise AssertionError(f"no matching event among {out}")


async def settle(awaitable: Any) -> BaseException | Any:
    """Await ``awaitable``, returning its exception instead of raising it."""
    try:
        return await awaitable
    except Exception as exc:
        return exc


def process_worker(pool: FunctionPool, index: int = 0) -> Any:
    """The private worker object behind the pool's process worker ``index``.

    For the fault tests that hold a frame in flight: they pause the worker's channel
    (``._channel.transport``) or watch its process (``._proc``), which no public API
    exposes. The pool does not hand out its workers, and these tests must not depend on
    how its core stores them: the worker is found by the pid the public snapshot shows
    (``pool.snapshot().workers[index].pid``), among the live ``ProcessWorker`` objects.
    A test that needs only the pid reads the snapshot itself.
    """
    from taskpool._workers._process import ProcessWorker

    pid = pool.snapshot().workers[index].pid
    assert pid is not None, f"worker {index} of {pool!r} has no process (yet)"
    found = [w for w in gc.get_objects() if isinstance(w, ProcessWorker) and w.pid == pid and w._channel is not None]
    assert len(found) == 1, f"{len(found)} process workers with pid {pid}"
    return found[0]


def caps(kind: str) -> Capabilities:
    """What worker kind ``kind`` can do: tests branch on this, never on a kind's name."""
    return backend(kind).capabilities
