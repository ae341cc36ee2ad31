"""The async event bus a pool publishes its lifecycle on.

Publishing is synchronous and never waits: each subscription has a bounded buffer, and
when a subscriber falls behind the oldest events are dropped and counted, so a slow
dashboard can never slow the pool. With no subscriber for a topic, publishing costs one
dictionary lookup and no event object is built (see :meth:`EventBus.wants`). The bus
holds its subscriptions weakly: one its subscriber dropped without closing it is gone
with its last reference, and costs the pool nothing after that.
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import threading
import time
import weakref
from types import TracebackType
from typing import Any

from ._types import Event, UserEvent

__all__ = ["EventBus", "Subscription", "set_if_pending"]

_CACHE_LIMIT = 4096
#: The per-task topics: the pool tests ``topic in bus.hot`` for these (one set lookup),
#: so subscribers of other topics (a dashboard's ``worker.*``) cost a task nothing.
HOT_TOPICS: tuple[str, ...] = ("task.queued", "task.started", "task.succeeded", "task.failed", "task.cancelled")


class Subscription:
    """A subscriber's view of the bus: an async iterator of events.

    Use it as ``async with bus.subscribe("task.*") as sub: async for event in sub: ...``.
    Iteration ends when the subscription or the bus is closed (the pool closes its bus
    after publishing ``pool.closed``), once the buffered events have been read.

    Attributes:
        patterns: the glob patterns matched against topics.
        maxsize: how many events are buffered before the oldest are dropped.
        dropped: how many events were dropped because the subscriber fell behind.
    """

    __slots__ = ("__weakref__", "_buffer", "_bus", "_closed", "_waiter", "dropped", "maxsize", "patterns")

    def __init__(self, bus: EventBus, patterns: tuple[str, ...], maxsize: int) -> None:
        self._bus = bus
        self.patterns: tuple[str, ...] = patterns
        self.maxsize: int = maxsize
        self.dropped: int = 0
        self._buffer: collections.deque[Event] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def matches(self, topic: str) -> bool:
        """Whether ``topic`` matches one of this subscription's patterns."""
        return any(fnmatch.fnmatchcase(topic, p) for p in self.patterns)

    @property
    def closed(self) -> bool:
        """True once closed; buffered events can still be read."""
        return self._closed

    def _push(self, event: Event) -> None:
        if len(self._buffer) >= self.maxsize:
            self._buffer.popleft()
            self.dropped += 1
        self._buffer.append(event)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            loop = waiter.get_loop()
            if loop is _running_loop():
                waiter.set_result(None)
            else:  # subscriber lives on another thread's loop
                loop.call_soon_threadsafe(set_if_pending, waiter)

    def get_nowait(self) -> Event | None:
        """The next buffered event, or ``None`` when the buffer is empty."""
        return self._buffer.popleft() if self._buffer else None

    def close(self) -> None:
        """Stop receiving events; iteration ends after the buffered ones."""
        if not self._closed:
            self._closed = True
            self._bus._remove(self)
            self._wake()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._buffer.popleft()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Subscription {self.patterns} buffered={len(self._buffer)} dropped={self.dropped}>"


def resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Give ``fut`` ``value`` as its result (``ok``) or its exception, unless it is done
    already (a thread-safe callback target)."""
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def set_if_pending(fut: asyncio.Future[None]) -> None:
    """Resolve ``fut`` with None unless it is already done (a thread-safe callback target)."""
    if not fut.done():
        fut.set_result(None)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class EventBus:
    """Topic-based publish/subscribe with glob patterns (``"task.*"``, ``"worker.log"``).

    Events are :class:`taskpool.Event` structs. Subscribing and publishing are
    thread-safe; subscribers iterate on their own event loop.
    """

    def __init__(self, *, default_maxsize: int = 10_000, source: str = "") -> None:
        if default_maxsize < 1:
            raise ValueError(f"default_maxsize must be >= 1, got {default_maxsize!r}")
        # Weak: a subscription nobody holds any more drops out by itself (see _forget).
        self._subs: list[weakref.ref[Subscription]] = []
        #: False while nobody subscribes: publishers test it before anything else (hot path).
        self.active: bool = False
        #: Which of :data:`HOT_TOPICS` some subscription matches (kept up to date on every change).
        self.hot: frozenset[str] = frozenset()
        self._routes: dict[str, tuple[weakref.ref[Subscription], ...]] = {}
        # Reentrant: a collection while we hold it (any allocation can start one) may drop
        # a subscription nobody closed, and its weakref callback (_forget) takes it too.
        self._lock = threading.RLock()
        self._closed = False
        self._default_maxsize = default_maxsize
        self._source = source

    @property
    def closed(self) -> bool:
        """True once the bus was closed (its pool closed)."""
        return self._closed

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open (and still held by someone)."""
        return sum(1 for r in self._subs if r() is not None)

    def subscribe(self, *patterns: str, maxsize: int | None = None) -> Subscription:
        """Subscribe to every topic matching one of ``patterns`` (globs; none means ``"*"``).

        The subscription receives events from this call on; use it as an async context
        manager so it is closed when you are done.

        Raises:
            TypeError: a pattern is not a ``str``.
            ValueError: ``maxsize`` < 1.
        """
        for p in patterns:
            if not isinstance(p, str):
                raise TypeError(f"subscribe() patterns must be str, got {type(p).__name__}")
        size = self._default_maxsize if maxsize is None else maxsize
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"subscribe() maxsize must be an int >= 1, got {maxsize!r}")
        sub = Subscription(self, patterns or ("*",), size)
        with self._lock:
            if self._closed:
                sub._closed = True
                return sub
            self._subs.append(weakref.ref(sub, self._forget))
            self._routes = {}
            self.active = True
            self._rehot()
        return sub

    def _rehot(self) -> None:
        # (under the lock) which per-task topics anyone listens to now
        subs = [s for r in self._subs if (s := r()) is not None]
        self.hot = frozenset(t for t in HOT_TOPICS if any(s.matches(t) for s in subs))

    def _forget(self, ref: weakref.ref[Subscription]) -> None:
        # A subscription was garbage-collected without being closed.
        with self._lock:
            try:
                self._subs.remove(ref)
            except ValueError:
                return
            self._routes = {}
            self.active = bool(self._subs)
            self._rehot()

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            for ref in self._subs:
                if ref() is sub:
                    self._subs.remove(ref)
                    self._routes = {}
                    self.active = bool(self._subs)
                    self._rehot()
                    return

    def _route(self, topic: str) -> tuple[weakref.ref[Subscription], ...]:
        routes = self._routes
        subs = routes.get(topic)
        if subs is None:
            subs = tuple(r for r in self._subs if (s := r()) is not None and s.matches(topic))
            if len(routes) >= _CACHE_LIMIT:
                routes.clear()
            routes[topic] = subs
        return subs

    def wants(self, topic: str) -> bool:
        """Whether any subscriber listens to ``topic``; lets publishers skip building events.

        Costs one list check with no subscriber at all, one dict lookup otherwise.
        """
        if not self._subs:
            return False
        subs = self._routes.get(topic)
        return bool(subs if subs is not None else self._route(topic))

    def emit(self, event: Event) -> None:
        """Deliver a ready-made event to the matching subscribers without waiting."""
        for ref in self._route(event.topic):
            sub = ref()
            if sub is not None:
                sub._push(event)

    def publish(
        self,
        topic: str,
        data: Any = None,
        *,
        task_id: int | None = None,
        worker_id: int | None = None,
    ) -> None:
        """Publish a user event (``UserEvent``) on ``topic``; never blocks.

        Raises:
            TypeError: ``topic`` is not a ``str``.
            ValueError: ``topic`` is empty.
        """
        if not isinstance(topic, str):
            raise TypeError(f"publish() topic must be str, got {type(topic).__name__}")
        if not topic:
            raise ValueError("publish() topic must not be empty")
        if self.wants(topic):
            self.emit(UserEvent(topic=topic, time=time.time(), data=data, task_id=task_id, worker_id=worker_id))

    def close(self) -> None:
        """Close the bus: subscribers finish iterating after their buffered events."""
        with self._lock:
            self._closed = True
            refs, self._subs, self._routes = self._subs, [], {}
            self.active = False
            self.hot = frozenset()
        for ref in refs:
            sub = ref()
            if sub is not None:
                sub._closed = True
                sub._wake()

    def __repr__(self) -> str:
        return f"<EventBus {self._source!r} subscribers={len(self._subs)}>"
