"""The seed examples' ``math`` module, in Python: CPU-bound functions and a little state.

Sizes are smaller than the JavaScript seed's (``fib(42)`` is ~100 s of pure Python):
each call below takes a fraction of a second to a few seconds on one core.
The module-level ``counter`` shows state living in a persistent worker between calls.
"""

from __future__ import annotations

import asyncio

counter: int = 0


def state() -> int:
    """How many times :func:`add` was called in this worker."""
    return counter


def add(a: int, b: int) -> int:
    """``a + b``, counting the call in the worker's state."""
    global counter
    counter += 1
    return a + b


def fib(n: int) -> int:
    """The n-th Fibonacci number, computed the slow recursive way (CPU work)."""
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def tribonacci(n: int) -> int:
    """The n-th Tribonacci number, recursively (CPU work)."""
    if n < 2:
        return 0
    if n == 2:
        return 1
    return tribonacci(n - 1) + tribonacci(n - 2) + tribonacci(n - 3)


def find_primes_up_to(limit: int) -> list[int]:
    """Every prime <= ``limit`` (sieve of Eratosthenes)."""
    if limit < 2:
        return []
    sieve = bytearray([1]) * (limit + 1)
    sieve[0:2] = b"\x00\x00"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, limit + 1, i)))
    return [i for i, is_prime in enumerate(sieve) if is_prime]


def estimate_pi(digits: int) -> float:
    """Estimate pi with the Nilakantha series, ``digits * 200_000`` terms (CPU work)."""
    total = 3.0
    sign = 1.0
    for k in range(1, digits * 200_000 + 1):
        n = 2.0 * k
        total += sign * 4.0 / (n * (n + 1) * (n + 2))
        sign = -sign
    return total


async def slow_add(a: int, b: int, delay: float = 0.01) -> int:
    """``a + b`` after an ``await asyncio.sleep(delay)`` (an async function)."""
    await asyncio.sleep(delay)
    return await _plus(a, b)


async def _plus(a: int, b: int) -> int:
    return a + b
