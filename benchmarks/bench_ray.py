"""Ray kind vs plain Ray vs the process kind, in one run (issue 13's targets).

    python benchmarks/bench_ray.py [--runs 3] [--n 2000]

Measures, on one local Ray started here (loopback, no dashboard):
- sequential round trip p50 (one call awaited at a time): ray kind, plain actor call
  (an awaited ObjectRef from asyncio), process kind;
- no-op throughput with 2 slots: ray kind (n add_task calls gathered, one call each; and
  pool.map, which sends items in chunks), plain actor calls driven the same way (2 actors,
  n calls gathered), process kind;
- start-up: a local Ray (ray.init) and a pool joining it (ready), and the driver's RSS.
Targets: round trip p50 <= 1.5x plain; throughput >= 1.0x plain; joined pool ready < 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import psutil

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def noop(x: int) -> int:
    return x


async def _rt(call, n: int) -> float:
    lat = []
    for i in range(n):
        t = time.perf_counter()
        await call(i)
        lat.append(time.perf_counter() - t)
    return statistics.median(lat) * 1e6


async def bench(n: int) -> dict[str, float]:
    import ray
    from taskpool import FunctionPool

    @ray.remote(num_cpus=0)
    class Plain:
        async def noop(self, x: int) -> int:
            return x

    out: dict[str, float] = {}
    actors = [Plain.remote() for _ in range(2)]
    await asyncio.wrap_future(actors[0].noop.remote(0).future())
    await asyncio.wrap_future(actors[1].noop.remote(0).future())
    out["plain_rt_us"] = await _rt(lambda i: asyncio.wrap_future(actors[0].noop.remote(i).future()), n // 4)
    t = time.perf_counter()
    await asyncio.gather(*[asyncio.wrap_future(actors[i % 2].noop.remote(i).future()) for i in range(n)])
    out["plain_tput"] = n / (time.perf_counter() - t)
    for a in actors:
        ray.kill(a)
    t = time.perf_counter()
    async with FunctionPool(2, worker="ray") as pool:
        out["ray_join_ready_s"] = time.perf_counter() - t
        await pool.add_task(noop, 0)
        out["ray_rt_us"] = await _rt(lambda i: pool.add_task(noop, i), n // 4)
        t = time.perf_counter()
        await asyncio.gather(*[pool.add_task(noop, i) for i in range(n)])  # one call each
        out["ray_tput"] = n / (time.perf_counter() - t)
        t = time.perf_counter()
        async for _ in pool.map(noop, range(n)):  # (map sends items in chunks)
            pass
        out["ray_map_tput"] = n / (time.perf_counter() - t)
    async with FunctionPool(2, worker="process") as pool:
        await pool.add_task(noop, 0)
        out["process_rt_us"] = await _rt(lambda i: pool.add_task(noop, i), n // 4)
        t = time.perf_counter()
        async for _ in pool.map(noop, range(n)):
            pass
        out["process_tput"] = n / (time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    import ray

    t = time.perf_counter()
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    print(
        f"local Ray start: {time.perf_counter() - t:.2f} s, driver RSS {psutil.Process().memory_info().rss >> 20} MiB"
    )
    ray_rss = sum(p.memory_info().rss for p in psutil.Process().children(recursive=True)) >> 20
    print(f"local Ray processes RSS: {ray_rss} MiB")
    runs = [asyncio.run(bench(args.n)) for _ in range(args.runs)]
    for key in runs[0]:
        vals = [r[key] for r in runs]
        print(f"{key:18s} median {statistics.median(vals):10.2f}  min {min(vals):10.2f}  max {max(vals):10.2f}")
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"round trip ray/plain: {med['ray_rt_us'] / med['plain_rt_us']:.2f}x (target <= 1.5x)")
    print(f"throughput ray/plain: {med['ray_tput'] / med['plain_tput']:.2f}x (target >= 1.0x)")
    ray.shutdown()


if __name__ == "__main__":
    main()
