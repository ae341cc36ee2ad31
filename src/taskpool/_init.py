"""A process worker's start: what the pool hands each new worker, and its initializer.

The pool writes a :class:`Setup` for every worker it spawns (:func:`write_setup`) into
memory no other process can name (a ``memfd``; an unlinked temporary file elsewhere), and
the worker inherits it as an fd (``--setup-fd``), reads it and closes it
(:func:`read_setup`) before any user code runs. It holds:

- the pool's multiprocessing authentication key (never on the command line nor in the
  environment, where other users could read it) and its resource tracker's fd, adopted
  at once (:func:`taskpool._mp.adopt`);
- the initializer and its arguments, pickled *at spawn time* inside a multiprocessing
  spawning context (:mod:`taskpool._mp`) that collects the fds they need (a ``Queue``'s
  pipe, ...): the worker inherits those under the same numbers, so
  ``multiprocessing`` queues, locks, events and ``Manager()`` proxies in ``initargs``
  work, as with ``ProcessPoolExecutor``. Functions go by reference when importable,
  by value (cloudpickle) otherwise, as calls' functions do.

The worker runs the initializer (:func:`initialize`) after its handshake (``Hello``)
and before it takes calls: ``Ready`` then tells the pool it is ready, or, when the
initializer raised, the traceback is logged in the worker on the ``init_logger`` logger
(``critical("Exception in initializer:")``, as ``concurrent.futures`` does), the pool
is told ``InitFailed("Type: message")`` and the worker exits through its normal exit,
so ``atexit`` hooks and multiprocessing finalizers run (a ``Queue``'s feeder flushes).
The initializer has no deadline: it may load models or warm caches for minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import pickle
import tempfile
from asyncio import events
from typing import Any

import msgspec

from taskpool import _mp
from taskpool._answers import Escaped, clip, describe, run_awaitable
from taskpool._errors import SerializationError
from taskpool._mppickle import dumps

__all__ = ["Setup", "SetupFile", "initialize", "read_setup", "write_setup"]


class Setup(msgspec.Struct, array_like=True, frozen=True):
    """What a new worker is handed (see the module docstring).

    ``init``: ``(initializer, initargs)`` pickled, or None; ``logger``: where a failing
    initializer is logged; ``tracker_fd``: the pool's resource tracker (inherited).
    """

    authkey: bytes
    init: bytes | None = None
    logger: str = "taskpool"
    tracker_fd: int | None = None


class SetupFile:
    """A :class:`Setup` written for one worker: ``fd`` (the file, for ``--setup-fd``) and
    ``fds`` (what it needs inherited too). Close it once the worker is spawned."""

    __slots__ = ("fd", "fds")

    def __init__(self, fd: int, fds: list[int]) -> None:
        self.fd = fd
        self.fds = fds

    def close(self) -> None:
        """Close the file (the worker has its own copy of the fd); idempotent."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def write_setup(initializer: Any, initargs: tuple[Any, ...], logger: str = "taskpool") -> SetupFile:
    """The :class:`Setup` for a worker about to be spawned, written to a private file.

    Raises:
        SerializationError: the initializer or its arguments cannot be pickled (the
            message names which and why).
        OSError: the file cannot be made.
    """
    fds: list[int] = []
    init = None
    if initializer is not None:
        init = _dump_init(initializer, initargs, fds)
    tracker = _mp.tracker_fd()
    if tracker is not None:
        fds.append(tracker)
    data = msgspec.msgpack.encode(Setup(_mp.authkey(), init, logger, tracker))
    fd = _private_file()
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return SetupFile(fd, fds)


def _dump_init(initializer: Any, initargs: tuple[Any, ...], fds: list[int]) -> bytes:
    try:
        return dumps((initializer, initargs), fds=fds)
    except Exception as exc:
        # Say which part cannot be sent.
        try:
            dumps(initializer, fds=[])
        except Exception as err:
            raise SerializationError(f"cannot send the initializer {initializer!r}: {_why(err)}") from err
        for i, arg in enumerate(initargs):
            try:
                dumps(arg, fds=[])
            except Exception as err:
                raise SerializationError(f"cannot send initargs[{i}] ({_type_name(arg)}): {_why(err)}") from err
        raise SerializationError(f"cannot send the initializer's arguments: {_why(exc)}") from exc


def _why(exc: BaseException) -> str:
    return str(exc) if type(exc) is SerializationError else describe(exc)


def _type_name(x: object) -> str:
    t = type(x)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _private_file() -> int:
    """An fd of a file no other process can open by name (inheritable only when passed)."""
    if hasattr(os, "memfd_create"):
        with contextlib.suppress(OSError):
            return os.memfd_create("taskpool-setup", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile() as f:  # unlinked (or O_TMPFILE), mode 0600
        return os.dup(f.fileno())


# --------------------------------------------------------------------------- in the worker

_kept: list[Any] = []  # the initializer and its arguments (see initialize)


def read_setup(fd: int) -> Setup:
    """Read the worker's :class:`Setup` from inherited ``fd`` (closed after) and adopt
    the pool's authentication key and resource tracker. Raises OSError or
    msgspec.DecodeError when it cannot be read (the worker cannot start then)."""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0) if size else b""
    finally:
        os.close(fd)
    setup = msgspec.msgpack.decode(data, type=Setup)
    _mp.adopt(setup.authkey, setup.tracker_fd)
    return setup


async def initialize(setup: Setup, closed: asyncio.Future[Any]) -> str | None:
    """Run the worker's initializer, if any: None when it returned (or ``closed``, the
    channel's end, came first: it is cancelled then), else why it failed, ``"Type:
    message"``, once the traceback was logged on ``setup.logger``.

    A plain initializer runs outside the loop's "running" mark (``asyncio.run()`` works
    in it), as sync calls do; a coroutine one (or a plain one returning an awaitable) is
    awaited on the worker's loop. Whatever it raises counts, SystemExit included, and so
    does failing to unpickle it. Never raises.
    """
    if setup.init is None:
        return None
    loop = asyncio.get_running_loop()
    try:
        initializer, initargs = pickle.loads(setup.init)  # noqa: S301 - our own parent
        # Kept for the worker's life, as CPython's executor workers keep theirs: a queue
        # or proxy passed only to the initializer lives (and stays open) as long as it.
        _kept.append((initializer, initargs))
        events._set_running_loop(None)
        try:
            res = initializer(*initargs)
        finally:
            events._set_running_loop(loop)
        if res is not None and inspect.isawaitable(res):
            task = loop.create_task(run_awaitable(res))
            await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():  # the pool stopped us (or died) first: nobody waits
                task.cancel()
                return None
            task.result()
    except BaseException as exc:
        err = exc.original if isinstance(exc, Escaped) else exc
        tb = err.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next  # the traceback starts in the initializer, not here
        err.__traceback__ = tb
        import logging  # only now: a worker does not load logging for nothing

        logging.getLogger(setup.logger).critical("Exception in initializer:", exc_info=err)
        # (Lone surrogates escaped: the reason must encode.)
        return clip(describe(err), 2048).encode("utf-8", "backslashreplace").decode("utf-8")
    return None
