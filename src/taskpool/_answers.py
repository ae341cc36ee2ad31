"""A worker's answers to calls: the ``Result`` or ``Error`` message for what a call did.

Used by :mod:`taskpool._child`. Building an answer runs user code (a result's pickling, an
exception's ``__str__``, ``__reduce__`` or traceback), and whatever that raises must not
lose the answer: a result that cannot be sent becomes an ``ERR_UNSENDABLE`` error, an
exception that cannot be shown or pickled is described as far as it can be.
"""

from __future__ import annotations

import contextlib
import pickle
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from taskpool._errors import SerializationError
from taskpool._wire import ERR_CANCELLED, ERR_UNSENDABLE, Error, Result, _type_name, dump_value

__all__ = [
    "Escaped",
    "cancelled_message",
    "error_messages",
    "result_message",
    "run_awaitable",
    "unsendable_messages",
]


def result_message(
    cid: int, value: Any, at: float, started: float, skip: str, fn: Any = None
) -> Result | tuple[Error, Error]:
    """The answer for call ``cid`` of ``fn`` that returned ``value``: a Result, or the
    Errors (as :func:`error_messages`) saying why the value cannot be sent. ``skip``: the
    file whose frames are left out of a traceback (the server's own). A chunk of ``map``
    whose list cannot be sent whole is sent as :func:`sendable_chunk` makes it."""
    try:
        fmt, data, bufs = dump_value(value)
    except BaseException as exc:
        fixed = sendable_chunk(fn, value)
        if fixed is not None:
            with contextlib.suppress(BaseException):
                fmt, data, bufs = dump_value(fixed)
                return Result(cid, fmt, data, bufs, at, started)
        return unsendable_messages(cid, value, exc, at, started, skip)
    return Result(cid, fmt, data, bufs, at, started)


def sendable_chunk(fn: Any, value: Any, dump: Callable[[Any], Any] = dump_value) -> list[Any] | None:
    """What to send for a chunk of ``map`` (``fn`` a ``partial`` of a chunk runner) whose
    results ``value`` cannot be sent as a whole, or None when ``fn`` is no chunk runner.

    Each result that cannot be sent fails in its own place, as it would have as a task
    of its own: an :class:`ItemFailed` in ``map(return_exceptions=True)``'s chunks (the
    others are sent); in an executor's chunks the first one ends the list, carrying the
    exception pickling raised, which the executor raises in its place after the results
    before it (``concurrent.futures`` raises it so). ``dump``: how a result is sent.
    """
    from taskpool._chunks import ItemFailed, run_chunk_settled, run_chunk_settled_async
    from taskpool._executor_calls import run_items, run_star_items

    runner = getattr(fn, "func", None)
    each = runner is run_chunk_settled or runner is run_chunk_settled_async
    if type(value) is not list or not (each or runner is run_items or runner is run_star_items):
        return None
    out: list[Any] = []
    for v in value:
        try:
            dump(v)
        except BaseException as exc:
            tb = format_exception(exc, "")
            if not each:
                out.append(ItemFailed(exc, tb))
                break
            why = f"the result ({_type_name(v)}) cannot be sent back from the worker: {describe(exc)}"
            out.append(ItemFailed(SerializationError(why), tb))
        else:
            out.append(v)
    return out


def unsendable_messages(
    cid: int, value: Any, exc: BaseException, at: float, started: float, skip: str
) -> tuple[Error, Error]:
    """The Errors (as :func:`error_messages`) for a result ``value`` that could not be
    sent because of ``exc`` (raised pickling it, or sending it: over the size limit)."""
    err = SerializationError(f"the result ({_type_name(value)}) cannot be sent back from the worker: {describe(exc)}")
    # The parent rebuilds ``exc`` as the SerializationError's __cause__.
    return error_messages(cid, ERR_UNSENDABLE, err, at, skip, cause=exc, started=started)


def error_messages(
    cid: int,
    kind: int,
    exc: BaseException,
    at: float,
    skip: str,
    cause: BaseException | None = None,
    started: float = 0.0,
) -> tuple[Error, Error]:
    """The Error answering ``cid`` with ``exc``, and a clipped ASCII version of it to send
    when the first cannot be (a surrogate in its text, or over the size limit). With
    ``cause`` (``ERR_UNSENDABLE``), the traceback and pickle are the cause's (the exception
    the parent rebuilds as ``__cause__``)."""
    shown = cause if cause is not None else exc
    tb = format_exception(shown, skip)
    try:
        message = str(exc)
    except BaseException:  # user code: whatever it raises must not lose the answer
        message = f"<unprintable {type(exc).__name__}>"
    pickled = pickle_exception(shown) if kind != ERR_CANCELLED else None
    t = type(exc)
    full = Error(cid, kind, t.__module__, t.__qualname__, message, tb, pickled, at, started)
    # ascii(): one byte per character, so the clipped texts surely fit.
    clipped = Error(cid, kind, t.__module__, t.__qualname__, clip(ascii(message)), clip(ascii(tb)), None, at, started)
    return full, clipped


def cancelled_message(cid: int, why: str) -> Error:
    """The answer for a call cancelled in the worker (or handed back unstarted)."""
    return Error(cid, ERR_CANCELLED, "asyncio.exceptions", "CancelledError", why, "", None, time.time())


class Escaped(Exception):
    """A task's own SystemExit/KeyboardInterrupt, carried out of its asyncio task (asyncio
    would re-raise those out of the event loop and take the worker down)."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


async def run_awaitable(awaitable: Awaitable[Any]) -> Any:
    """Await a call's awaitable, its SystemExit/KeyboardInterrupt wrapped in Escaped."""
    try:
        return await awaitable
    except (SystemExit, KeyboardInterrupt) as exc:
        raise Escaped(exc) from None


def format_exception(exc: BaseException, skip: str) -> str:
    """The traceback text, without the frames of file ``skip`` at the top."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == skip:
        tb = tb.tb_next
    try:
        return "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException:  # a __str__ raising anything
        return f"{type(exc).__name__} (traceback unavailable)\n"


def clip(text: str, keep: int = 8192) -> str:
    """``text``, its middle cut out when longer than ``keep`` characters (an error must
    fit the smallest max_message_size, 64 KiB)."""
    if len(text) <= keep:
        return text
    return f"{text[: keep // 2]}\n[... {len(text) - keep} characters cut ...]\n{text[-keep // 2 :]}"


def describe(exc: BaseException) -> str:
    """``"Type: message"``, even for an exception whose ``__str__`` raises."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except BaseException:
        return f"{type(exc).__name__}: <unprintable>"


def pickle_exception(exc: BaseException) -> bytes | None:
    """``exc`` pickled (cloudpickle when pickle refuses), or None. A ``__reduce__`` may
    raise anything, even SystemExit: that only means "not picklable"."""
    with contextlib.suppress(BaseException):
        return pickle.dumps(exc, 5)
    try:
        import cloudpickle  # only for exceptions pickle refuses

        return cloudpickle.dumps(exc, 5)  # type: ignore[no-any-return]
    except BaseException:
        return None
