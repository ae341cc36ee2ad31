"""The worker process's entry point: set up the process, serve one channel, exit.

Spawned by :mod:`taskpool._spawn` (``python -c "from taskpool._worker_main import main;
main()" --fd N ...``); the serving itself is :class:`taskpool._child.CallServer`. Its setup
(``--setup-fd``: the pool's authentication key, adopted first; the initializer, run after
the handshake and before any call) is :mod:`taskpool._init`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import signal
import socket
import sys
from collections.abc import Sequence
from typing import NoReturn

from taskpool._child import CallServer
from taskpool._context import current
from taskpool._control import ControlBlock
from taskpool._frames import NO_LIMIT
from taskpool._init import Setup, initialize, read_setup
from taskpool._loop import loop_factory
from taskpool._wire import Hello

__all__ = ["main"]


def _die_with_parent(ppid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes  # Linux only

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if ppid and os.getppid() != ppid:
        os._exit(1)  # the parent died before we could ask to die with it


async def _serve(
    sock: socket.socket,
    uses_uvloop: bool,
    concurrency: int = 1,
    max_message: int = NO_LIMIT,
    control: ControlBlock | None = None,
    setup: Setup | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    hello = Hello(os.getpid(), platform.python_version(), uses_uvloop)
    server = CallServer(concurrency, hello, max_message=max_message, control=control)
    current.set(server.shared_context)  # the transport's callbacks copy this context
    await loop.connect_accepted_socket(lambda: server, sock)
    assert server.closed is not None
    if setup is not None and setup.init is not None:
        # After Hello (the pool knows we are up; the initializer has no deadline), before
        # any call: the pool sends none until Ready. Hello is written first: a plain
        # initializer blocks the loop.
        server.flush()
        failure = await initialize(setup, server.closed)
        server.initialized(failure)
        if failure is not None:
            await server.closed
            return 1  # through the normal exit: atexit hooks, multiprocessing finalizers
    await server.closed
    return 0


_CLEANUP_GRACE = 2.0  # seconds for leftover tasks to handle their cancellation


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:  # bounded: a task that ignores cancellation must not keep us alive
        loop.run_until_complete(asyncio.wait(tasks, timeout=_CLEANUP_GRACE))
    loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), _CLEANUP_GRACE))


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Serve one channel, then exit (never returns). See the module docstring."""
    parser = argparse.ArgumentParser(prog="taskpool-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--ppid", type=int, default=0)
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--max-message", type=int, default=NO_LIMIT)
    parser.add_argument("--control-fd", type=int, default=None)
    parser.add_argument("--setup-fd", type=int, default=None)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    _die_with_parent(args.ppid)
    # The pool's authentication key first: before any user code (see taskpool._init).
    setup = None if args.setup_fd is None else read_setup(args.setup_fd)
    from taskpool._memory import tune_worker  # large payloads: keep their memory warm

    tune_worker()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    factory, uses_uvloop = loop_factory(args.loop)
    sock = socket.socket(fileno=args.fd)
    loop = factory()
    asyncio.set_event_loop(loop)
    code = 1
    try:
        # The pool's options allow no limit under 64 KiB; an error report needs that much.
        limit = max(2**16, args.max_message)
        control = None
        if args.control_fd is not None:
            control = ControlBlock(args.control_fd)
            control.close_fd()  # the mapping is what we read
        code = loop.run_until_complete(_serve(sock, uses_uvloop, max(1, args.concurrency), limit, control, setup))
        _cancel_leftovers(loop)
    finally:
        _exit(code)


def _exit(code: int) -> NoReturn:
    # Exit without waiting for threads a task may have left running (the parent is
    # gone or wants us gone), but still run atexit hooks and flush what was printed.
    import atexit

    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            if stream is not None:
                stream.flush()
    os._exit(code)
