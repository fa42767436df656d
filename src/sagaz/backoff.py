"""``Backoff``: the one pause between retries, exponential with jitter, slept on a :class:`Clock`.

Every reconnect and retry loop of sagaz (the engine's source supervisor, the broker sources,
the file watcher, the SQS settlement, the outbox relay) waits with a :class:`Backoff`, so a
test drives them all with :class:`sagaz.testing.FakeClock` instead of waiting.

>>> from sagaz.clock import SystemClock
>>> backoff = Backoff(SystemClock(), initial=0.5, maximum=30.0)
>>> while True:  # doctest: +SKIP
...     try:
...         await connect()
...     except ConnectionError:
...         await backoff.sleep()  # 0.25-0.5 s, then 0.5-1 s, 1-2 s ... at most 30 s
...         continue
...     backoff.reset()
...     break
"""

from __future__ import annotations

import asyncio
import random

from sagaz.clock import Clock

__all__ = ["Backoff"]


class Backoff:
    """Exponential delays with "equal jitter" (by default), slept on ``clock``.

    The *nominal* delay starts at ``initial`` and is multiplied by ``factor`` after each
    :meth:`next`, up to ``maximum``. Each delay is the nominal one less a random share of at
    most ``jitter`` of it: with the default ``jitter=0.5`` ("equal jitter") a delay lies between
    half the nominal delay and the nominal delay. So a delay never exceeds ``maximum``, a broker
    that is down is not hammered (at least half the nominal delay), and many workers that lost
    the same broker do not all come back at the same instant. ``jitter=1.0`` is "full jitter"
    (anywhere from 0 to the nominal delay); ``jitter=0.0`` gives the plain doubling sequence.

    :meth:`reset` after a success starts over from ``initial``; :attr:`attempts` counts the
    delays handed out since then (the consecutive failures).

    >>> import random
    >>> from sagaz.clock import SystemClock
    >>> backoff = Backoff(SystemClock(), initial=1.0, maximum=4.0, rng=random.Random(7))
    >>> [0.5 <= backoff.next() <= 1.0, 1.0 <= backoff.next() <= 2.0]
    [True, True]
    >>> plain = Backoff(SystemClock(), initial=1.0, maximum=5.0, jitter=0.0)
    >>> [plain.next() for _ in range(5)], plain.attempts
    ([1.0, 2.0, 4.0, 5.0, 5.0], 5)

    ``rng`` (a :class:`random.Random`) makes the jitter reproducible in tests.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        initial: float = 0.1,
        maximum: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if not initial > 0:
            raise ValueError(f"Backoff: initial={initial!r} must be > 0 seconds")
        if not maximum >= initial:
            raise ValueError(f"Backoff: maximum={maximum!r} must be >= initial={initial!r}")
        if not factor >= 1:
            raise ValueError(f"Backoff: factor={factor!r} must be >= 1")
        if not 0 <= jitter <= 1:
            raise ValueError(f"Backoff: jitter={jitter!r} must be between 0 and 1")
        self.clock = clock
        self.initial = float(initial)
        self.maximum = float(maximum)
        self.factor = float(factor)
        self.jitter = float(jitter)
        self._random = rng.random if rng is not None else random.random
        self._nominal = self.initial
        self._attempts = 0

    @property
    def attempts(self) -> int:
        """Delays handed out since the last :meth:`reset` (the consecutive failures)."""
        return self._attempts

    def next(self) -> float:
        """The delay to wait now (seconds); the nominal delay of the following one grows."""
        nominal = self._nominal
        # multiplied, not ``initial * factor ** n``: no overflow however long the outage
        self._nominal = min(self.maximum, nominal * self.factor)
        self._attempts += 1
        return nominal * (1.0 - self.jitter * self._random())

    def reset(self) -> None:
        """Start over from ``initial`` (call it after a success)."""
        self._nominal = self.initial
        self._attempts = 0

    async def sleep(
        self, delay: float | None = None, *, until: asyncio.Event | None = None
    ) -> float:
        """Wait ``delay`` seconds on the clock, by default :meth:`next`; return the delay.

        Pass the value just taken from :meth:`next` to log it before waiting. With ``until``,
        the wait ends early once that event is set (e.g. the source's stop event). A
        cancellation of the caller propagates.
        """
        if delay is None:
            delay = self.next()
        if until is None:
            await self.clock.sleep(delay)
        elif not until.is_set():
            sleeping = asyncio.ensure_future(self.clock.sleep(delay))
            stopping = asyncio.ensure_future(until.wait())
            try:
                await asyncio.wait({sleeping, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for future in (sleeping, stopping):
                    future.cancel()  # a no-op for the one that is done
                # unlike ``await future``, this never swallows our own cancellation
                await asyncio.wait({sleeping, stopping})
            if not sleeping.cancelled():
                sleeping.result()  # a clock that failed: let it show
        return delay

    def __repr__(self) -> str:
        return (
            f"Backoff(initial={self.initial}, maximum={self.maximum}, factor={self.factor}, "
            f"jitter={self.jitter}, attempts={self._attempts})"
        )
