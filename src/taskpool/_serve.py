"""``taskpool serve MODULE:FUNCTION``: keep a service alive, like a process manager.

::

    taskpool serve app:main --instances 2
        └─ inline pool "serve" ── keep_alive(app.main, instances=2)
              ├─ worker (process) ─ instance 0 ─ stdout/stderr ─► "main.0 | line"  (+ log file)
              └─ worker (process) ─ instance 1 ─ stdout/stderr ─► "main.1 | line"  (+ log file)

Output of every instance is shown with a prefix (``main.0 | ...``) and, with
``--log-dir``, also written to a file per worker. The first SIGTERM or Ctrl-C stops the
service gracefully (async instances are cancelled and get ``--grace`` seconds to finish
before their worker is killed; blocking ones are killed); a second one kills at once.

Exit codes: 0 when the service stopped cleanly (on a signal, or because its instances
returned and were not to be restarted), 1 when an instance's restart limit was spent or
its last run failed and was not restarted, 2 for a bad target or argument, 130 when a
second signal forced the stop.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, TextIO

from ._events import Subscription
from ._pool import FunctionPool
from ._restart import RestartPolicy
from ._types import Event, ServiceEvent, WorkerLogEvent

__all__ = ["EXIT_BAD_TARGET", "EXIT_BROKEN", "EXIT_FORCED", "EXIT_OK", "resolve_target", "serve"]

EXIT_OK = 0
EXIT_BROKEN = 1
EXIT_BAD_TARGET = 2
EXIT_FORCED = 130


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
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise TypeError(f"{target} is not callable")
    return obj  # type: ignore[no-any-return]


async def serve(
    target: str | Callable[..., Any],
    *,
    name: str | None = None,
    instances: int = 1,
    restart: RestartPolicy,
    log_dir: str | None = None,
    grace: float = 5.0,
    worker: str = "process",
    out: TextIO | None = None,
) -> int:
    """Run ``target`` as a kept-alive service until it ends or a signal stops it.

    ``target`` is ``"module:function"`` or the function itself. Returns the exit code:
    :data:`EXIT_OK`, :data:`EXIT_BROKEN` or :data:`EXIT_FORCED`.

    Raises:
        ValueError, ImportError, AttributeError, TypeError: ``target`` cannot be loaded
            (see :func:`resolve_target`).
    """
    out = out or sys.stdout
    if isinstance(target, str):
        fn = resolve_target(target)
        default_name = target.rpartition(":")[2]
    else:
        fn = target
        default_name = getattr(fn, "__name__", "service")
    name = name or default_name
    assert name is not None  # a default name always exists
    loop = asyncio.get_running_loop()
    forced = False

    def say(line: str) -> None:
        try:
            print(line, file=out, flush=True)
        except (BrokenPipeError, ValueError):  # nobody reads our output any more
            pass

    async with (
        # Worker output as events only: shown here, prefixed, and not logged a second time.
        FunctionPool(1, worker="inline", name="serve", log_dir=log_dir, worker_output="events") as pool,
        pool.events.subscribe("service.*", "worker.log", maxsize=100_000) as sub,
    ):
        service = pool.keep_alive(fn, name=name, instances=instances, restart=restart, worker=worker, grace=grace)
        base = service.first_worker_id
        where: dict[int, int] = {}  # worker id -> the instance last seen running there
        failed: dict[int, bool] = {}  # instance -> whether its last run failed
        signals = 0
        stopping: list[asyncio.Task[None]] = []  # the graceful stop (kept: never collected mid-way)

        def on_signal(signum: int) -> None:
            nonlocal signals, forced
            signals += 1
            if signals == 1:
                say(f"[taskpool] {signal.Signals(signum).name}: stopping {name} (grace {grace:g} s)")
                stopping.append(loop.create_task(service.stop()))
            elif not forced:
                forced = True
                say(f"[taskpool] {signal.Signals(signum).name} again: killing {name} now")
                service.kill()

        def instance(worker_id: int) -> int:
            i = service.instance_of(worker_id)
            if i is None:
                return where.get(worker_id, worker_id - base)
            where[worker_id] = i
            return i

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            waiter = asyncio.ensure_future(service.wait())
            async for event in _until(sub, waiter):
                if isinstance(event, WorkerLogEvent):
                    say(f"{name}.{instance(event.worker_id)} | {event.line}")
                elif isinstance(event, ServiceEvent) and event.instance >= 0:
                    what = event.topic.partition(".")[2]
                    if event.topic == "service.exited":
                        failed[event.instance] = event.reason not in ("returned", "cancelled", "stopped")
                    if event.topic == "service.restarted":
                        what += f" after {event.delay:.2f} s (attempt {event.attempt})"
                    elif event.reason:
                        what += f" ({event.reason})"
                    say(f"[taskpool] {name}.{event.instance} {what}")
            await waiter
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    if forced:
        return EXIT_FORCED
    if service.state == "broken" or service._broken:
        say(f"[taskpool] {name}: restart limit spent, giving up")
        return EXIT_BROKEN
    if any(failed.values()):
        say(f"[taskpool] {name}: ended after a failure, not restarted (--restart {restart.mode})")
        return EXIT_BROKEN
    return EXIT_OK


async def _until(sub: Subscription, done: asyncio.Future[None]) -> AsyncIterator[Event]:
    """Events from ``sub`` until ``done`` completes (then the ones still buffered)."""
    while not done.done():
        nxt: asyncio.Future[Event] = asyncio.ensure_future(anext(sub))
        both: set[asyncio.Future[Any]] = {nxt, done}
        finished, _ = await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
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
