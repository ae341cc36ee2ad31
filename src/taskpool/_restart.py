"""Restart policies: when and how fast a dead worker is replaced."""

import math
from typing import Literal

import msgspec

__all__ = ["Backoff", "RestartPolicy"]

_MODES = ("on-failure", "always", "never")


class RestartPolicy(msgspec.Struct, frozen=True):
    """How a worker (or a kept-alive service) is replaced when it ends.

    Attributes:
        mode: ``"on-failure"`` restarts a worker that died (crash, signal, non-zero exit);
            ``"always"`` also restarts one that ended cleanly (for services);
            ``"never"`` leaves the slot empty.
        delay: seconds before the first restart.
        backoff: factor applied to the delay after each consecutive failure.
        max_delay: cap on the delay.
        limit: consecutive failures after which the pool (or service) is broken;
            ``None`` for no limit.
        reset_after: seconds a worker must stay up for its failure count to reset.

    Raises:
        ValueError: an argument is out of range; the message names it.
    """

    mode: Literal["on-failure", "always", "never"] = "on-failure"
    delay: float = 0.1
    backoff: float = 2.0
    max_delay: float = 30.0
    limit: int | None = None
    reset_after: float = 60.0

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"RestartPolicy mode must be one of {_MODES}, got {self.mode!r}")
        for name in ("delay", "max_delay", "reset_after"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"RestartPolicy {name} must be a finite number >= 0, got {value!r}")
        if not math.isfinite(self.backoff) or self.backoff < 1:
            raise ValueError(f"RestartPolicy backoff must be a finite number >= 1, got {self.backoff!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"RestartPolicy limit must be None or an int >= 1, got {self.limit!r}")

    def should_restart(self, *, failed: bool) -> bool:
        """Whether a worker that ended (``failed`` or cleanly) is to be replaced."""
        if self.mode == "never":
            return False
        return failed or self.mode == "always"


class Backoff:
    """The consecutive-failure count and next delay of one supervised slot.

    Plain bookkeeping, no clock of its own: the caller passes ``now`` (monotonic seconds),
    which keeps it testable without sleeping.
    """

    __slots__ = ("attempt", "failures", "last_failures", "policy", "started_at")

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.failures = 0  # consecutive
        self.attempt = 0  # restarts so far
        self.started_at: float | None = None  # when the current worker came up
        self.last_failures: list[str] = []

    def up(self, now: float) -> None:
        """Record that the worker has started (answered its handshake)."""
        self.started_at = now

    def down(self, now: float, *, failed: bool, reason: str) -> float | None:
        """Record that the worker ended; return the delay before restarting, or ``None``.

        ``None`` means: do not restart (policy says so, or the failure limit is spent;
        :attr:`exhausted` tells which).
        """
        # Only a worker that came up and stayed up long enough resets the count; one that
        # died before its handshake (started_at already consumed) never does.
        if self.started_at is not None and now - self.started_at >= self.policy.reset_after:
            self.failures = 0
        self.started_at = None
        if failed:
            self.failures += 1
            self.last_failures = [*self.last_failures[-4:], reason]
        if not self.policy.should_restart(failed=failed) or self.exhausted:
            return None
        self.attempt += 1
        if not failed:
            return self.policy.delay
        delay = self.policy.delay * self.policy.backoff ** max(self.failures - 1, 0)
        return min(delay, self.policy.max_delay)

    @property
    def exhausted(self) -> bool:
        """True once the consecutive failures reached the policy's limit."""
        return self.policy.limit is not None and self.failures >= self.policy.limit
