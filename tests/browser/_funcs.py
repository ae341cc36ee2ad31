"""Functions the browser tests run in a pool (module-level, so process workers import them by reference)."""

from __future__ import annotations

import asyncio
import time


def nap(seconds: float) -> float:
    """Block for ``seconds``: a task that keeps its worker busy for a known time."""
    time.sleep(seconds)
    return seconds


async def serve_forever() -> None:
    """A service run that lasts until it is cancelled (the pool closing stops it)."""
    await asyncio.Event().wait()
