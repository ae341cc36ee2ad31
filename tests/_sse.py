"""One Server-Sent Events reader for the tests that talk to a status app over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import httpx

from ._support import WAIT

__all__ = ["SSE"]


class SSE:
    """Reads events from an httpx event-stream response, each wait bounded by ``WAIT``.

    Attributes:
        last_id: the id of the last event read (None before any, or when it had none).
    """

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200, response.status_code
        assert response.headers["content-type"].startswith("text/event-stream")
        self.lines = response.aiter_lines()
        self.last_id: str | None = None

    async def next(self) -> tuple[str | None, str, str]:
        """The next event: ``(id, name, data as text)``; EOFError when the stream ended."""
        event_id, name, data = None, "message", []
        async with asyncio.timeout(WAIT):
            async for line in self.lines:
                if line == "":
                    if data:
                        self.last_id = event_id
                        return event_id, name, "\n".join(data)
                    continue
                if line.startswith(":"):  # a comment: the heartbeat
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "id":
                    event_id = value
                elif field == "event":
                    name = value
                elif field == "data":
                    data.append(value)
        raise EOFError("the stream ended")

    async def until(self, name: str, pred: Callable[[Any], bool] | None = None) -> Any:
        """The data (decoded JSON) of the next ``name`` event matching ``pred``."""
        while True:
            _, event, data = await self.next()
            if event == name:
                doc = json.loads(data)
                if pred is None or pred(doc):
                    return doc

    async def names_until_end(self) -> list[str]:
        """The names of every event up to the end of the stream."""
        names = []
        with contextlib.suppress(EOFError):
            while True:
                names.append((await self.next())[1])
        return names
