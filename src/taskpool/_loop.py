"""Event loops taskpool owns: uvloop's where it is installed, else asyncio's.

Whatever runs a loop of taskpool's own goes through here: the command line (``taskpool
demo``, ``taskpool serve``) with :func:`run`, thread workers with :func:`new_event_loop`,
process workers with :func:`loop_factory` (``--loop`` of the worker's command line).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["in_asyncio", "loop_factory", "new_event_loop", "out_of_asyncio", "run"]

T = TypeVar("T")

_sniffio_cvar: contextvars.ContextVar[str | None] | None
try:
    from sniffio import current_async_library_cvar as _sniffio_cvar
except ImportError:  # anyio then finds the running asyncio loop by itself
    _sniffio_cvar = None


def in_asyncio() -> Any:
    """Say "asyncio" to sniffio while calling anyio from a loop callback; the token to undo it.

    The pool's loop runs callbacks outside any task (a worker's batch of reports, an
    executor's intake); anyio asks sniffio which library runs, and sniffio only knows
    inside a task. The pool always runs on asyncio, so it says so around such calls.
    """
    cvar = _sniffio_cvar
    return cvar.set("asyncio") if cvar is not None else None


def out_of_asyncio(token: Any) -> None:
    """Undo :func:`in_asyncio`."""
    if token is not None and _sniffio_cvar is not None:
        _sniffio_cvar.reset(token)


def loop_factory(kind: str = "auto") -> tuple[Callable[[], asyncio.AbstractEventLoop], bool]:
    """``(factory, is_uvloop)`` for ``kind``: ``"auto"`` (uvloop when importable),
    ``"uvloop"`` or ``"asyncio"``.

    Raises:
        ValueError: ``kind`` is none of those.
        ImportError: ``kind`` is ``"uvloop"`` and uvloop is not installed.
    """
    if kind not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"loop must be 'auto', 'uvloop' or 'asyncio', got {kind!r}")
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop, True
    return asyncio.new_event_loop, False


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when it is installed, else asyncio's default."""
    return loop_factory()[0]()


def run(main: Coroutine[Any, Any, T], *, kind: str = "auto") -> T:
    """Run ``main`` on a new loop of ``kind`` (see :func:`loop_factory`) and close it.

    Like :func:`asyncio.run`: the first Ctrl-C cancels ``main`` and raises
    :class:`KeyboardInterrupt` (unless ``main`` handles SIGINT itself); tasks still pending
    at the end are cancelled, async generators and the default executor shut down. The loop
    is the thread's current event loop while it runs.

    Raises:
        ValueError, ImportError: as :func:`loop_factory` (``main`` is then closed, unrun).
    """
    try:
        factory, _ = loop_factory(kind)
    except BaseException:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        asyncio.set_event_loop(runner.get_loop())
        try:
            return runner.run(main)
        finally:
            asyncio.set_event_loop(None)
