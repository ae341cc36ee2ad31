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

    python benchmarks/bench_floor.py [--loop asyncio|uvloop] [--child-loop auto|asyncio|uvloop] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import socket
import struct
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


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--echo-child":
        echo_child(int(argv[1]), argv[2])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2000, help="sequential round trips (default 2000)")
    p.add_argument("--messages", type=int, default=20000, help="pipelined messages (default 20000)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the parent's loop")
    p.add_argument("--child-loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="the child's loop")
    p.add_argument("--modes", default="floor,child,ppe", help="comma-separated: floor,child,ppe")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    rows: list[dict[str, Any]] = []
    runners: dict[str, Callable[[], Any]] = {
        "floor": lambda: _run(bench_floor(args.rounds, args.messages, args.child_loop), args.loop),
        "child": lambda: _run(bench_child(args.rounds, args.messages, args.child_loop), args.loop),
        "ppe": lambda: bench_ppe(args.rounds, args.messages),
    }
    for mode in modes:
        rows.append(runners[mode]())
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
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
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


if __name__ == "__main__":
    main()
