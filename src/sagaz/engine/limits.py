"""Rate limiting: a token bucket on the engine's clock (fake time in tests)."""

from __future__ import annotations

import asyncio

from sagaz.clock import Clock

__all__ = ["TokenBucket"]


class TokenBucket:
    """Starts at most ``rate`` sagas per second, with a burst of ``burst`` (default 1).

    Waiters are served in arrival order.
    """

    def __init__(self, rate: float, clock: Clock, burst: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError(f"rate_limit_per_second must be > 0, got {rate}")
        self.rate = rate
        self.capacity = max(1.0, burst)
        self.clock = clock
        self._tokens = self.capacity
        self._updated = clock.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for one token."""
        async with self._lock:
            while not self.try_take():
                await self.clock.sleep(self.delay())

    def try_take(self) -> bool:
        """Take one token if there is one now; never waits."""
        self._refill()
        if self._tokens >= 1.0 - 1e-9:  # float rounding must not strand a waiter
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        return False

    def delay(self) -> float:
        """Seconds until the next token."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self.rate)

    def _refill(self) -> None:
        now = self.clock.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
