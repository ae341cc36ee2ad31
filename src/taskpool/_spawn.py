"""Starting a worker process (the parent side of :mod:`taskpool._child`).

What :func:`spawn_child` does::

    parent_sock, child_sock = socket.socketpair()
    argv = child_command(child_sock.fileno())        # python -c BOOTSTRAP --fd N --ppid P
    proc = await asyncio.create_subprocess_exec(
        *argv, pass_fds=(child_sock.fileno(),), env=child_env(), cwd=os.getcwd(),
        stdin=DEVNULL, stdout=PIPE, stderr=PIPE)
    child_sock.close()
    _, proto = await loop.connect_accepted_socket(factory, parent_sock)
    # first message from the child: Hello(pid, python, uvloop)

- The parent's ``sys.path`` travels in the environment variable ``TASKPOOL_SYS_PATH``
  (JSON list, removed from ``os.environ`` before user code runs); the bootstrap installs
  it before importing taskpool, so the child imports exactly what the parent would. The
  rest of the environment and the working directory are the parent's (``child_env``,
  ``cwd``); interpreter flags (``-O``, ``-X dev``, ``-W ...``) are passed on too.
- The channel fd is inherited (``pass_fds``); ``--ppid`` is the parent's pid. So are
  the control block (``--control-fd``), the worker's setup (``--setup-fd``: the
  authentication key, the initializer; see ``_init``) and the fds its initializer's
  arguments need, under the numbers they have here.
- Lifetime: on Linux the child asks for SIGKILL when its parent dies
  (``PR_SET_PDEATHSIG``; note that Linux delivers it when the parent *thread* that
  spawned the child exits, so spawn from the thread running the pool's loop) and exits
  at once if the parent is already gone. Everywhere, EOF on the channel makes it exit.
  SIGINT is ignored: Ctrl-C goes to the whole process group, and the pool decides.
- stdout and stderr are the parent's pipes, line-buffered. :func:`read_lines` reads one
  in chunks and splits it into lines itself (``StreamReader.readline()`` drops data after
  a line over its limit): a line longer than :data:`MAX_LINE` bytes comes in pieces, so
  every byte arrives, in order, in bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

__all__ = ["MAX_LINE", "SYS_PATH_ENV", "child_command", "child_env", "read_lines", "spawn_child", "split_lines"]

SYS_PATH_ENV = "TASKPOOL_SYS_PATH"
# Runs as ``python -c``: installs the parent's sys.path before anything is imported.
_BOOTSTRAP = (
    "import json,os,sys;"
    f"p=os.environ.pop({SYS_PATH_ENV!r},None);"
    "sys.path[:]=json.loads(p) if p else sys.path;"
    "from taskpool._worker_main import main;main()"
)

P = TypeVar("P", bound=asyncio.BaseProtocol)

#: Longest line of output passed on whole, in bytes; a longer one comes in pieces.
MAX_LINE = 64 * 1024
_READ_CHUNK = 64 * 1024  # bytes read from a pipe at a time
_LINES_PER_TURN = 256  # lines handled before the reader lets the loop run other work


# --------------------------------------------------------------------------- parent side


def child_command(
    fd: int,
    *,
    parent_pid: int | None = None,
    loop: str = "auto",
    executable: str | None = None,
    concurrency: int = 1,
    max_message: int | None = None,
    control_fd: int | None = None,
    setup_fd: int | None = None,
) -> list[str]:
    """The argv that starts a worker serving on inherited fd ``fd``.

    ``loop`` is ``"auto"`` (uvloop when importable), ``"uvloop"`` or ``"asyncio"``;
    ``max_message`` is the largest message the parent accepts (None: no bound);
    ``control_fd`` an inherited fd of the pool's control counter (see ``_control``);
    ``setup_fd`` an inherited fd of the worker's setup (see ``_init``).
    Raises ValueError for another ``loop``.
    """
    if loop not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"loop must be 'auto', 'uvloop' or 'asyncio', got {loop!r}")
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    ppid = os.getpid() if parent_pid is None else parent_pid
    options = ["--fd", str(fd), "--ppid", str(ppid), "--loop", loop, "--concurrency", str(concurrency)]
    if max_message is not None:
        options += ["--max-message", str(max_message)]
    if control_fd is not None:
        options += ["--control-fd", str(control_fd)]
    if setup_fd is not None:
        options += ["--setup-fd", str(setup_fd)]
    return [executable or sys.executable, *flags, "-c", _BOOTSTRAP, *options]


def child_env(env: Mapping[str, str] | None = None, *, sys_path: Sequence[str] | None = None) -> dict[str, str]:
    """The environment for a worker: ``env`` (default: this process's) plus this
    process's ``sys.path`` (or ``sys_path``) for the bootstrap."""
    out = dict(os.environ if env is None else env)
    out[SYS_PATH_ENV] = json.dumps(list(sys.path if sys_path is None else sys_path))
    return out


async def spawn_child(
    protocol_factory: Callable[[], P],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    loop: str = "auto",
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE,
    concurrency: int = 1,
    max_message: int | None = None,
    control_fd: int | None = None,
    setup_fd: int | None = None,
    pass_fds: Sequence[int] = (),
) -> tuple[asyncio.subprocess.Process, P]:
    """Start a worker and connect ``protocol_factory()`` to its channel.

    Returns the process (its ``stdout``/``stderr`` are StreamReaders when piped) and the
    connected protocol; the worker's first frame will be :class:`~taskpool._wire.Hello`.
    ``max_message``: the largest message the worker may send (it refuses bigger ones
    with a SerializationError); ``control_fd``: the shared control counter's fd, inherited
    by the worker; ``setup_fd``: its setup (``_init.write_setup``); ``pass_fds``: more
    fds it inherits, under the same numbers (what its initializer's arguments need).
    On failure nothing is left running; raises what spawning
    or connecting raised (OSError when the interpreter cannot be started).
    """
    parent_sock, child_sock = socket.socketpair()
    inherited = [child_sock.fileno(), *(fd for fd in (control_fd, setup_fd) if fd is not None), *pass_fds]
    try:
        proc = await asyncio.create_subprocess_exec(
            *child_command(
                child_sock.fileno(),
                loop=loop,
                concurrency=concurrency,
                max_message=max_message,
                control_fd=control_fd,
                setup_fd=setup_fd,
            ),
            pass_fds=inherited,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=child_env(env),
            cwd=os.getcwd() if cwd is None else cwd,
        )
    except BaseException:
        parent_sock.close()
        raise
    finally:
        child_sock.close()
    try:
        _, proto = await asyncio.get_running_loop().connect_accepted_socket(protocol_factory, parent_sock)
    except BaseException:
        parent_sock.close()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc, proto


# --------------------------------------------------------------------------- output


async def read_lines(stream: asyncio.StreamReader, on_line: Callable[[str], None], limit: int = MAX_LINE) -> None:
    """Call ``on_line`` with each line of ``stream`` (UTF-8, undecodable bytes replaced,
    without its line ending) until EOF; a line over ``limit`` bytes comes in pieces of at
    most ``limit`` (see :func:`split_lines`), a last line without a newline too. Raises
    what ``on_line`` raises."""
    pending = bytearray()
    done = 0
    while True:
        chunk = await stream.read(_READ_CHUNK)
        if chunk:
            pending += chunk
            lines = split_lines(pending, limit)
        else:
            lines = [bytes(pending)] if pending else []
        for raw in lines:
            on_line(raw.decode("utf-8", "replace"))
            done += 1
            if done % _LINES_PER_TURN == 0:
                # A flood of short lines must not hold the loop: let it serve the rest.
                await asyncio.sleep(0)
        if not chunk:
            return


def split_lines(buf: bytearray, limit: int = MAX_LINE) -> list[bytes]:
    """Take the complete lines out of ``buf`` (output read so far), in order.

    A line loses its ``\\n`` (and a ``\\r`` before it); one longer than ``limit`` bytes
    comes out in pieces of at most ``limit``, cut between UTF-8 characters, so the pieces
    joined are exactly the bytes written. What stays in ``buf`` is the start of a line,
    at most ``limit`` bytes.
    """
    out: list[bytes] = []
    pos, n = 0, len(buf)
    while pos < n:
        nl = buf.find(b"\n", pos, pos + limit + 1)
        if nl >= 0:
            end = nl - 1 if nl > pos and buf[nl - 1] == 0x0D else nl
            out.append(bytes(buf[pos:end]))
            pos = nl + 1
        elif n - pos > limit:
            cut = pos + limit
            while cut > pos + limit - 3 and buf[cut] & 0xC0 == 0x80:  # inside a character
                cut -= 1
            out.append(bytes(buf[pos:cut]))
            pos = cut
        else:
            break
    del buf[:pos]
    return out
