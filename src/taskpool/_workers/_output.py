"""Where what a worker prints goes, per the pool's ``worker_output``.

* ``"log"``: each line on the ``taskpool.worker`` logger (stderr as warnings) and as a
  ``worker.log`` event; ``"events"``: the event only. A kind hands each line to
  ``WorkerHost.worker_log``, which calls :func:`route_line`.
* ``"inherit"``: written through to this process's own ``sys.stdout`` / ``sys.stderr``, as
  ``ProcessPoolExecutor``'s children do: the process kind passes each chunk through as it
  arrives (:func:`pass_through`); lines a kind forwards are written as lines.

The streams are looked up at each write, so ``contextlib.redirect_stdout`` and pytest's
capture see the output, and each write is flushed. ``log_dir`` gets a copy in every mode
(the kind writes it).
"""

from __future__ import annotations

import asyncio
import codecs
import sys
import time
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Literal

from .._spawn import split_lines
from .._types import WorkerLogEvent

if TYPE_CHECKING:
    from .._events import EventBus
    from .._log import Logger
    from .._options import WorkerOutput

__all__ = ["pass_through", "route_line", "write_through"]

#: Bytes read from a worker's pipe at a time.
_CHUNK = 64 * 1024


def write_through(stream: str, text: str) -> None:
    """Write ``text`` to our own ``sys.stderr`` (``stream`` ``"stderr"``) or ``sys.stdout``
    as they are now, and flush.

    Never raises: a stream that is missing, closed or no longer read loses ``text``; a
    character its encoding cannot hold is replaced.
    """
    target = sys.stderr if stream == "stderr" else sys.stdout
    if target is None:  # no console (pythonw)
        return
    try:
        try:
            target.write(text)
        except UnicodeEncodeError:
            encoding = getattr(target, "encoding", None) or "ascii"
            target.write(text.encode(encoding, "replace").decode(encoding, "replace"))
        target.flush()
    except (OSError, ValueError):  # closed, or a broken pipe: nobody reads it any more
        pass


async def pass_through(reader: asyncio.StreamReader, stream: str, logfile: IO[str] | None, prefix: str) -> None:
    """Until EOF: each chunk of ``reader`` as it arrives to :func:`write_through`, decoded
    incrementally (a character split between two reads stays whole, undecodable bytes are
    replaced); complete lines, ``prefix`` first, to ``logfile`` when given."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending = bytearray()
    while True:
        chunk = await reader.read(_CHUNK)
        text = decoder.decode(chunk, final=not chunk)
        if text:
            write_through(stream, text)
        if logfile is not None:
            if chunk:
                pending += chunk
                lines = split_lines(pending)  # a line over MAX_LINE comes in pieces, as with "log"
            else:
                lines = [bytes(pending)] if pending else []
            for raw in lines:
                logfile.write(f"{prefix}{raw.decode('utf-8', 'replace')}\n")
        if not chunk:
            return


def route_line(
    output: WorkerOutput, log: Logger, buses: Iterable[EventBus], worker_id: int, stream: str, line: str
) -> None:
    """Route ``line``, which worker ``worker_id`` wrote to ``stream`` (``"stdout"`` or
    ``"stderr"``): per ``output``, logged on ``log`` (stderr as a warning, stdout as info)
    and/or published on ``buses`` as a ``worker.log`` event, or written through."""
    if output == "inherit":
        write_through(stream, f"{line}\n")
        return
    if output == "log":
        (log.warning if stream == "stderr" else log.info)(
            "worker output", worker_id=worker_id, stream=stream, line=line
        )
    name: Literal["stdout", "stderr"] = "stderr" if stream == "stderr" else "stdout"
    for bus in buses:
        if bus.wants("worker.log"):
            bus.emit(WorkerLogEvent(topic="worker.log", time=time.time(), worker_id=worker_id, stream=name, line=line))
