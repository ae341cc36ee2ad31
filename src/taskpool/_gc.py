"""Keeping CPython's cyclic GC off a large backlog of queued tasks.

Every queued :class:`~taskpool._task.Task` is a container the cyclic garbage collector
tracks. Young collections stay cheap, but a full collection walks every tracked object,
and one runs each time the survivors of young collections add up to a quarter of the old
objects: ``add_task`` into a queue of 1,000,000 tasks cost about 2.5 times what it cost
with 1,000 queued (1.5 against 0.6 µs of CPU here), the difference spent walking tasks
that simply wait their turn; under ``gc.disable()`` the growth is 1.15 times, and with the
episodes below about 1.25 times (``python -m benchmarks.bench_core --workloads growth``).

So while a backlog is long, taskpool moves the old objects to the GC's *permanent
generation* (:func:`gc.freeze`), which no collection walks, and moves them back
(:func:`gc.unfreeze`) once the backlog is gone. Both are O(1) (a list splice). Nothing is
added to ``add_task``: the pools' queues are *watched* (weakly, by :func:`watch`), and
the work is done from a :data:`gc.callbacks` hook, that is only when the GC runs anyway.

An *episode*:

* **starts** at the end of a collection of generation 1 or 2 (after a renewal: of a full
  one) while a watched queue holds at least :data:`START` entries, if the GC is enabled
  and the permanent generation is empty: a program that froze objects itself (say
  before forking) is left alone, since ending an episode would unfreeze its objects too;
* **goes on** with a freeze at the end of every collection of generation 1 or 2: what
  survived since the previous freeze joins the frozen set, so a collection only ever walks
  the objects made since, however long the queue;
* **ends** at the start of the first collection after every watched queue has fallen
  under :data:`STOP` entries (a queue emptied by closing its pool, or one gone with its
  pool, counts as short), or once the episode is :data:`RENEW_AFTER` seconds old:
  everything frozen goes back to the oldest generation, for that collection or the next
  full one to walk. After such a renewal no episode starts before a full collection ran.

**The trade-off.** During an episode, an object that was alive at one of its freezes
and then becomes garbage *in a reference cycle* is not collected: a user's cycle may
outlive its last reference by up to :data:`RENEW_AFTER` seconds plus the wait for the
next full collection, or until the backlog drains, whichever comes first. (Objects freed
by reference counting, which is most of them and every task once it is done, are freed
at once as usual; so are cycles that die young, before the next freeze.) Frozen objects
are also missing from :func:`gc.get_objects` and :func:`gc.get_referrers`, and an
explicit :func:`gc.collect` during an episode does not walk them; one run after the
queues drained does, since the episode ends first. After an episode the next full
collection walks all that was frozen: one such pause per episode (and per renewal),
where the GC left alone would have made one every time the heap grew by a quarter. A
program that calls
:func:`gc.freeze` itself *during* an episode has its objects unfrozen when the episode
ends. Episodes run on CPython with a GIL only; elsewhere :func:`watch` does nothing, and
so it does with ``TASKPOOL_GC_FREEZE=0`` in the environment.
"""

from __future__ import annotations

import collections
import gc
import os
import sys
import sysconfig
import threading
import time
import weakref
from typing import Any

__all__ = ["RENEW_AFTER", "START", "STOP", "active", "watch"]

#: Entries in one watched queue that start an episode (after the next full collection).
START = 10_000
#: An episode ends once every watched queue holds fewer entries than this.
STOP = 5_000
#: Seconds after which an episode ends anyway, letting a full collection see everything.
RENEW_AFTER = 30.0

#: ``TASKPOOL_GC_FREEZE=0`` in the environment turns episodes off (see the trade-off above).
SUPPORTED = (
    sys.implementation.name == "cpython"
    and not sysconfig.get_config_var("Py_GIL_DISABLED")
    and os.environ.get("TASKPOOL_GC_FREEZE", "1") != "0"
)

_queues: dict[int, weakref.ref[collections.deque[Any]]] = {}
_lock = threading.Lock()  # watch() only: the GC hook never waits for it
# The episode's state, touched only by _on_gc (collections never overlap: a collection
# that would start while another one runs is skipped by the interpreter).
_frozen = False  # an episode is on: the permanent generation holds what it froze
_since = 0.0  # when it began (time.monotonic())
_after_full = False  # renewed: no new episode before a full collection has seen everything
_foreign = False  # the program froze objects itself: no episode until the queues are short again


def watch(queue: collections.deque[Any]) -> None:
    """Count ``queue``'s length towards starting and ending episodes, for as long as it lives."""
    if not SUPPORTED:
        return
    key = id(queue)

    def forget(ref: weakref.ref[collections.deque[Any]], key: int = key) -> None:
        if _queues.get(key) is ref:
            del _queues[key]

    with _lock:
        _queues[key] = weakref.ref(queue, forget)
        if _on_gc not in gc.callbacks:  # (looked for each time: a program may clear the list)
            gc.callbacks.append(_on_gc)


def active() -> bool:
    """Whether an episode is on (objects of this process are frozen by taskpool)."""
    return _frozen


def _longest() -> int:
    longest = 0
    for ref in list(_queues.values()):  # a snapshot: another thread may watch a queue meanwhile
        queue = ref()
        if queue is not None and len(queue) > longest:
            longest = len(queue)
    return longest


def _on_gc(phase: str, info: dict[str, int]) -> None:
    """The ``gc.callbacks`` hook: runs before (``start``) and after (``stop``) every collection."""
    global _frozen, _since, _after_full, _foreign
    if phase == "start":
        if _frozen:
            renew = time.monotonic() - _since > RENEW_AFTER
            if renew or _longest() < STOP:
                _frozen = False
                _after_full = renew  # a renewal: the next full collection must see everything
                gc.unfreeze()
        elif _foreign and _longest() < STOP:
            _foreign = False
        return
    generation = info["generation"]
    if generation == 0:
        return
    if _frozen:
        gc.freeze()  # what survived since the last freeze joins the frozen set
        return
    if generation == 2:
        _after_full = False
    if _after_full or _foreign or not gc.isenabled() or _longest() < START:
        return
    if gc.get_freeze_count():  # O(frozen objects): checked once per long queue
        _foreign = True  # the program's own freeze: unfreezing would undo it
        return
    gc.freeze()
    _frozen = True
    _since = time.monotonic()
