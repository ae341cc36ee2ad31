"""One local Ray shared by a test session (the kind matrix on ``ray`` and tests/ray).

Ray starts slowly (2-8 s), so it is started once, before the first test, on the main
thread (Ray's processes die with the thread that started them), and every pool of the
session uses it: a pool finds Ray connected already and never stops it. The leak check
(tests/conftest.py) tolerates this Ray's processes and the workers they start, and
nothing else.
"""

from __future__ import annotations

import os

import psutil

#: Whether the session asked for Ray: ``TASKPOOL_TEST_KINDS`` names it, or ``-m ray``.
WANTED_ENV = "TASKPOOL_TEST_KINDS"
#: Logical CPUs of the shared Ray: pools of the suite reach 8 workers; CPUs are not real.
CPUS = 16

_roots: set[int] = set()
_address: str | None = None


def kinds_want_ray() -> bool:
    """Whether ``$TASKPOOL_TEST_KINDS`` includes ``ray``."""
    return "ray" in os.environ.get(WANTED_ENV, "").split(",")


def start() -> str:
    """Start the shared local Ray (once) and connect this process; its GCS address."""
    global _address
    if _address is not None:
        return _address
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    ctx = ray.init(
        address="local",
        num_cpus=CPUS,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    _roots.update(p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before)
    _address = str(ctx.address_info["gcs_address"])
    return _address


def stop() -> None:
    """Stop the shared Ray (end of session)."""
    global _address
    if _address is None:
        return
    import ray

    ray.shutdown()
    _address = None
    _roots.clear()


def is_shared(proc: psutil.Process) -> bool:
    """Whether ``proc`` belongs to the shared Ray (one of its processes, or started by one)."""
    if not _roots:
        return False
    if proc.pid in _roots:
        return True
    try:
        return any(p.pid in _roots for p in proc.parents())
    except psutil.Error:
        return False
