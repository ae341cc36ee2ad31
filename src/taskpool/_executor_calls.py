"""What a worker runs for one chunk of an executor's ``map``: the function over several
items, in order, keeping the results already made when one fails.

Module-level and standard-library only, so a process worker imports it by reference and
at once; ``map`` hands it over as ``functools.partial(run_items, fn)``, made once per
``map``, so a process worker receives the function once, not with every chunk.

Unlike :func:`taskpool._chunks.run_chunk`, a failure does not lose the results before it:
they ride on the exception (``exc._taskpool_done``, an attribute, so they cross to the
pool with it when the exception pickles) and the executor yields them before raising,
as ``concurrent.futures`` would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["DONE_ATTR", "run_items", "run_star_items"]

#: The attribute of a chunk's exception holding the results of the items before it.
DONE_ATTR = "_taskpool_done"


def run_items(fn: Callable[[Any], Any], items: tuple[Any, ...]) -> list[Any]:
    """``[fn(item) for item in items]``; the first exception stops the chunk and is raised
    carrying the results before it (see :data:`DONE_ATTR`)."""
    out: list[Any] = []
    append = out.append
    try:
        for item in items:
            append(fn(item))
    except BaseException as exc:
        _attach(exc, out)
        raise
    return out


def run_star_items(fn: Callable[..., Any], items: tuple[tuple[Any, ...], ...]) -> list[Any]:
    """``[fn(*args) for args in items]``, as :func:`run_items` (``map`` over several iterables)."""
    out: list[Any] = []
    append = out.append
    try:
        for args in items:
            append(fn(*args))
    except BaseException as exc:
        _attach(exc, out)
        raise
    return out


def _attach(exc: BaseException, done: list[Any]) -> None:
    if done:
        try:
            setattr(exc, DONE_ATTR, done)
        except Exception:  # noqa: S110 - a type refusing attributes: its chunk's results are lost
            pass
