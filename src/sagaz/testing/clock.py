"""``FakeClock``: time that moves only when a test says so."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta

__all__ = ["FakeClock"]


class FakeClock:
    """A :class:`sagaz.clock.Clock` for tests: cron, backoff and rate limits without waiting.

    ``sleep()`` parks the caller until :meth:`advance` moves time past its deadline.

    >>> clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    >>> # in a test: task sleeping 5 s wakes after ``await clock.advance(5)``
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self._start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime, e.g. datetime(..., tzinfo=UTC)")
        self._elapsed = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        """Seconds elapsed since the clock was made."""
        return self._elapsed

    def now(self) -> datetime:
        """The fake wall time (UTC)."""
        return (self._start + timedelta(seconds=self._elapsed)).astimezone(UTC)

    async def sleep(self, seconds: float) -> None:
        """Wait until :meth:`advance` has moved ``seconds`` forward."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed + seconds, next(self._seq), future))
        try:
            await future
        finally:
            if not future.done():
                future.cancel()

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping on this clock (to wait until they are parked)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def settle(self, rounds: int = 20) -> None:
        """Let ready tasks run (a few loop iterations) without moving time."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its own deadline, in order."""
        target = self._elapsed + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            if future.done():
                continue
            self._elapsed = max(self._elapsed, deadline)
            future.set_result(None)
            await self.settle()
        self._elapsed = target
        await self.settle()

    def set_time(self, when: datetime) -> None:
        """Jump the wall clock (a simulated outage); sleepers are not woken."""
        self._elapsed = (when - self._start).total_seconds()
