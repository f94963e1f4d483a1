"""Backoff with full jitter, and token buckets for flood control and connect pacing."""

from __future__ import annotations

import random
import time

# One generator for every Backoff: a Random instance holds 2.5 KB of state, and there is a Backoff per
# connection (thousands per process).
_SHARED_RNG = random.Random()


class Backoff:
    """Capped exponential backoff with full jitter (as in redis-py's ``backoff.py``).

    ``next()`` returns the delay before the next attempt and counts the failure; ``reset()`` forgets
    them once a connection has proved healthy.
    """

    def __init__(self, base: float, cap: float, *, rng: random.Random | None = None) -> None:
        self.base, self.cap = base, cap
        self.failures = 0
        self._rng = rng or _SHARED_RNG

    def compute(self, failures: int) -> float:
        """Delay for the given number of consecutive failures (0 = first retry)."""
        ceiling = min(self.cap, self.base * (2 ** min(failures, 32)))
        return self._rng.uniform(self.base / 2 if failures == 0 else 0, ceiling)

    def next(self) -> float:
        delay = self.compute(self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` per second. Never sleeps itself: it says how long."""

    __slots__ = ("rate", "burst", "_tokens", "_stamp")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self) -> float:
        """Take a token if one is there and return 0.0, else return the seconds until one is (an hour
        at a rate of 0)."""
        now = time.monotonic()  # (``_refill`` inlined: the send queues call this once per line)
        tokens = self._tokens + (now - self._stamp) * self.rate
        self._stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / self.rate if self.rate > 0 else 3600.0

    @property
    def available(self) -> int:
        self._refill()
        return int(self._tokens)
