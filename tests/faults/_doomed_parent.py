"""A pool's parent process that the test SIGKILLs while its workers are busy.

Run as a script (``python _doomed_parent.py sync|async``): starts ``FunctionPool(2,
worker="process")``, gives both workers a long task, prints ``PIDS [pid, pid]`` once both
tasks started, then waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from taskpool import FunctionPool


async def main(kind: str) -> None:
    fn = time.sleep if kind == "sync" else asyncio.sleep
    async with FunctionPool(2, worker="process") as pool:
        async with pool.events.subscribe("task.started") as sub:
            for _ in range(2):
                pool.add_task(fn, 600)
            for _ in range(2):
                await anext(sub)
        pids = [w.pid for w in pool.snapshot().workers]
        print("PIDS", json.dumps(pids), flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
