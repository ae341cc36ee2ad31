"""Server-Sent Events: feeds shared by clients, each client a cursor into a bounded ring.

::

    pool bus ──subscribe(patterns)──► Feed ──encode once──► ring (last RING events, ids)
    Reporter (per tick, on change) ──"status"──►┘                 │
                                                   client cursor ◄┴► client cursor ...

A feed is made per distinct set of topic patterns and shared by every client asking for
it; each event is encoded once, whatever the number of clients. A client that falls
more than :data:`RING` events behind (or resumes with a ``Last-Event-ID`` older than the
ring) gets a ``reset`` event and continues from the oldest event kept, so memory is
bounded per feed, not per client, and a slow client never slows the pool (the bus
itself drops for a subscriber that falls behind, see ``_events``). Ids come from one
counter per app, so a resumed stream never confuses two feeds' events.
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import secrets
import time
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._events import EventBus, Subscription

__all__ = ["DEFAULT_TOPICS", "RING", "Feed", "Hub", "frame"]

#: What ``/events`` streams when the client names no topics: no per-task successes
#: (an event per task) and no ``worker.log`` (an event per line a worker prints).
DEFAULT_TOPICS: tuple[str, ...] = (
    "status", "worker.started", "worker.exited", "worker.restarted", "service.*", "pool.*", "task.failed",
)  # fmt: skip
#: Events kept per feed for slow clients and resumption.
RING = 2048
#: Seconds a feed with no client left is kept, so a reconnecting client can resume.
LINGER = 30.0

_encode = msgspec.json.Encoder(enc_hook=repr).encode


def frame(event_id: str | None, name: str, data: bytes) -> bytes:
    """One SSE message (``data`` is JSON: one line, no newline inside).

    A topic may hold any character (``publish`` takes any string): line breaks in it
    would start lines of their own in the stream, so they become spaces.
    """
    if "\n" in name or "\r" in name:
        name = name.replace("\r", " ").replace("\n", " ")
    head = f"id: {event_id}\nevent: {name}\n" if event_id is not None else f"event: {name}\n"
    return head.encode() + b"data: " + data + b"\n\n"


class Feed:
    """The events of one set of topic patterns, as encoded SSE frames with ids."""

    def __init__(self, hub: Hub, patterns: tuple[str, ...]) -> None:
        self.hub = hub
        self.patterns = patterns
        self.wants_status = any(fnmatch.fnmatchcase("status", p) for p in patterns)
        bus_patterns = tuple(p for p in patterns if p != "status")
        self.ring: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=RING)
        self.evicted = 0  # id of the newest event pushed out of the ring
        # An id of its own, never sent: a client that saw events of an earlier feed for
        # these topics (dropped while nobody listened) is told it missed what came between.
        self.first_id = hub.next_id() + 1
        self.clients = 0
        self.idle_since: float | None = None
        self._changed: asyncio.Future[None] | None = None
        self._sub: Subscription | None = None
        self._pump: asyncio.Task[None] | None = None
        if bus_patterns and not hub.bus.closed:
            self._sub = hub.bus.subscribe(*bus_patterns, maxsize=RING)
            self._pump = asyncio.get_running_loop().create_task(self._run(self._sub))

    async def _run(self, sub: Subscription) -> None:
        dropped = 0
        async for event in sub:
            if sub.dropped != dropped:  # the bus dropped events for us: a gap before this one
                dropped = sub.dropped
                self.evicted = max(self.evicted, self.hub.last_id + 1)  # missed by whoever had not seen it
            self.push(event.topic, _encode(event))

    def push(self, name: str, data: bytes) -> None:
        """Add an event (encoded JSON) under a new id and wake the clients."""
        event_id = self.hub.next_id()
        ring = self.ring
        if len(ring) == ring.maxlen:
            self.evicted = max(self.evicted, ring[0][0])
        ring.append((event_id, frame(self.hub.format_id(event_id), name, data)))
        self.wake()

    def wake(self) -> None:
        """Wake every client waiting on this feed."""
        fut = self._changed
        if fut is not None:
            self._changed = None
            if not fut.done():
                fut.set_result(None)

    def changed(self) -> asyncio.Future[None]:
        """A future resolved at the next push (or when the feed ends)."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def since(self, last: int) -> tuple[bool, list[bytes], int]:
        """Frames after id ``last``: ``(missed_some, frames, new_last)``."""
        missed = last < self.evicted or (last < self.first_id - 1)
        out = [f for i, f in self.ring if i > last]
        return missed, out, (self.ring[-1][0] if self.ring else last)

    def close(self) -> None:
        """Stop following the bus."""
        if self._sub is not None:
            self._sub.close()
        if self._pump is not None:
            self._pump.cancel()
        self.wake()


class Hub:
    """The feeds of one app: made on demand, shared, dropped after :data:`LINGER` s idle."""

    def __init__(self, bus: EventBus, status: Callable[[], tuple[int, bytes]]) -> None:
        self.bus = bus
        self.status = status
        self.feeds: dict[tuple[str, ...], Feed] = {}
        self.last_id = 0
        # Ids are "<epoch>-<n>": a Last-Event-ID from another app (a restarted service,
        # another worker process behind the same URL) is known for what it is.
        self.epoch = secrets.token_hex(4)
        self._status_seq = -1

    def next_id(self) -> int:
        """The next event id (one counter for every feed of the app)."""
        self.last_id += 1
        return self.last_id

    def format_id(self, n: int) -> str:
        """Event ``n``'s id as sent: ``<epoch>-<n>``."""
        return f"{self.epoch}-{n}"

    def parse_id(self, text: str) -> int | None:
        """A client's ``Last-Event-ID``: its number, ``None`` when absent, -1 when not this app's."""
        if not text:
            return None
        epoch, _, n = text.partition("-")
        if epoch != self.epoch or not n.isdigit():
            return -1
        return int(n)

    def acquire(self, patterns: tuple[str, ...]) -> Feed:
        """The feed for ``patterns`` (made if needed), counted as used by one more client."""
        key = tuple(sorted(set(patterns)))
        feed = self.feeds.get(key)
        if feed is None:
            feed = self.feeds[key] = Feed(self, key)
        feed.clients += 1
        feed.idle_since = None
        return feed

    def release(self, feed: Feed) -> None:
        """One client left ``feed``."""
        feed.clients -= 1
        if feed.clients <= 0:
            feed.idle_since = time.monotonic()

    @property
    def wants_status(self) -> bool:
        """Whether any feed carries ``status`` events (the app's ticker runs only then)."""
        return any(f.wants_status for f in self.feeds.values())

    def tick(self) -> None:
        """Per tick: push the status to the feeds that carry it (if it changed), drop idle feeds."""
        now = time.monotonic()
        for key, feed in list(self.feeds.items()):
            if feed.idle_since is not None and now - feed.idle_since > LINGER:
                feed.close()
                del self.feeds[key]
        if not self.wants_status:
            return
        seq, data = self.status()
        if seq != self._status_seq:
            self._status_seq = seq
            for feed in self.feeds.values():
                if feed.wants_status:
                    feed.push("status", data)

    def close(self) -> None:
        """Close every feed (their clients end their streams)."""
        for feed in self.feeds.values():
            feed.close()
        self.feeds.clear()
