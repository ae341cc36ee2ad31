"""Test helpers: hold a task at a :class:`Gate` and let it go when the test says so.

A test of code that uses a pool often needs a task *in the middle of running*: to see
``pool.status()`` count it as active, to cancel it, to fill every worker before adding
one more. Sleeping and hoping makes such tests slow and flaky; a gate forces the
interleaving instead (like ``trio.testing.Sequencer``), on every worker kind: the pool's
own loop (``"inline"``), a worker thread's loop (``"thread"``) and another interpreter
(``"process"``).

The gate is a Unix socket server on the test's event loop. A task run with
:func:`wait_gate` (async, cancellable) or :func:`block_gate` (a plain blocking call)
connects to it, names itself with a tag and waits for its reply. The test waits for
tags to arrive (:meth:`Gate.arrived`), looks at the pool, then releases them
(:meth:`Gate.release`, or :meth:`Gate.open` for all), or sees a task stop waiting
without being released (:meth:`Gate.hung_up`: its work was cancelled, or its worker
died)::

    import pytest

    from taskpool import FunctionPool, TaskState
    from taskpool.testing import Gate, wait_gate


    @pytest.mark.asyncio
    async def test_a_held_task_counts_as_active() -> None:
        async with FunctionPool(1, worker="thread") as pool, Gate() as gate:
            task = pool.add_task(wait_gate, gate.path, "job")
            await gate.arrived("job")  # the task is running, in its worker
            assert task.state is TaskState.RUNNING
            assert pool.status("active") == 1
            gate.release("job")
            assert await task == "job"

The functions a task runs are module-level here, so a process worker imports them by
reference. This module imports only the standard library, never the pool: it is imported
in worker processes. Unix sockets make it POSIX only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TypeVar, overload

__all__ = ["Gate", "block_gate", "wait_gate"]

R = TypeVar("R")

# The gate's one-byte replies to a waiting task.
_RELEASE = b"x"
_FAIL = b"!"


class Gate:
    """A rendezvous between a test and the tasks it runs, on any worker kind.

    Use it as an async context manager on the test's event loop: entering starts a Unix
    socket server at :attr:`path`; a task running :func:`wait_gate` or :func:`block_gate`
    with that path and a tag arrives and waits. The test sees who arrived, and in which
    order (:attr:`arrivals`), releases tasks by tag (:meth:`release`) or all at once
    (:meth:`open`), and sees a task that stopped waiting without being released
    (:attr:`hangups`, :meth:`hung_up`). Leaving the block releases every waiting task (so
    no worker thread stays blocked) and removes the socket.

    Several tasks may share a tag: a release lets all of them go. A release may come
    before the task arrives: the task then goes on at once. A gate is used once, from the
    event loop that entered it.

    Args:
        timeout: how long :meth:`arrived`, :meth:`arrived_count`, :meth:`hung_up` and
            :meth:`until` wait before failing the test with an ``AssertionError``, in
            seconds. Only a broken test ever reaches it: it turns a hang into a failure
            that shows what arrived and what hung up.

    Raises:
        ValueError: ``timeout`` is not positive.
    """

    def __init__(self, *, timeout: float = 10.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, not {timeout!r}")
        self.timeout: float = timeout
        """How long a wait on the gate may take before it fails the test, in seconds."""
        self._dir = ""  # made on entry: a private directory for the socket
        self._arrivals: list[str] = []
        self._hangups: list[str] = []
        self._replies: dict[str, bytes] = {}
        self._all: bytes | None = None
        self._parked: dict[str, list[asyncio.Future[bytes]]] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._changed: asyncio.Event | None = None
        self._listener: socket.socket | None = None
        self._entered = False

    def __repr__(self) -> str:
        return f"<Gate {self._dir!r} arrivals={self._arrivals} hangups={self._hangups}>"

    async def __aenter__(self) -> Gate:
        if self._entered:
            raise RuntimeError("a Gate is used once: make a new one")
        self._entered = True
        self._dir = tempfile.mkdtemp(prefix="tpg-")  # short: Unix socket paths are limited
        self._changed = asyncio.Event()
        # A listening socket of our own, accepted synchronously on readiness: every
        # connection is tracked from the moment it exists (asyncio's server on Python 3.11
        # leaks a socket whose accept completes after the server closed).
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
            listener.listen(128)
            listener.setblocking(False)
            asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)
        except BaseException:
            listener.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self._listener = listener
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.open()
        try:
            listener, self._listener = self._listener, None
            if listener is not None:
                asyncio.get_running_loop().remove_reader(listener.fileno())
                listener.close()
            pending = {t for t in self._handlers if not t.done()}
            if pending:
                _, late = await asyncio.wait(pending, timeout=self.timeout)
                for t in late:
                    t.cancel()  # its ``finally`` closes the connection
                if late:
                    await asyncio.wait(late, timeout=1.0)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # closed under us
                return
            conn.setblocking(False)
            task = loop.create_task(self._serve(conn))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _serve(self, conn: socket.socket) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn)
            await self._handle(reader, writer)
        finally:
            if writer is None:
                conn.close()  # never wrapped: close the bare socket
            else:
                writer.close()
                with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                    await writer.wait_closed()  # also collects a broken pipe's error

    # --- what the test sees ------------------------------------------------------------

    @property
    def path(self) -> str:
        """The socket's path: what :func:`wait_gate` and :func:`block_gate` take.

        Raises:
            RuntimeError: the gate was not entered yet (``async with Gate() as gate:``).
        """
        if not self._dir:
            raise RuntimeError("the gate has no socket yet: use it as `async with Gate() as gate:`")
        return os.path.join(self._dir, "gate")

    @property
    def arrivals(self) -> Sequence[str]:
        """The tags of the tasks that arrived, in arrival order (a tag once per arrival)."""
        return self._arrivals

    @property
    def hangups(self) -> Sequence[str]:
        """The tags of the tasks that stopped waiting without being released, in order."""
        return self._hangups

    # --- what the test does ------------------------------------------------------------

    def release(self, *tags: str, fail: bool = False) -> None:
        """Let the tasks tagged ``tags`` go: those waiting now, and those still to come.

        Args:
            tags: the tags to release.
            fail: make the released tasks raise ``ValueError(tag)`` instead of returning.
        """
        reply = _FAIL if fail else _RELEASE
        for tag in tags:
            self._replies[tag] = reply
            for fut in self._parked.pop(tag, []):
                if not fut.done():
                    fut.set_result(reply)

    def open(self) -> None:
        """Release every task, waiting now or still to come (a tag released with
        ``fail=True`` still fails)."""
        self._all = _RELEASE
        for tag in list(self._parked):
            self.release(tag)

    async def arrived(self, *tags: str) -> None:
        """Wait until every one of ``tags`` has arrived (and maybe gone on since).

        Raises:
            AssertionError: not all of them arrived within the gate's ``timeout``.
        """
        await self.until(lambda: all(t in self._arrivals for t in tags), f"arrival of {tags}")

    async def arrived_count(self, n: int) -> None:
        """Wait until ``n`` arrivals in all, whatever their tags.

        Raises:
            AssertionError: fewer than ``n`` arrived within the gate's ``timeout``.
        """
        await self.until(lambda: len(self._arrivals) >= n, f"{n} arrivals")

    async def hung_up(self, *tags: str) -> None:
        """Wait until the tasks tagged ``tags`` stopped waiting without being released:
        their work was cancelled, timed out, or their worker died.

        Raises:
            AssertionError: not all of them hung up within the gate's ``timeout``.
        """
        await self.until(lambda: all(t in self._hangups for t in tags), f"hang-up of {tags}")

    async def until(self, predicate: Callable[[], bool], what: str = "a condition") -> None:
        """Wait until ``predicate()`` is true; it is checked now and after every arrival
        and hang-up, so it should read the gate's state (``arrivals``, ``hangups``).

        Args:
            predicate: the condition to wait for.
            what: what is awaited, for the failure message.

        Raises:
            AssertionError: ``predicate()`` was still false after the gate's ``timeout``.
            RuntimeError: the gate is not open (not inside ``async with``).
        """
        try:
            async with asyncio.timeout(self.timeout):
                while not predicate():
                    await self._event().wait()
        except TimeoutError:
            raise AssertionError(
                f"gate: gave up waiting for {what} after {self.timeout} s; "
                f"arrivals={self._arrivals} hangups={self._hangups}"
            ) from None

    # --- the server ----------------------------------------------------------------------

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            raise RuntimeError("the gate is not open: use it as `async with Gate() as gate:`")
        return self._changed

    def _notify(self) -> None:
        self._event().set()
        self._changed = asyncio.Event()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            tag = (await reader.readline()).decode().strip()
            self._arrivals.append(tag)
            self._notify()
            reply = self._replies.get(tag, self._all)
            if reply is None:
                fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                self._parked.setdefault(tag, []).append(fut)
                eof = asyncio.ensure_future(reader.read(1))
                await asyncio.wait({fut, eof}, return_when=asyncio.FIRST_COMPLETED)
                if eof.done():  # the task went away without (reading its) release
                    self._hangups.append(tag)
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


# --- what a task runs: module-level, so a process worker imports them by reference ----------


def _outcome(reply: bytes, tag: str) -> None:
    if reply == _FAIL:
        raise ValueError(tag)
    if reply != _RELEASE:
        raise ConnectionError(f"gate closed before {tag!r} was released")


@overload
async def wait_gate(path: str, tag: str, result: None = None) -> str: ...
@overload
async def wait_gate(path: str, tag: str, result: R) -> R: ...


async def wait_gate(path: str, tag: str, result: object = None) -> object:
    """Arrive at the gate listening at ``path`` as ``tag`` and wait until it is released.

    The wait is cancellable: cancelling the task (``task.cancel()``, a timeout, the pool
    closing) hangs up, which the gate records in :attr:`Gate.hangups`.

    Args:
        path: the gate's :attr:`Gate.path`.
        tag: the name the test knows this task by.
        result: what to return once released (default: ``tag``).

    Returns:
        ``result``, or ``tag`` when ``result`` is ``None``.

    Raises:
        ValueError: the test released it with ``fail=True`` (the message is ``tag``).
        ConnectionError: the gate went away before releasing it.
        OSError: no gate is listening at ``path``.
    """
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(tag.encode() + b"\n")
        await writer.drain()
        reply = await reader.read(1)
    finally:
        writer.close()
    _outcome(reply, tag)
    return tag if result is None else result


@overload
def block_gate(path: str, tag: str, result: None = None) -> str: ...
@overload
def block_gate(path: str, tag: str, result: R) -> R: ...


def block_gate(path: str, tag: str, result: object = None) -> object:
    """Like :func:`wait_gate`, but a plain function that blocks its thread while it waits.

    Nothing can interrupt it but a release, the gate closing, or the end of its process:
    use it to test how the pool treats work it cannot cancel (a process worker is killed;
    a thread worker's call runs on until released).

    Args:
        path: the gate's :attr:`Gate.path`.
        tag: the name the test knows this task by.
        result: what to return once released (default: ``tag``).

    Returns:
        ``result``, or ``tag`` when ``result`` is ``None``.

    Raises:
        ValueError: the test released it with ``fail=True`` (the message is ``tag``).
        ConnectionError: the gate went away before releasing it.
        OSError: no gate is listening at ``path``.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(tag.encode() + b"\n")
        reply = s.recv(1)
    _outcome(reply, tag)
    return tag if result is None else result
