"""``taskpool serve MODULE:FUNCTION``: keep a service alive, like a process manager.

Output of every instance is shown with a prefix (``api.0 | ...``) and, with
``--log-dir``, written to a file per worker. The first SIGTERM or Ctrl-C stops the
service gracefully (async instances are cancelled, then each worker gets ``--grace``
seconds before it is killed); a second Ctrl-C kills at once. Exit code: 0 when the
service ended cleanly, 1 when its restart limit was spent, 130 when forced.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TextIO

from ._pool import FunctionPool
from ._restart import RestartPolicy
from ._types import ServiceEvent, WorkerLogEvent

__all__ = ["resolve_target", "serve"]


def resolve_target(target: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` (the current directory is importable).

    Raises:
        ValueError: ``target`` is not ``MODULE:FUNCTION``.
        ImportError: the module cannot be imported.
        AttributeError: the module has no such function.
        TypeError: the attribute is not callable.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected MODULE:FUNCTION, got {target!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is not callable")
    return obj  # type: ignore[no-any-return]


async def serve(
    target: str,
    *,
    instances: int = 1,
    restart: RestartPolicy,
    log_dir: str | None = None,
    grace: float = 5.0,
    worker: str = "process",
    out: TextIO | None = None,
) -> int:
    """Run ``target`` as a kept-alive service until it ends or a signal stops it.

    Returns the process exit code (0 clean, 1 broken, 130 forced).
    """
    out = out or sys.stdout
    fn = resolve_target(target)
    name = target.rpartition(":")[2]
    loop = asyncio.get_running_loop()
    forced = False

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    async with FunctionPool(1, worker="inline", name="serve", log_dir=log_dir) as pool:
        async with pool.events.subscribe("service.*", "worker.log", maxsize=100_000) as sub:
            service = pool.keep_alive(
                fn, name=name, instances=instances, restart=restart, worker=worker, grace=grace
            )
            base = service._pool._sched.slots[0].id
            signals = 0

            def on_signal(signum: int) -> None:
                nonlocal signals, forced
                signals += 1
                if signals == 1:
                    say(f"[taskpool] {signal.Signals(signum).name}: stopping {name} (grace {grace} s)")
                    pool._tg.start_soon(service.stop)  # type: ignore[union-attr]
                else:
                    forced = True
                    say("[taskpool] second signal: killing now")
                    pool._tg.start_soon(lambda: service.stop(grace=0.0))  # type: ignore[union-attr]

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal, sig)
            try:
                waiter = asyncio.ensure_future(service.wait())
                async for event in _until(sub, waiter):
                    if isinstance(event, WorkerLogEvent):
                        say(f"{name}.{event.worker_id - base} | {event.line}")
                    elif isinstance(event, ServiceEvent) and event.instance >= 0:
                        extra = f" ({event.reason})" if event.reason else ""
                        if event.topic == "service.restarted":
                            extra = f" after {event.delay:.2f} s, attempt {event.attempt}{extra}"
                        say(f"[taskpool] {name}.{event.instance} {event.topic.split('.')[1]}{extra}")
                await waiter
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
    if forced:
        return 130
    return 1 if service.state == "broken" else 0


async def _until(sub: Any, done: asyncio.Future[None]) -> Any:
    """Events from ``sub`` until ``done`` completes (then the ones still buffered)."""
    while not done.done():
        nxt = asyncio.ensure_future(sub.__anext__())
        finished, _ = await asyncio.wait({nxt, done}, return_when=asyncio.FIRST_COMPLETED)
        if nxt in finished:
            try:
                yield nxt.result()
            except StopAsyncIteration:
                return
        else:
            nxt.cancel()
            try:
                await nxt
            except (asyncio.CancelledError, StopAsyncIteration):
                pass
    while (event := sub.get_nowait()) is not None:
        yield event
