"""``multiprocessing`` objects crossing to and from process workers.

multiprocessing lets some of its objects be pickled only while it starts a process (in a
*spawning context*: ``multiprocessing.context.set_spawning_popen``), because only then can
they reach the other side: a ``Queue`` or a ``Pipe`` connection needs its file descriptors
inherited by the new process, a ``Lock`` its semaphore opened by name, a ``Manager()`` proxy
the authentication key. taskpool pickles what involves multiprocessing inside such a
context of its own (:func:`dumps`), with multiprocessing's reducers (``ForkingPickler``'s)
and :class:`_Popen` standing in for multiprocessing's ``Popen``:

- **At spawn time** (the initializer and ``initargs``, with a list to collect fds): an
  object that needs a file descriptor travels as :class:`DupFd` (the fd's number), and
  the fds collected are inherited by the new worker under the same numbers, as
  CPython's spawning ``Popen`` does. ``Queue``, ``Pipe`` connections, shared
  ``Value``/``Array``, locks, events and proxies all work there.
- **To and from a running worker** (arguments, results, published data): no fd can
  reach a process that is already running, so an object that needs one fails with a
  :class:`~taskpool.SerializationError` saying what to do instead. Objects that travel
  by name (locks, semaphores, events, conditions made with the ``spawn`` or
  ``forkserver`` context) and ``Manager()`` proxies work.

A lock made with the ``fork`` context (multiprocessing's default on Linux) never
travels: its semaphore has no name, and its handle is an address that means something
only in forked children (a spawned process using it would crash). Python 3.12 refuses it
with a RuntimeError; here it is refused on every version, as a SerializationError.

Each worker gets the pool's authentication key (``current_process().authkey``) before any
user code runs, so proxies it receives or makes connect to the pool's managers, and the
pool's resource tracker when one is running (:func:`adopt`).
"""

from __future__ import annotations

import io
import pickle
import sys
from collections.abc import Callable
from typing import Any, ClassVar

from taskpool._errors import SerializationError

__all__ = ["FD_REFUSED", "FORK_REFUSED", "DupFd", "adopt", "authkey", "dumps", "tracker_fd"]

#: Why an object that needs a file descriptor cannot cross to or from a running worker.
FD_REFUSED = (
    "it holds a file descriptor (a multiprocessing Queue, Pipe connection, shared Value or Array, ...), "
    "which cannot be handed to a worker that is already running: give it to the workers when they start, "
    "with FunctionPool(initializer=..., initargs=(...)), or use a multiprocessing.Manager() object instead "
    "(e.g. Manager().Queue())"
)
#: Why a fork-context lock (or an event, condition, ... built on one) cannot cross.
FORK_REFUSED = (
    "it holds a multiprocessing lock, semaphore, event or condition made with the 'fork' start method "
    "(multiprocessing's default on Linux), which cannot reach a spawned worker: make it with "
    "multiprocessing.get_context('spawn') (or 'forkserver'), e.g. multiprocessing.get_context('spawn').Lock()"
)


class DupFd:
    """A file descriptor the worker inherits under the same number (see :class:`_Popen`)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def detach(self) -> int:
        """The fd, now the caller's (it was inherited: nothing to duplicate)."""
        return self.fd

    def __reduce__(self) -> tuple[type[DupFd], tuple[int]]:
        return (DupFd, (self.fd,))


class _Popen:
    """What multiprocessing asks of its ``Popen`` while it pickles for a new process.

    ``fds``: the list collecting the fds the new worker must inherit; None for a worker
    that is already running, where asking for one raises SerializationError.
    """

    DupFd = DupFd
    __slots__ = ("fds",)

    def __init__(self, fds: list[int] | None) -> None:
        self.fds = fds

    def duplicate_for_child(self, fd: int) -> int:
        """``fd``, to be inherited by the worker under the same number.

        Raises:
            SerializationError: the worker is already running (:data:`FD_REFUSED`).
        """
        if self.fds is None:
            raise SerializationError(FD_REFUSED)
        if fd not in self.fds:  # a retry (cloudpickle after pickle) asks again
            self.fds.append(fd)
        return fd


_RUNNING = _Popen(None)


def dumps(
    obj: Any,
    *,
    buffer_callback: Callable[[pickle.PickleBuffer], bool] | None = None,
    reset: Callable[[], None] | None = None,
    fds: list[int] | None = None,
    main_by_value: bool = True,
) -> bytes:
    """``obj`` pickled (protocol 5) for a worker, inside a spawning context, with
    multiprocessing's own reducers (``ForkingPickler``'s: a ``Connection`` or a socket
    goes as its fd) and fork-context locks refused; cloudpickle (with the same) when
    plain pickling refuses, or with ``main_by_value`` when the stream names ``__main__``.

    Only once ``multiprocessing`` is loaded (without it no object of it can exist: plain
    pickle is all it takes). ``fds``: collects the fds a worker being spawned must
    inherit (None: the worker is running); ``reset``: called before pickling again
    (``buffer_callback`` kept buffers of the failed attempt).

    Raises:
        SerializationError: an object that cannot cross (:data:`FD_REFUSED`,
            :data:`FORK_REFUSED`).
        Exception: what cloudpickle raised when neither pickler could.
    """
    from multiprocessing import context as module

    context: Any = module  # (typeshed wants one of its own Popen classes here)
    previous = context.get_spawning_popen()
    context.set_spawning_popen(_RUNNING if fds is None else _Popen(fds))
    try:
        try:
            stream: bytes | None = _dump(_pickler(), obj, buffer_callback)
        except SerializationError:
            raise  # it cannot cross, whatever the pickler
        except Exception:
            stream = None  # e.g. a lambda inside: cloudpickle below
        if stream is None or (main_by_value and b"__main__" in stream):
            if reset is not None:
                reset()
            stream = _dump(_pickler(cloud=True), obj, buffer_callback)
        return stream
    except RuntimeError as exc:
        if "fork context" in str(exc):  # Python 3.12+ says it itself
            raise SerializationError(FORK_REFUSED) from exc
        raise
    finally:
        context.set_spawning_popen(previous)


def _dump(cls: Any, obj: Any, buffer_callback: Callable[[pickle.PickleBuffer], bool] | None) -> bytes:
    out = io.BytesIO()
    cls(out, buffer_callback).dump(obj)
    return out.getvalue()


def _refuse_fork_lock(obj: Any) -> None:
    """Raise for a lock made with the fork context: outside Windows, a semaphore with
    no name (unlinked at once, as fork-context ones are)."""
    synchronize = sys.modules.get("multiprocessing.synchronize")
    if (
        synchronize is not None
        and isinstance(obj, synchronize.SemLock)
        and sys.platform != "win32"
        and obj._semlock.name is None
    ):
        raise SerializationError(FORK_REFUSED)


_classes: dict[str, Any] = {}


def _pickler(cloud: bool = False) -> Any:
    """The pickler class: multiprocessing's reducers (``ForkingPickler``'s), and a look at
    each object for fork-context locks (a Python call per object: only for what involves
    multiprocessing, see :mod:`taskpool._mppickle`); ``cloud``: cloudpickle's, likewise."""
    name = "cloud" if cloud else "plain"
    found = _classes.get(name)
    if found is not None:
        return found
    from multiprocessing.reduction import ForkingPickler

    if not cloud:

        class _Pickler(ForkingPickler):
            def __init__(self, file: Any, buffer_callback: Any) -> None:
                super().__init__(file, 5, True, buffer_callback)

            def reducer_override(self, obj: Any) -> Any:
                _refuse_fork_lock(obj)
                return NotImplemented

        found = _Pickler
    else:
        import collections
        import copyreg

        import cloudpickle  # ~10 ms to import: only when plain pickling refused

        class _CloudPickler(cloudpickle.Pickler):  # type: ignore[misc]
            # Live views: reducers registered later count too.
            dispatch_table: ClassVar[Any] = collections.ChainMap(
                getattr(ForkingPickler, "_extra_reducers", {}),
                cloudpickle.Pickler.dispatch_table,
                copyreg.dispatch_table,
            )

            def __init__(self, file: Any, buffer_callback: Any) -> None:
                super().__init__(file, 5, buffer_callback)

            def reducer_override(self, obj: Any) -> Any:
                _refuse_fork_lock(obj)
                return super().reducer_override(obj)

        found = _CloudPickler
    _classes[name] = found
    return found


# --------------------------------------------------------------------------- the worker's process


def authkey() -> bytes:
    """This process's multiprocessing authentication key (for its workers)."""
    import multiprocessing.process

    return bytes(multiprocessing.process.current_process().authkey)


def tracker_fd() -> int | None:
    """The fd of this process's multiprocessing resource tracker, when one is running
    (never started here: the pool must not leave a process behind)."""
    module = sys.modules.get("multiprocessing.resource_tracker")
    tracker = getattr(module, "_resource_tracker", None)
    fd = getattr(tracker, "_fd", None)
    return fd if isinstance(fd, int) and fd >= 0 else None


def adopt(key: bytes, tracker: int | None) -> None:
    """In a worker, before any user code: take the pool's authentication key, so
    ``Manager()`` proxies connect, and its resource tracker (``tracker``: an inherited
    fd), so named resources the worker opens are the pool's to clean up, as in a
    process multiprocessing spawns."""
    import multiprocessing.process

    multiprocessing.process.current_process().authkey = key
    if tracker is not None:
        from multiprocessing import resource_tracker

        resource_tracker._resource_tracker._fd = tracker  # type: ignore[attr-defined]
