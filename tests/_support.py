"""Test-side helpers: the :class:`Gate` tasks wait at, and event collection.

No helper here sleeps to synchronise: each wait is on a condition becoming true, bounded
by a generous deadline that turns a hang into a readable failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ._funcs import _FAIL, _RELEASE

WAIT = 10.0  # seconds: only ever reached when a test is broken


class Gate:
    """A rendezvous between the test and its tasks, on any worker kind (trio's Sequencer, spread over processes).

    A Unix socket server on the test's loop: a task (``_funcs.wait_gate`` or ``block_gate``)
    connects and names itself with a tag; the test sees who arrived and in which order
    (``arrivals``), releases tasks by tag (``release``) or all at once (``open``), and
    sees a task that stopped waiting without being released (``hung_up``: its work was
    cancelled). On exit every waiting task is released, so no thread stays blocked.
    """

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="tpg-")  # short: Unix socket paths are limited
        self.path = os.path.join(self._dir, "gate")
        self.arrivals: list[str] = []
        self.hangups: list[str] = []
        self._replies: dict[str, bytes] = {}
        self._all: bytes | None = None
        self._parked: dict[str, list[asyncio.Future[bytes]]] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._changed: asyncio.Event | None = None
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> Gate:
        self._changed = asyncio.Event()
        self._server = await asyncio.start_unix_server(self._handle, self.path)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.open()
        assert self._server is not None
        self._server.close()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=WAIT)
        for t in self._handlers:
            t.cancel()
        await self._server.wait_closed()
        shutil.rmtree(self._dir, ignore_errors=True)

    # --- test side -------------------------------------------------------------------------

    def release(self, *tags: str, fail: bool = False) -> None:
        """Let the tasks tagged ``tags`` go (now or when they arrive); ``fail``: make them raise."""
        for tag in tags:
            reply = _FAIL if fail else _RELEASE
            self._replies[tag] = reply
            for fut in self._parked.pop(tag, []):
                if not fut.done():
                    fut.set_result(reply)

    def open(self) -> None:
        """Release every task, waiting or still to come."""
        self._all = _RELEASE
        for tag in list(self._parked):
            self.release(tag)

    async def arrived(self, *tags: str) -> None:
        """Wait until every one of ``tags`` has arrived."""
        await self.until(lambda: all(t in self.arrivals for t in tags), f"arrival of {tags}")

    async def arrived_count(self, n: int) -> None:
        """Wait until ``n`` tasks have arrived."""
        await self.until(lambda: len(self.arrivals) >= n, f"{n} arrivals")

    async def hung_up(self, *tags: str) -> None:
        """Wait until the tasks tagged ``tags`` stopped waiting without being released."""
        await self.until(lambda: all(t in self.hangups for t in tags), f"hang-up of {tags}")

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(WAIT):
                while not predicate():
                    assert self._changed is not None
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"gate: gave up waiting for {what}; arrivals={self.arrivals} hangups={self.hangups}"
            ) from None

    def _notify(self) -> None:
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()

    # --- task side -------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._handlers.add(me)
        try:
            tag = (await reader.readline()).decode().strip()
            self.arrivals.append(tag)
            self._notify()
            reply = self._replies.get(tag, self._all)
            if reply is None:
                fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                self._parked.setdefault(tag, []).append(fut)
                eof = asyncio.ensure_future(reader.read(1))
                await asyncio.wait({fut, eof}, return_when=asyncio.FIRST_COMPLETED)
                if eof.done():  # the task went away without (reading its) release
                    self.hangups.append(tag)
                    with contextlib.suppress(ValueError, KeyError):
                        self._parked[tag].remove(fut)
                    self._notify()
                    return
                eof.cancel()
                reply = fut.result()
            writer.write(reply)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            self._handlers.discard(me)
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()  # also collects a broken pipe's error


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
