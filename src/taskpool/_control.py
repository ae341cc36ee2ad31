"""A control block in memory shared by the pool and one worker process.

Two things cross it, each with no system call on the hot path:

- **Control frames sent** (the pool writes): the pool counts every ``Cancel`` and
  ``Shutdown`` frame it sends; the worker counts those it has read. Before it starts a
  queued call the worker compares the two: while the pool is ahead, a control frame waits
  in the socket, and the worker reads it first. So a call cancelled while it waits in
  the worker's window never starts; and a frame counted before the pool looks at the
  block, then written after a kill it decided, keeps the worker from beginning another
  call between the look and the kill (a fence).
- **Calls begun** (the worker writes): calls are numbered 1, 2, ... in the order the pool
  sent them (the worker counts them as they arrive, in the same order). Before a call
  begins (before its arguments are loaded: that may run user code) the worker writes its
  number and start time; while a sync call runs, its number stands as ``running``. The
  worker starts calls in arrival order, so every call numbered at most ``started`` has
  begun. That tells the pool, without a ``Started`` frame per call, which calls a dead
  worker had begun (they failed with it; later ones go back to the queue), which call a
  cancel would interrupt, and what ``status()`` counts as started.
- **Calls that went on as coroutines** (the worker writes): ``running`` names only the
  sync call blocking the worker; a coroutine call holds a slot of its own (its number)
  from before it begins until its answer is queued. So the pool can tell a call that
  ended, whose answer is still on its way (its loop fell behind reading), from one that
  runs: cancelling the first must not kill the worker and the call running after it.
- **Answers not written yet** (the worker writes): a worker runs a burst of quick calls
  back to back and writes their answers in one go. Before each such call it copies the
  answers still waiting into the block's *journal* (no system call); once they are
  written to the socket the journal is emptied. Should the worker die in the call, the
  pool reads the answers from the journal: a call that returned is never lost with its
  worker (nor run again).

The memory is a ``memfd`` (Linux) handed to the worker as an inherited fd. Where there is
none, the worker falls back to asking its socket before each start (one ``poll``), and
announces every start with ``Started``.
"""

from __future__ import annotations

import mmap
import os
import struct

__all__ = ["HELD", "JOURNAL", "ControlBlock"]

_COUNT = struct.Struct("<Q")  # at 0: control frames sent by the pool
_BEGUN = struct.Struct("<qdq")  # at 8: started (number), its start time, running (number or 0)
_RUNNING_AT = 8 + 8 + 8
_JLEN = struct.Struct("<Q")  # at 32: bytes in the journal
_JLEN_AT = 32
_JOURNAL_AT = 40
#: Bytes of answers the journal holds; more waiting, and the worker writes them instead.
JOURNAL = 64 * 1024 - _JOURNAL_AT
#: Coroutine calls a worker can hold at once (its ``concurrency`` is at most this).
HELD = 1024
_HELD_AT = _JOURNAL_AT + JOURNAL
_HELD = struct.Struct(f"<{HELD}q")
_SLOT = struct.Struct("<q")
_SIZE = _HELD_AT + _HELD.size
_NOT_RUNNING = struct.pack("<q", 0)


class ControlBlock:
    """The block shared with one worker (see the module docstring).

    Raises:
        OSError: the shared memory could not be made or mapped.
    """

    __slots__ = ("_mm", "_n", "fd")

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            fd = os.memfd_create("taskpool-control", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, _SIZE)
            except BaseException:
                os.close(fd)
                raise
        self.fd: int | None = fd
        self._mm = mmap.mmap(fd, _SIZE)
        self._n = 0

    @classmethod
    def create(cls) -> ControlBlock | None:
        """A new block, or None where shared memory of this kind is not available."""
        if not hasattr(os, "memfd_create"):
            return None
        try:
            return cls()
        except OSError:
            return None

    # -- the pool's side

    def bump(self) -> None:
        """Count one more control frame sent (call it when the frame is queued to send)."""
        self._n += 1
        _COUNT.pack_into(self._mm, 0, self._n)

    def begun(self) -> tuple[int, float, int]:
        """``(started, started_at, running)``: the number of the last call begun (0: none
        yet), when it began, and the number of the sync call running now (0: none)."""
        started, at, running = _BEGUN.unpack_from(self._mm, 8)
        return started, at, running

    def returned(self, number: int) -> bool:
        """Whether sync call ``number`` has begun and returned (another runs, or none)."""
        started, _, running = _BEGUN.unpack_from(self._mm, 8)
        return bool(0 < number <= started and running != number)

    def ended(self, number: int) -> bool:
        """Whether call ``number`` has begun and run to its end: its answer is queued,
        written, or in the journal. (Not the sync call running, nor a coroutine call
        holding a slot.)"""
        started, _, running = _BEGUN.unpack_from(self._mm, 8)
        if not 0 < number <= started or running == number:
            return False
        return number not in _HELD.unpack_from(self._mm, _HELD_AT)

    def journaled(self) -> bool:
        """Whether answers wait in the journal: queued by the worker, not written yet."""
        return bool(_JLEN.unpack_from(self._mm, _JLEN_AT)[0])

    def journal(self) -> bytes:
        """The answers the worker had not written yet (frames, back to back); read once it
        is dead. A frame it was still copying is not counted in yet."""
        (n,) = _JLEN.unpack_from(self._mm, _JLEN_AT)
        return bytes(self._mm[_JOURNAL_AT : _JOURNAL_AT + min(n, JOURNAL)])

    # -- the worker's side

    def read(self) -> int:
        """How many control frames the pool has sent so far."""
        return int(_COUNT.unpack_from(self._mm)[0])

    def begin(self, number: int, at: float, running: bool) -> None:
        """Call ``number`` begins at ``at``; ``running``: it is a sync call, running from now
        until :meth:`end`."""
        _BEGUN.pack_into(self._mm, 8, number, at, number if running else 0)

    def end(self) -> None:
        """The sync call that began last has returned."""
        self._mm[_RUNNING_AT:_JLEN_AT] = _NOT_RUNNING

    def hold(self, slot: int, number: int) -> None:
        """Call ``number`` runs as a coroutine, in ``slot`` (0 to ``HELD - 1``, one per
        call running at once). Held before the call begins (or before :meth:`end`, for a
        sync call that went on as a coroutine), so it is never seen begun and not held."""
        _SLOT.pack_into(self._mm, _HELD_AT + 8 * slot, number)

    def release(self, slot: int) -> None:
        """The call in ``slot`` has ended and its answer is queued."""
        _SLOT.pack_into(self._mm, _HELD_AT + 8 * slot, 0)

    def append(self, at: int, frames: bytes | bytearray) -> int:
        """Put ``frames`` in the journal at offset ``at``; then count them in (so a frame is
        seen whole or not at all). Returns the journal's new length; the caller checks
        that it fits in :data:`JOURNAL`."""
        end = at + len(frames)
        mm = self._mm
        mm[_JOURNAL_AT + at : _JOURNAL_AT + end] = frames
        _JLEN.pack_into(mm, _JLEN_AT, end)
        return end

    def rewrite(self, at: int, data: bytes | bytearray) -> None:
        """Overwrite journal bytes already counted in, from offset ``at`` (a frame header
        that changed as items were added to its frame)."""
        if at >= 0 and at + len(data) <= JOURNAL:
            self._mm[_JOURNAL_AT + at : _JOURNAL_AT + at + len(data)] = data

    def clear(self) -> None:
        """The journal's answers were written to the socket."""
        _JLEN.pack_into(self._mm, _JLEN_AT, 0)

    # -- both

    def close_fd(self) -> None:
        """Close the file descriptor (the mapping stays): once the worker inherited it."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def close(self) -> None:
        """Unmap the memory and close the descriptor."""
        self.close_fd()
        self._mm.close()
