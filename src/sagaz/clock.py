"""Time, behind a small interface so tests can use :class:`sagaz.testing.FakeClock`."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "utcnow"]


def utcnow() -> datetime:
    """The current time as an aware UTC ``datetime``."""
    return datetime.now(UTC)


@runtime_checkable
class Clock(Protocol):
    """What sagaz needs of time: a monotonic reading, a wall reading and a sleep."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def now(self) -> datetime:
        """The wall-clock time, aware, in UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock (``time.monotonic``, ``datetime.now(UTC)``, ``asyncio.sleep``)."""

    #: seconds from ``time.monotonic()``: the builtin itself, so a reading is no Python call
    #: (the engine reads it per event)
    monotonic = staticmethod(time.monotonic)

    def now(self) -> datetime:
        """The current UTC time."""
        return utcnow()

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep(seconds)``."""
        await asyncio.sleep(max(0.0, seconds))
