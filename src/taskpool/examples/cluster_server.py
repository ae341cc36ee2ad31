"""The cluster pattern: several processes serve one port, each answering with its pid.

Every instance binds the same address with ``SO_REUSEPORT``; the kernel spreads the
incoming connections over the listening sockets, so N instances in N processes serve
one port with no proxy in front (Linux, and the BSDs and macOS with their own rules).
Each connection gets a tiny HTTP/1.0 answer: ``pid <pid>``. Run it kept alive::

    taskpool serve taskpool.examples.cluster_server:main --instances 2
    curl http://127.0.0.1:8765/        # pid 4242, then pid 4243, ...

or on its own (one process): ``python -m taskpool.examples.cluster_server [PORT]``.
The port comes from the argument, else ``$TASKPOOL_CLUSTER_PORT``, else 8765; it
listens on 127.0.0.1 unless ``$TASKPOOL_CLUSTER_HOST`` says otherwise. Once listening,
an instance prints ``listening on ...`` and publishes ``cluster.listening`` (with its
pid and port) on the pool's event bus.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import taskpool

DEFAULT_PORT = 8765
PORT_ENV = "TASKPOOL_CLUSTER_PORT"
HOST_ENV = "TASKPOOL_CLUSTER_HOST"
#: Seconds a client has to send its request head before it is answered anyway.
READ_TIMEOUT = 2.0
MAX_HEAD = 16 * 1024


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the request head (or give up waiting for it), answer with our pid, close."""
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            head = b""
            while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < MAX_HEAD:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                head += chunk
    except (TimeoutError, ConnectionError):
        pass
    body = f"pid {os.getpid()}\n".encode()
    writer.write(
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    try:
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(port: int | None = None, host: str | None = None) -> None:
    """Serve until cancelled (``taskpool serve`` stops it by cancelling it).

    Raises:
        OSError: the address cannot be bound (taken without ``SO_REUSEPORT``, or the
            platform has no ``SO_REUSEPORT``).
    """
    if port is None:
        port = int(os.environ.get(PORT_ENV, DEFAULT_PORT))
    host = host or os.environ.get(HOST_ENV, "127.0.0.1")
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("SO_REUSEPORT is not available on this platform: one instance per port")
    server = await asyncio.start_server(handle, host, port, reuse_port=True)
    async with server:
        print(f"listening on http://{host}:{port}/ (pid {os.getpid()})", flush=True)
        taskpool.publish("cluster.listening", {"pid": os.getpid(), "host": host, "port": port})
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else None))
    except KeyboardInterrupt:
        pass
