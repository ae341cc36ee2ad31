"""The asyncio protocol speaking frames (:mod:`taskpool._frames`), for either end of a
worker's channel: frames parsed in place as they arrive, sent in one gathered write per
loop iteration (or at once), large segments handed to the transport without a copy.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import Callable
from typing import ClassVar, Generic, cast

from taskpool._frames import LARGE, FrameParser, FrameWriter, M, Message

__all__ = ["FrameProtocol"]


class FrameProtocol(asyncio.BufferedProtocol, Generic[M]):
    """An asyncio protocol speaking frames, for either end of the channel.

    Incoming frames are parsed in place (``BufferedProtocol``: the kernel writes into
    the parser's buffer) and handed to :meth:`message_received` one by one, with no
    awaits. :meth:`send` queues a frame and flushes once at the end of the current loop
    iteration, so a burst of messages becomes one gathered write. ``closed`` resolves
    (with the connection's exception or None) when the connection is lost.

    Subclass and override :meth:`message_received`, or pass ``on_message``.
    """

    _SLICE: ClassVar[int] = 256 * 1024

    def __init__(
        self,
        parser: FrameParser[M],
        on_message: Callable[[M], None] | None = None,
    ) -> None:
        self.parser = parser
        self.writer = FrameWriter()
        self.transport: asyncio.Transport | None = None
        self.on_message = on_message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._gather = False
        self._paused = False
        self._backlog: collections.deque[memoryview] = collections.deque()
        self.closed: asyncio.Future[BaseException | None] | None = None

    # -- receiving
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport; start serving."""
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        # Gathered writes (sendmsg/writev) only where writelines does not concatenate.
        self._gather = sys.version_info >= (3, 12) or type(transport).__module__.startswith("uvloop")

    def get_buffer(self, sizehint: int) -> memoryview:
        """Hand the loop the parser's receive buffer."""
        return self.parser.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        """Parse what arrived and dispatch each complete message."""
        for msg in self.parser.buffer_updated(nbytes):
            self.message_received(msg)

    def message_received(self, msg: M) -> None:
        """Called for every incoming message, in order. Default: ``on_message(msg)``."""
        if self.on_message is not None:
            self.on_message(msg)

    def eof_received(self) -> bool:
        """The peer closed its end: close ours too (returning False)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop pending output; resolve ``closed``."""
        self.transport = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.writer.take()
        self._backlog.clear()
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(exc)

    # -- sending
    def send(self, msg: Message, *, now: bool = False) -> None:
        """Queue one frame; it is written at the end of this loop iteration, or with
        ``now`` at once (with whatever else is queued). Raises SerializationError when
        the message cannot be encoded (nothing is queued then)."""
        self.writer.add(msg)
        if now:
            self.flush()
        elif self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every queued frame now, in one gathered write where the loop allows."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        chunks = self.writer.take()
        t = self.transport
        if not chunks or t is None or t.is_closing():
            return
        if self._gather:
            # uvloop / 3.12+: writev of the chunks themselves, kept by reference.
            if len(chunks) == 1:
                t.write(chunks[0])
            else:
                t.writelines(chunks)
            return
        if not self._backlog and not self._paused and all(len(c) < LARGE for c in chunks):
            t.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            return
        # Python 3.11 selector transports copy whatever the socket does not take at once
        # into their own buffer (and writelines() joins first): hand large data over in
        # slices, each when the previous one drained, so it is never copied whole.
        self._backlog.extend(c if type(c) is memoryview else memoryview(c) for c in chunks)
        self._drain()

    def pause_writing(self) -> None:
        """The transport's buffer is full: keep the rest in the backlog."""
        self._paused = True

    def resume_writing(self) -> None:
        """The transport's buffer drained: continue with the backlog."""
        self._paused = False
        self._drain()

    def _drain(self) -> None:
        backlog = self._backlog
        while backlog and not self._paused:
            t = self.transport
            if t is None or t.is_closing():
                backlog.clear()
                return
            head = backlog[0]
            if head.nbytes >= LARGE:
                if head.nbytes > self._SLICE:
                    backlog[0] = head[self._SLICE :]
                    head = head[: self._SLICE]
                else:
                    backlog.popleft()
                t.write(head)
                continue
            small: list[memoryview] = []
            while backlog and backlog[0].nbytes < LARGE:
                small.append(backlog.popleft())
            t.write(small[0] if len(small) == 1 else b"".join(small))
