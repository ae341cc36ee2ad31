"""Event loops taskpool owns: uvloop's where it is installed, else asyncio's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["loop_factory", "new_event_loop"]


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
