"""Prometheus metrics of a pool, through ``prometheus_client`` (the ``taskpool[web]`` extra).

::

    from prometheus_client import start_http_server
    import taskpool.metrics

    async with FunctionPool(4, name="render") as pool:
        taskpool.metrics.collector(pool)      # registered with prometheus_client's REGISTRY
        start_http_server(9100)               # or mount taskpool.web.status_app(pool): /metrics

Every label is bounded: ``pool`` (the pool's name), ``outcome`` (succeeded, failed,
cancelled), ``state`` (the worker states), ``reason`` (a fixed set, see
:func:`taskpool._recorder.restart_reason`) and ``worker`` (worker ids, at most the pool's
size plus its persistent workers and services). Values are read when scraped, in the
pool's event loop, so a scrape from prometheus_client's own HTTP thread is safe.
Histograms count tasks settled since the first viewer (a collector or a status app)
attached to the pool; counters of outcomes count from the pool's start.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.registry import Collector
except ImportError as _missing:  # pragma: no cover - exercised without the extra
    raise ImportError("taskpool.metrics needs prometheus_client: pip install 'taskpool[web]'") from _missing

from ._recorder import BUCKETS
from ._status import worker_snapshots
from ._types import WorkerState
from .web._report import attach_recorder

if TYPE_CHECKING:
    from taskpool import FunctionPool

    from ._core import PoolCore

__all__ = ["PoolCollector", "collector", "render"]

#: Seconds a scrape from another thread waits for the pool's loop.
SCRAPE_WAIT = 2.0


class PoolCollector(Collector):
    """A ``prometheus_client`` collector of one pool's metrics (see the module docstring)."""

    def __init__(self, pool: FunctionPool) -> None:
        from taskpool import FunctionPool

        if not isinstance(pool, FunctionPool):
            raise TypeError(f"collector() needs a FunctionPool, got {type(pool).__name__}")
        self._core: PoolCore = pool._core
        self.pool_name: str = pool.name
        self._recorder = attach_recorder(self._core)

    def _read(self) -> dict[str, Any]:
        core = self._core
        sched = core.sched
        rec = attach_recorder(core)
        rec.catch_up()
        now = time.time()
        workers = worker_snapshots(core, now)
        return {
            "outcomes": {"succeeded": sched.n_succeeded, "failed": sched.n_failed, "cancelled": sched.n_cancelled},
            "run": (rec.run.cumulative(), rec.run.total),
            "wait": (rec.wait.cumulative(), rec.wait.total),
            "queue_depth": sched.n_queued,
            "oldest": rec.oldest_queued_age(now),
            "states": [w.state for w in workers],
            "util": [(w.id, w.utilisation) for w in workers],
            "restarts": dict(rec.restarts),
        }

    def _values(self) -> dict[str, Any]:
        # The pool's bookkeeping belongs to its loop: read it there when scraped elsewhere.
        loop = self._core.loop
        if loop is None or not loop.is_running() or self._core._loop_thread in (None, threading.get_ident()):
            return self._read()
        fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def read() -> None:
            try:
                fut.set_result(self._read())
            except BaseException as exc:  # handed to the scraping thread
                fut.set_exception(exc)

        try:
            loop.call_soon_threadsafe(read)
        except RuntimeError:  # the loop closed meanwhile
            return self._read()
        return fut.result(SCRAPE_WAIT)

    def describe(self) -> Iterator[Any]:
        """The metric names, without values (lets a registry refuse a second pool's duplicates)."""
        yield CounterMetricFamily("taskpool_tasks", "Tasks settled, by outcome.", labels=["pool", "outcome"])
        for metric in ("taskpool_task_run_seconds", "taskpool_task_wait_seconds"):
            yield HistogramMetricFamily(metric, "", labels=["pool"])
        for metric in ("taskpool_queue_depth", "taskpool_queue_oldest_age_seconds"):
            yield GaugeMetricFamily(metric, "", labels=["pool"])
        yield GaugeMetricFamily("taskpool_workers", "", labels=["pool", "state"])
        yield GaugeMetricFamily("taskpool_worker_utilisation", "", labels=["pool", "worker"])
        yield CounterMetricFamily("taskpool_worker_restarts", "", labels=["pool", "reason"])

    def collect(self) -> Iterator[Any]:
        """Yield the metric families (called by ``prometheus_client`` on each scrape)."""
        v = self._values()
        name = self.pool_name
        tasks = CounterMetricFamily("taskpool_tasks", "Tasks settled, by outcome.", labels=["pool", "outcome"])
        for outcome, n in v["outcomes"].items():
            tasks.add_metric([name, outcome], n)
        yield tasks
        for key, metric, doc in (
            ("run", "taskpool_task_run_seconds", "Run time of each task, measured in the worker."),
            ("wait", "taskpool_task_wait_seconds", "Time from being added to being started in a worker."),
        ):
            cum, total = v[key]
            hist = HistogramMetricFamily(metric, doc, labels=["pool"])
            buckets = [(_le(b), c) for b, c in zip(BUCKETS, cum, strict=False)] + [("+Inf", cum[-1])]
            hist.add_metric([name], buckets, total)
            yield hist
        yield _gauge(
            "taskpool_queue_depth", "Tasks in the pool's queue (not handed to a worker).", name, v["queue_depth"]
        )
        yield _gauge(
            "taskpool_queue_oldest_age_seconds", "How long the oldest queued task has waited.", name, v["oldest"]
        )
        workers = GaugeMetricFamily("taskpool_workers", "Workers by state.", labels=["pool", "state"])
        for state in WorkerState:
            workers.add_metric([name, state.value], sum(1 for s in v["states"] if s == state.value))
        yield workers
        util = GaugeMetricFamily(
            "taskpool_worker_utilisation", "Busy share of the last 10 s, per worker (0-1).", labels=["pool", "worker"]
        )
        for wid, u in v["util"]:
            util.add_metric([name, str(wid)], u)
        yield util
        restarts = CounterMetricFamily(
            "taskpool_worker_restarts", "Workers replaced, by reason.", labels=["pool", "reason"]
        )
        for reason, n in sorted(v["restarts"].items()):
            restarts.add_metric([name, reason], n)
        yield restarts


def _gauge(metric: str, doc: str, pool: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(metric, doc, labels=["pool"])
    g.add_metric([pool], value)
    return g


def _le(bound: float) -> str:
    return repr(float(bound))


def collector(pool: FunctionPool, registry: CollectorRegistry | None = None) -> PoolCollector:
    """Register ``pool``'s metrics with ``registry`` (prometheus_client's ``REGISTRY`` by default).

    Returns the collector, so it can be unregistered (``registry.unregister(c)``) when
    the pool is gone.

    Raises:
        TypeError: ``pool`` is not a ``FunctionPool``.
        ValueError: the registry already has metrics of these names (two pools in one
            registry: give each a registry of its own, or use the status app's ``/metrics``).
    """
    c = PoolCollector(pool)
    (REGISTRY if registry is None else registry).register(c)
    return c


_registries: weakref.WeakKeyDictionary[Any, CollectorRegistry] = weakref.WeakKeyDictionary()


def render(pool: object) -> bytes:
    """``pool``'s metrics in the Prometheus text format (what ``/metrics`` serves)."""
    registry = _registries.get(pool)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(PoolCollector(pool))  # type: ignore[arg-type]  # a status app's pool
        _registries[pool] = registry
    return generate_latest(registry)
