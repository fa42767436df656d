"""The sagas a worker's recovery loop claimed and could not resume (:class:`ResumeFailures`):
how often each failed here, and when it may be tried again.

The recovery loop (:mod:`sagaz.engine.recovery`) gives such a saga back
(:meth:`~sagaz.abc.SagaStore.release_saga`) with its lease ending at the time this
:class:`~sagaz.backoff.Backoff` names, from ``recovery_interval_seconds`` doubling up to
:attr:`ResumeFailures.maximum`: no worker lists it for recovery before then, so a saga that
keeps failing is neither resumed in a hot loop nor in the way of the others on the page
(``list_recoverable``'s limit). After :attr:`ResumeFailures.attempts` failures here, a saga
still pending (its trigger method never completed) is dead-lettered with its kept event; a
started one is tried on at the longest delay (it holds a context, and only resuming it
settles its steps), reported at each failure: a saga given back is no takeover, so the
store's count (``max_recovery_attempts``) does not end it.

The counts are this process's: each worker counts its own, and a restart starts over. They
are bounded (:attr:`ResumeFailures.limit`: the oldest is forgotten first). What bounds a
saga's recoveries across workers and restarts, and a saga that kills its worker (which
counts nothing here, and gives nothing back), is the store's count of takeovers
(:mod:`sagaz.engine.recovery_attempts`, ``max_recovery_attempts``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import ClassVar

from sagaz.backoff import Backoff
from sagaz.clock import Clock, utcnow
from sagaz.engine.dead_letters import describe_error

__all__ = ["ResumeFailures"]


class ResumeFailures:
    """The failed resumptions of one engine's recovery loop (see the module)."""

    #: failures here before a pending saga is dead-lettered (as admission's, ``StoreErrors``)
    attempts: ClassVar[int] = 5
    #: the longest delay, in seconds, before a saga that failed is recoverable again
    maximum: ClassVar[float] = 600.0
    #: sagas counted at most (the oldest count is forgotten first)
    limit: ClassVar[int] = 10_000

    def __init__(self, clock: Clock, interval: float) -> None:
        self._clock = clock
        self._interval = interval
        self._failed: dict[str, tuple[Backoff, str]] = {}
        #: sagas claimed when the store went away: given back once it is back
        self.interrupted: set[str] = set()
        #: sagas being dead-lettered here, given up: the recovery loop and admission, which
        #: may both claim one (its own claim is not counted again), leave them alone
        self.exhausting: set[str] = set()

    @contextmanager
    def giving_up(self, saga_id: str) -> Iterator[None]:
        """While ``saga_id`` is dead-lettered here (given up): in :attr:`exhausting`, so
        that the recovery loop and admission leave it alone. Enter it before any ``await``."""
        self.exhausting.add(saga_id)
        try:
            yield
        finally:
            self.exhausting.discard(saga_id)

    def failed(self, saga_id: str, error: BaseException | str) -> datetime:
        """Count a failure of ``saga_id`` (``error``); returns when it may be tried again."""
        entry = self._failed.pop(saga_id, None)
        if entry is None:
            if len(self._failed) >= self.limit:
                del self._failed[next(iter(self._failed))]
            maximum = max(self.maximum, self._interval)
            entry = (Backoff(self._clock, initial=self._interval, maximum=maximum), "")
        backoff = entry[0]
        self._failed[saga_id] = (backoff, describe_error(error)[0])
        return utcnow() + timedelta(seconds=backoff.next())

    def exhausted(self, saga_id: str) -> str | None:
        """The last error of ``saga_id`` once it failed :attr:`attempts` times here."""
        entry = self._failed.get(saga_id)
        if entry is None or entry[0].attempts < self.attempts:
            return None
        return entry[1]

    def count(self, saga_id: str) -> int:
        """How many times ``saga_id`` failed here."""
        entry = self._failed.get(saga_id)
        return 0 if entry is None else entry[0].attempts

    def forget(self, saga_id: str) -> None:
        """``saga_id`` was settled (resumed to its end, or dead-lettered)."""
        self._failed.pop(saga_id, None)
        self.interrupted.discard(saga_id)
