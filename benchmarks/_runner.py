"""Child entry point: ``python -m benchmarks._runner SPEC.json``.

Runs one (workload, peer) pair in this fresh interpreter: imports ``spec["target"]``
(``"module:function"``, an ``async def f(params) -> dict``), runs it on the chosen event
loop, then checks that the peer left no child process behind, and writes
``{"status", "data", "detail", "leaked"}`` to ``spec["out"]``.

Spawned workers re-import this module as ``__mp_main__``; everything happens under
the ``__main__`` guard, so that import does nothing.
"""

from __future__ import annotations

import asyncio
import faulthandler
import importlib
import json
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from benchmarks._harness import NotApplicable, leftover_children


def run_on_loop(coro: Coroutine[Any, Any, dict[str, Any]], loop: str) -> dict[str, Any]:
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    with asyncio.Runner() as runner:
        return runner.run(coro)


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    module_name, _, func_name = spec["target"].partition(":")
    result: dict[str, Any]
    try:
        func: Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]
        func = getattr(importlib.import_module(module_name), func_name)
        data = run_on_loop(func(spec["params"]), spec["loop"])
        result = {"status": "ok", "data": data}
    except NotApplicable as exc:
        result = {"status": "n/a", "detail": str(exc)}
    except BaseException as exc:  # every failure is a result to report
        traceback.print_exc()
        result = {"status": "error", "detail": f"{type(exc).__name__}: {exc}"[:300]}
    # The peer was shut down (and the loop closed): its workers must be gone by now.
    result["leaked"] = leftover_children()
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
