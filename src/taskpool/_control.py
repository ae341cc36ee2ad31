"""A counter of control frames, in memory shared by the pool and one worker process.

The pool counts every ``Cancel`` and ``Shutdown`` frame it sends a worker; the worker
counts those it has read. Before it starts a queued call, the worker compares the two
(one read of shared memory, no system call): while the pool has sent a control frame the
worker has not read yet, it reads its socket first. So a call cancelled while it waits in
the worker's window never starts, and a steady stream of calls costs no syscall per call
to make sure of it.

The memory is a ``memfd`` (Linux) handed to the worker as an inherited fd. Where there is
none, the worker falls back to asking its socket (one ``poll`` per call).
"""

from __future__ import annotations

import mmap
import os
import struct

__all__ = ["ControlCounter"]

_COUNT = struct.Struct("<Q")


class ControlCounter:
    """One 8-byte counter shared with a worker: the pool bumps it, the worker reads it.

    Raises:
        OSError: the shared memory could not be made or mapped.
    """

    __slots__ = ("_mm", "_n", "fd")

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            fd = os.memfd_create("taskpool-control", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, _COUNT.size)
            except BaseException:
                os.close(fd)
                raise
        self.fd: int | None = fd
        self._mm = mmap.mmap(fd, _COUNT.size)
        self._n = 0

    @classmethod
    def create(cls) -> ControlCounter | None:
        """A new counter, or None where shared memory of this kind is not available."""
        if not hasattr(os, "memfd_create"):
            return None
        try:
            return cls()
        except OSError:
            return None

    def bump(self) -> None:
        """Count one more control frame sent (call it when the frame is queued to send)."""
        self._n += 1
        _COUNT.pack_into(self._mm, 0, self._n)

    def read(self) -> int:
        """How many control frames the pool has sent so far."""
        return int(_COUNT.unpack_from(self._mm)[0])

    def close_fd(self) -> None:
        """Close the file descriptor (the mapping stays): once the worker inherited it."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def close(self) -> None:
        """Unmap the memory and close the descriptor."""
        self.close_fd()
        self._mm.close()
