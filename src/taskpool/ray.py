"""``worker="ray"``: each worker of a pool is a Ray actor (install with ``taskpool[ray]``).

``FunctionPool(pool_size=N, worker="ray")`` takes its Ray settings from the environment
(:meth:`RayWorkers.from_env`); ``worker=RayWorkers(...)`` states them. Importing this
module does not import Ray: only starting a Ray worker does.

Where the workers run:

* ``address=None`` (and ``$TASKPOOL_RAY_ADDRESS`` unset): a private local Ray is started
  for the pool (``ray.init(address="local")``: never a cluster found through
  ``$RAY_ADDRESS`` or a running ``ray start``) and stopped once the pool closed. Pools of
  one process share it. A Ray the application connected to itself (``ray.init`` before
  the pool) is used as is and never stopped.
* ``address="auto"`` or ``"host:port"`` (or ``$TASKPOOL_RAY_ADDRESS``): join that cluster;
  the pool never stops it.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

__all__ = ["ADDRESS_ENV", "RayWorkers"]

#: The environment variable naming a Ray cluster to join when ``address`` is None.
ADDRESS_ENV = "TASKPOOL_RAY_ADDRESS"


class RayWorkers(msgspec.Struct, frozen=True, kw_only=True):
    """How a pool's Ray workers are placed: ``FunctionPool(worker=RayWorkers(...))``.

    Attributes:
        address: None starts a private local Ray (unless ``$TASKPOOL_RAY_ADDRESS`` names
            one); ``"auto"`` or ``"host:port"`` joins an existing cluster, never stopped.
        num_cpus: CPUs each worker actor reserves (fractions allowed; 0 reserves none).
        resources: custom Ray resources each worker actor reserves.
        runtime_env: Ray's ``runtime_env`` for the worker actors (``pip``, ``py_modules``,
            ``working_dir``, ``env_vars``): what the nodes lack of your code.
        kind: the registered worker kind these settings are for (``"ray"``).
    """

    address: str | None = None
    num_cpus: float = 1
    resources: dict[str, float] | None = None
    runtime_env: dict[str, Any] | None = None
    kind: str = "ray"

    def __post_init__(self) -> None:
        """Raises:
        ValueError: ``num_cpus`` is negative or ``address`` is empty."""
        if self.num_cpus < 0:
            raise ValueError(f"num_cpus must be >= 0, got {self.num_cpus!r}")
        if self.address is not None and not self.address.strip():
            raise ValueError("address must be None, 'auto' or 'host:port', got an empty string")

    @classmethod
    def from_env(cls) -> RayWorkers:
        """The settings ``worker="ray"`` uses: ``$TASKPOOL_RAY_ADDRESS`` (if set), defaults
        otherwise (``$TASKPOOL_RAY_NUM_CPUS`` overrides ``num_cpus``).

        Raises:
            ValueError: ``$TASKPOOL_RAY_NUM_CPUS`` is not a number >= 0.
        """
        cpus = os.environ.get("TASKPOOL_RAY_NUM_CPUS")
        try:
            num_cpus = float(cpus) if cpus else 1.0
        except ValueError:
            raise ValueError(f"$TASKPOOL_RAY_NUM_CPUS must be a number, got {cpus!r}") from None
        return cls(address=None, num_cpus=num_cpus)

    def target(self) -> str | None:
        """The cluster to join (``address``, else ``$TASKPOOL_RAY_ADDRESS``), or None for a
        private local Ray."""
        return self.address or os.environ.get(ADDRESS_ENV) or None
