"""What the group committers share (:mod:`sagaz.storage.sqlite_groups`,
:mod:`sagaz.storage.postgres_groups`, :mod:`sagaz.storage.redis_pipeline`): an operation's
outcome, handing it to its caller, and handing a whole group over in two halves.

Many callers that each await one operation after another advance in lock step through a
group committer: each one's next operation waits for the whole group's results to be
handled, so the server idles while the process works, then the process while the server
works. A group that comes back while no other is out is therefore handed to its callers in
two halves, a loop turn apart (:class:`HandOver`): the first half's callers run on to their
next operations, which leave at once as the next group while the second half is still being
handled, and the two sides work at the same time. That costs about twice the round trips,
more CPU per operation on both sides, so it pays only when the event loop gets a core
whenever it wants one; on a machine whose cores are all busy it is slower. So
:class:`HandOver` stops halving once the event loop's thread has waited for a core more
than :data:`CONTENDED` times as long as it ran, over a window of :data:`WINDOW` seconds,
and halves again once it waited less than :data:`FREE` times as long (Linux's
``/proc/thread-self/schedstat``; where it cannot be read, it always halves). It starts by
halving: a lock step, once set going, outlived a later start in ``benchmarks/stores.py``.
While halving, a group holding callers that start new work once they have their results
(an event's claim: the producer waiting on it fires its next event, its saga starts) and
others (a saga's checkpoints) hands the first ones over a loop turn before the others, back
alone or not: their next operations leave as the next group while the others' are still
handled. In ``benchmarks/stores.py`` the producers' claims bound the rate (20 producers,
each waiting on its claim's commit), and these groups cost no more round trips than the
halves did (0.11-0.13 commits a saga). Each result is still handed over only after its
group came back, whichever way. Not for SQLite: its groups run on the event loop's thread,
so there is no other side to keep busy (halving its groups when they ran in a thread of
their own was slower: that thread could not take the GIL while the loop handled the second
half).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["CONTENDED", "FREE", "SPLIT_AT", "WINDOW", "HandOver", "Outcome", "settle"]

X = TypeVar("X")
Y = TypeVar("Y")

SPLIT_AT = 16
"""A group of at least this many operations, back while no other is out, may go in halves."""
CONTENDED = 0.4
"""Stop halving once the loop's thread waited for a core this many times as long as it ran."""
FREE = 0.25
"""Halve again once it waited less than this many times as long as it ran."""
WINDOW = 0.05
"""Seconds over which the thread's running and waiting are measured, at least."""
_MEASURED = 0.005
"""Seconds the thread must have run in a window for it to tell (else the window goes on)."""
_SCHEDSTAT = "/proc/thread-self/schedstat"

Outcome = tuple[Any, BaseException | None]
"""What one operation gave: ``(result, None)`` or ``(None, error)``."""


def settle(future: asyncio.Future[Any], outcome: Outcome) -> None:
    """Hand an outcome to its caller, unless the caller is gone (cancelled)."""
    if future.done():
        return
    result, error = outcome
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class HandOver:
    """Hands each group's results to its callers, in two halves while the event loop's
    thread gets a core when it wants one (see the module docstring). One per group
    committer, used from the event loop's thread. ``schedstat`` (tests) returns the thread's
    nanoseconds on a core and waiting for one, or None where not known."""

    def __init__(self, schedstat: Callable[[], tuple[int, int] | None] | None = None) -> None:
        self._schedstat = schedstat or _schedstat
        #: whether a group back alone is handed over in two halves now (from the start: the
        #: lock step, once set, outlives a later start)
        self.halving = True
        self._since: tuple[int, int] | None = None  # (ran, waited) at the window's start
        self._next = 0  # the monotonic clock's nanoseconds at which the window may end
        self._known = True

    def _measure(self) -> None:
        """At the end of a window, halve while the thread waited for a core little."""
        if not self._known:
            return
        clock = time.monotonic_ns()
        if clock < self._next:
            return
        now = self._schedstat()
        if now is None:
            self._known, self.halving = False, True  # not known here: always halve
            return
        self._next = clock + int(WINDOW * 1e9)
        since = self._since
        if since is None:
            self._since = now
            return
        ran, waited = now[0] - since[0], now[1] - since[1]
        if ran < _MEASURED * 1e9:
            return  # too little to tell: the window goes on
        self._since = now
        self.halving = waited < (CONTENDED if self.halving else FREE) * ran

    async def __call__(
        self,
        callers: Sequence[X],
        results: Sequence[Y],
        give: Callable[[X, Y], None],
        *,
        alone: bool,
        first: int = 0,
    ) -> None:
        """``give(caller, result)`` for each caller of a group: in two halves a loop turn
        apart if halving, the group came back ``alone`` (no other group out) and it holds at
        least :data:`SPLIT_AT` callers. ``first``: the group's first callers that start new
        work once they have their results (a producer's event claim); if some of the group
        but not all, they instead are the first half, alone or not, while halving (see the
        module docstring). The second half gets its results even if this is cancelled."""
        half = 0
        if 0 < first < len(callers):
            self._measure()
            half = first if self.halving else 0
        elif alone and len(callers) >= SPLIT_AT:  # measured only where the answer matters
            self._measure()
            half = len(callers) // 2 if self.halving else 0
        for caller, result in zip(callers[:half], results[:half], strict=True):
            give(caller, result)
        try:
            if half:
                await asyncio.sleep(0)  # the first half's callers queue their next operations
        finally:
            for caller, result in zip(callers[half:], results[half:], strict=True):
                give(caller, result)


def _schedstat() -> tuple[int, int] | None:
    """This thread's nanoseconds on a core and waiting for one (Linux), else None."""
    try:
        with open(_SCHEDSTAT, "rb") as stat:
            ran, waited = stat.read().split()[:2]
        return int(ran), int(waited)
    except (OSError, ValueError):
        return None
