"""The floor: what one parent <-> worker channel costs, before any pool logic.

Modes (each a row of the table):

* ``floor``   raw length-prefixed msgspec ping-pong with a minimal echo process over a
              socketpair: the best any process worker can do on this machine.
* ``child``   the same through the real worker (``taskpool._child``): ``Call`` of a
              no-op function by reference -> ``Started`` + ``Result``.
* ``ppe``     ``concurrent.futures.ProcessPoolExecutor`` with one worker, for context.

Each mode reports p50/p99 round-trip latency of a tiny message over ``--rounds``
sequential round trips, and the throughput of ``--messages`` pipelined messages (all
sent at once, then every answer awaited).

Large payloads (``--payload-mib N``, default 32; a second table): one ``bytes`` of N MiB
sent to a process and back, ``--payload-rounds`` times; median and best round trip.

* ``raw-warm``   blocking sockets, each side reading into a buffer it reuses: the most a
                 socket can do (two kernel copies per direction, no page faults).
* ``raw-fresh``  the same, reading into a fresh buffer every time (what glibc does for
                 blocks of 32 MiB or more: mmap on malloc, munmap on free): the page
                 faults alone are the difference.
* ``shm``        through one shared mapping (a memfd): the sender copies in, the
                 receiver copies out into a buffer it reuses, a byte on a socket says
                 when; the floor of a shared-memory design that hands out private
                 memory.
* ``child``      the real worker (``Call`` of ``bytes`` by reference: the echo); with
                 ``--tune`` the parent calls ``taskpool._memory.tune_malloc()`` first.
* ``ppe``        ``ProcessPoolExecutor`` with one worker, for context.

    python -m benchmarks.bench_floor [--loop asyncio|uvloop] [--child-loop auto|asyncio|uvloop] [--json]
    python -m benchmarks.bench_floor --modes none --payload-modes raw-warm,raw-fresh,shm,child,ppe [--tune]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import mmap
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from taskpool import _wire as w
from taskpool._spawn import spawn_child

HEADER = struct.Struct("<I")


class Ping(msgspec.Struct, array_like=True, tag=1):
    id: int
    data: int


class Pong(msgspec.Struct, array_like=True, tag=2):
    id: int
    data: int


# --------------------------------------------------------------------------- echo child


class EchoProtocol(asyncio.Protocol):
    """Minimal server: decode every complete frame, answer it, one write per chunk."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.buf = bytearray()
        self.done = done
        self.enc = msgspec.msgpack.Encoder()
        self.dec = msgspec.msgpack.Decoder(Ping)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out = bytearray()
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = HEADER.unpack_from(buf, pos)
            if len(buf) - pos - 4 < n:
                break
            msg = self.dec.decode(memoryview(buf)[pos + 4 : pos + 4 + n])
            pos += 4 + n
            start = len(out)
            out += b"\0\0\0\0"
            self.enc.encode_into(Pong(msg.id, msg.data), out, -1)
            HEADER.pack_into(out, start, len(out) - start - 4)
        del buf[:pos]
        if out and self.transport is not None:
            self.transport.write(out)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def echo_child(fd: int, loop_kind: str) -> None:
    async def serve() -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        await loop.connect_accepted_socket(lambda: EchoProtocol(done), socket.socket(fileno=fd))
        await done

    _run(serve(), loop_kind)


def _run(coro: Any, loop_kind: str) -> Any:
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if loop_kind in ("uvloop", "auto"):
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            if loop_kind == "uvloop":
                raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


# --------------------------------------------------------------------------- parent side


class Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.enc = msgspec.msgpack.Encoder()
        self.dec = msgspec.msgpack.Decoder(Pong)
        self.transport: asyncio.Transport | None = None
        self.waiting = 0
        self.event: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, ids: range) -> None:
        out = bytearray()
        for i in ids:
            start = len(out)
            out += b"\0\0\0\0"
            self.enc.encode_into(Ping(i, i), out, -1)
            HEADER.pack_into(out, start, len(out) - start - 4)
        self.waiting += len(ids)
        assert self.transport is not None
        self.transport.write(out)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = HEADER.unpack_from(buf, pos)
            if len(buf) - pos - 4 < n:
                break
            self.dec.decode(memoryview(buf)[pos + 4 : pos + 4 + n])
            pos += 4 + n
            self.waiting -= 1
        del buf[:pos]
        if self.waiting == 0 and self.event is not None and not self.event.done():
            self.event.set_result(None)

    async def roundtrip(self, ids: range) -> None:
        self.event = asyncio.get_running_loop().create_future()
        self.send(ids)
        await self.event


def _stats(samples_ns: list[int]) -> tuple[float, float]:
    s = sorted(samples_ns)
    return s[len(s) // 2] / 1e3, s[min(len(s) - 1, int(len(s) * 0.99))] / 1e3


async def bench_floor(rounds: int, messages: int, child_loop: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    parent_sock, child_sock = socket.socketpair()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            "--echo-child",
            str(child_sock.fileno()),
            child_loop,
            pass_fds=(child_sock.fileno(),),
        )
    finally:
        child_sock.close()
    try:
        _, client = await loop.connect_accepted_socket(Client, parent_sock)
        for i in range(200):  # warm up
            await client.roundtrip(range(i, i + 1))
        samples = []
        for i in range(rounds):
            t = time.perf_counter_ns()
            await client.roundtrip(range(i, i + 1))
            samples.append(time.perf_counter_ns() - t)
        t = time.perf_counter()
        await client.roundtrip(range(messages))
        elapsed = time.perf_counter() - t
        assert client.transport is not None
        client.transport.close()
    finally:
        await proc.wait()
    p50, p99 = _stats(samples)
    return {"mode": "floor", "p50_us": p50, "p99_us": p99, "throughput_per_s": messages / elapsed}


async def bench_child(rounds: int, messages: int, child_loop: str) -> dict[str, Any]:
    class Parent(w.FrameProtocol[w.ToParent]):
        def __init__(self) -> None:
            super().__init__(w.parent_parser())
            self.waiting = 0
            self.event: asyncio.Future[None] | None = None
            self.hello: asyncio.Future[w.ToParent] = asyncio.get_running_loop().create_future()

        def message_received(self, msg: w.ToParent) -> None:
            if type(msg) is w.Result:
                w.load_result(msg)
                self.waiting -= 1
                if self.waiting == 0 and self.event is not None and not self.event.done():
                    self.event.set_result(None)
            elif type(msg) is w.Hello:
                self.hello.set_result(msg)
            elif type(msg) is w.Error:
                raise w.rebuild_exception(msg)

    table = w.FunctionTable()

    async def roundtrip(proto: Parent, ids: range) -> None:
        proto.event = asyncio.get_running_loop().create_future()
        for i in ids:
            fn_id, define, drop = table.prepare(abs)
            fmt, data, bufs = w.dump_args((i,))
            proto.send(w.Call(i, fn_id, fmt, data, bufs, define, drop))
        proto.waiting += len(ids)
        proto.flush()
        await proto.event

    proc, proto = await spawn_child(Parent, loop=child_loop, stdout=None, stderr=None)
    try:
        await asyncio.wait_for(proto.hello, 30)
        for i in range(200):
            await roundtrip(proto, range(i, i + 1))
        samples = []
        for i in range(rounds):
            t = time.perf_counter_ns()
            await roundtrip(proto, range(i, i + 1))
            samples.append(time.perf_counter_ns() - t)
        t = time.perf_counter()
        await roundtrip(proto, range(messages))
        elapsed = time.perf_counter() - t
        assert proto.transport is not None
        proto.transport.close()
    finally:
        await proc.wait()
    p50, p99 = _stats(samples)
    return {"mode": "child", "p50_us": p50, "p99_us": p99, "throughput_per_s": messages / elapsed}


def bench_ppe(rounds: int, messages: int) -> dict[str, Any]:
    with concurrent.futures.ProcessPoolExecutor(1) as ex:
        for i in range(200):
            ex.submit(abs, i).result()
        samples = []
        for i in range(rounds):
            t = time.perf_counter_ns()
            ex.submit(abs, i).result()
            samples.append(time.perf_counter_ns() - t)
        t = time.perf_counter()
        futures = [ex.submit(abs, i) for i in range(messages)]
        for f in futures:
            f.result()
        elapsed = time.perf_counter() - t
    p50, p99 = _stats(samples)
    return {"mode": "ppe", "p50_us": p50, "p99_us": p99, "throughput_per_s": messages / elapsed}


# --------------------------------------------------------------------------- large payloads


def _recv_exactly(sock: socket.socket, view: memoryview) -> None:
    pos, n = 0, view.nbytes
    while pos < n:
        k = sock.recv_into(view[pos:])
        if not k:
            raise EOFError
        pos += k


def raw_echo_child(fd: int, size: int, fresh: bool) -> None:
    """Blocking echo of ``size``-byte messages (raw-warm / raw-fresh)."""
    sock = socket.socket(fileno=fd)
    buf = bytearray(size)
    try:
        while True:
            if fresh:
                buf = bytearray(size)
            with memoryview(buf) as v:
                _recv_exactly(sock, v)
            sock.sendall(buf)
    except (EOFError, ConnectionError):
        pass


def shm_echo_child(fd: int, shm_fd: int, size: int) -> None:
    """Wait for a byte, copy the shared mapping out and back in, answer a byte (shm)."""
    sock = socket.socket(fileno=fd)
    shared = mmap.mmap(shm_fd, size)
    buf = bytearray(size)
    # memoryview slices: plain memcpy (bytearray[:] = mmap would copy through a temporary)
    own, window = memoryview(buf), memoryview(shared)
    try:
        while sock.recv(1):
            own[:] = window  # out: private memory the task could keep
            window[:] = own  # and back: the result
            sock.sendall(b"r")
    except ConnectionError:
        pass


def _spawn_helper(*args: object, pass_fds: tuple[int, ...]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *map(str, args)],
        pass_fds=pass_fds,
    )


def _timed(rounds: int, once: Callable[[], None]) -> dict[str, float]:
    once()  # warm up
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        once()
        samples.append(time.perf_counter() - t)
    return {"median_ms": statistics.median(samples) * 1e3, "best_ms": min(samples) * 1e3}


def bench_raw_payload(mib: int, rounds: int, fresh: bool) -> dict[str, Any]:
    size = mib * 2**20
    parent, child = socket.socketpair()
    proc = _spawn_helper("--raw-echo-child", child.fileno(), size, int(fresh), pass_fds=(child.fileno(),))
    child.close()
    data = b"\x5a" * size
    back = bytearray(size)

    def once() -> None:
        nonlocal back
        parent.sendall(data)  # the child reads as it comes
        if fresh:
            back = bytearray(size)
        with memoryview(back) as v:
            _recv_exactly(parent, v)

    try:
        stats = _timed(rounds, once)
    finally:
        parent.close()
        proc.wait()
    return {"mode": "raw-fresh" if fresh else "raw-warm", **stats}


def bench_shm_payload(mib: int, rounds: int) -> dict[str, Any]:
    size = mib * 2**20
    shm_fd = os.memfd_create("bench-floor-payload")
    os.ftruncate(shm_fd, size)
    shared = mmap.mmap(shm_fd, size)
    parent, child = socket.socketpair()
    proc = _spawn_helper("--shm-echo-child", child.fileno(), shm_fd, size, pass_fds=(child.fileno(), shm_fd))
    child.close()
    data = b"\x5a" * size
    back = memoryview(bytearray(size))
    window = memoryview(shared)

    def once() -> None:
        window[:] = data
        parent.sendall(b"c")
        if parent.recv(1) != b"r":
            raise EOFError
        back[:] = window

    try:
        stats = _timed(rounds, once)
    finally:
        parent.close()
        proc.wait()
        window.release()
        shared.close()
        os.close(shm_fd)
    return {"mode": "shm", **stats}


async def bench_child_payload(mib: int, rounds: int, child_loop: str, tune: bool) -> dict[str, Any]:
    if tune:
        from taskpool import _memory

        _memory.tune_malloc()
    loop = asyncio.get_running_loop()

    class Parent(w.FrameProtocol[w.ToParent]):
        def __init__(self) -> None:
            super().__init__(w.parent_parser())
            self.answer: asyncio.Future[Any] | None = None
            self.hello: asyncio.Future[w.ToParent] = loop.create_future()

        def message_received(self, msg: w.ToParent) -> None:
            if type(msg) is w.Result:
                assert self.answer is not None
                self.answer.set_result(w.load_result(msg))
            elif type(msg) is w.Hello:
                self.hello.set_result(msg)
            elif type(msg) is w.Error:
                assert self.answer is not None
                self.answer.set_exception(w.rebuild_exception(msg))

    size = mib * 2**20
    data = b"\x5a" * size
    table = w.FunctionTable()
    proc, proto = await spawn_child(Parent, loop=child_loop, stdout=None, stderr=None)

    async def once(i: int) -> None:
        proto.answer = loop.create_future()
        fn_id, define, drop = table.prepare(bytes)  # bytes(b) is b: an echo
        fmt, payload, bufs = w.dump_args((data,))
        proto.send(w.Call(i, fn_id, fmt, payload, bufs, define, drop))
        proto.flush()
        out = await proto.answer
        if len(out) != size:
            raise AssertionError(f"echoed {len(out)} bytes of {size}")

    try:
        await asyncio.wait_for(proto.hello, 30)
        await once(0)
        samples = []
        for i in range(rounds):
            t = time.perf_counter()
            await once(i + 1)
            samples.append(time.perf_counter() - t)
        assert proto.transport is not None
        proto.transport.close()
    finally:
        await proc.wait()
    mode = "child+tune" if tune else "child"
    return {"mode": mode, "median_ms": statistics.median(samples) * 1e3, "best_ms": min(samples) * 1e3}


def bench_ppe_payload(mib: int, rounds: int) -> dict[str, Any]:
    data = b"\x5a" * (mib * 2**20)
    with concurrent.futures.ProcessPoolExecutor(1) as ex:
        stats = _timed(rounds, lambda: ex.submit(bytes, data).result() and None)
    return {"mode": "ppe", **stats}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--echo-child":
        echo_child(int(argv[1]), argv[2])
        return
    if argv and argv[0] == "--raw-echo-child":
        raw_echo_child(int(argv[1]), int(argv[2]), argv[3] == "1")
        return
    if argv and argv[0] == "--shm-echo-child":
        shm_echo_child(int(argv[1]), int(argv[2]), int(argv[3]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2000, help="sequential round trips (default 2000)")
    p.add_argument("--messages", type=int, default=20000, help="pipelined messages (default 20000)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the parent's loop")
    p.add_argument("--child-loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="the child's loop")
    p.add_argument("--modes", default="floor,child,ppe", help="comma-separated: floor,child,ppe (or none)")
    p.add_argument("--payload-mib", type=int, default=32, help="large payload size in MiB (default 32)")
    p.add_argument("--payload-rounds", type=int, default=10, help="large payload round trips (default 10)")
    p.add_argument(
        "--payload-modes",
        default="",
        help="comma-separated: raw-warm,raw-fresh,shm,child,ppe (default: none)",
    )
    p.add_argument("--tune", action="store_true", help="payload mode child: tune the parent's malloc first")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m and m != "none"]
    rows: list[dict[str, Any]] = []
    runners: dict[str, Callable[[], Any]] = {
        "floor": lambda: _run(bench_floor(args.rounds, args.messages, args.child_loop), args.loop),
        "child": lambda: _run(bench_child(args.rounds, args.messages, args.child_loop), args.loop),
        "ppe": lambda: bench_ppe(args.rounds, args.messages),
    }
    for mode in modes:
        rows.append(runners[mode]())
    mib, prounds = args.payload_mib, args.payload_rounds
    payload_runners: dict[str, Callable[[], Any]] = {
        "raw-warm": lambda: bench_raw_payload(mib, prounds, fresh=False),
        "raw-fresh": lambda: bench_raw_payload(mib, prounds, fresh=True),
        "shm": lambda: bench_shm_payload(mib, prounds),
        "child": lambda: _run(bench_child_payload(mib, prounds, args.child_loop, args.tune), args.loop),
        "ppe": lambda: bench_ppe_payload(mib, prounds),
    }
    payload_rows = [payload_runners[m]() for m in args.payload_modes.split(",") if m]
    floor = next((r for r in rows if r["mode"] == "floor"), None)
    for r in rows:
        if floor is not None:
            r["p50_vs_floor"] = r["p50_us"] / floor["p50_us"]
            r["throughput_vs_floor"] = r["throughput_per_s"] / floor["throughput_per_s"]
    meta = {
        "python": sys.version.split()[0],
        "parent_loop": args.loop,
        "child_loop": args.child_loop,
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "messages": args.messages,
    }
    meta["payload_mib"] = mib
    meta["payload_rounds"] = prounds
    if args.json:
        print(json.dumps({"meta": meta, "results": rows, "payload": payload_rows}, indent=2))
        return
    print(
        f"python {meta['python']}, parent loop {args.loop}, child loop {args.child_loop}, "
        f"{meta['cpus']} CPUs; {args.rounds} round trips, {args.messages} pipelined"
    )
    print(f"{'mode':<7} {'p50 µs':>9} {'p99 µs':>9} {'msgs/s':>11} {'p50/floor':>10} {'thr/floor':>10}")
    for r in rows:
        print(
            f"{r['mode']:<7} {r['p50_us']:>9.1f} {r['p99_us']:>9.1f} {r['throughput_per_s']:>11,.0f}"
            f" {r.get('p50_vs_floor', float('nan')):>10.2f} {r.get('throughput_vs_floor', float('nan')):>10.2f}"
        )

    if payload_rows:
        print(f"\n{mib} MiB bytes there and back, {prounds} round trips")
        print(f"{'mode':<11} {'median ms':>10} {'best ms':>9}")
        for r in payload_rows:
            print(f"{r['mode']:<11} {r['median_ms']:>10.1f} {r['best_ms']:>9.1f}")


if __name__ == "__main__":
    main()
