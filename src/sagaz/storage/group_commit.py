"""What the group committers share (:mod:`sagaz.storage.sqlite_groups`,
:mod:`sagaz.storage.postgres_groups`, :mod:`sagaz.storage.redis_pipeline`): an operation's
outcome, handing it to its caller, and handing a whole group over in two halves.

A group that comes back while the server has no other group is handed to its callers in two
halves, a loop turn apart (:func:`hand_over`): the first half's callers run on to their next
operation, which leaves at once as the next group, while the second half is still being
handled. Without it, many callers advance in lock step (each one's next operation waits for
the whole group's results to be handled, so the server idles while the process works, then
the process while the server works); with it, the two work at the same time, for about
twice the round trips. Each result is still handed over only after its group came back.
Not for SQLite: its writer thread cannot run while the event loop handles the second half.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["SPLIT_AT", "Outcome", "hand_over", "settle"]

X = TypeVar("X")
Y = TypeVar("Y")

SPLIT_AT = 16
"""A group of at least this many operations, back while no other is out, goes in two halves."""

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


async def hand_over(
    callers: Sequence[X], results: Sequence[Y], give: Callable[[X, Y], None], *, alone: bool
) -> None:
    """``give(caller, result)`` for each caller of a group; in two halves a loop turn apart
    if the group came back ``alone`` (no other group out) and holds at least
    :data:`SPLIT_AT` callers. The second half gets its results even if this is cancelled."""
    half = len(callers) // 2 if alone and len(callers) >= SPLIT_AT else 0
    for caller, result in zip(callers[:half], results[:half], strict=True):
        give(caller, result)
    try:
        if half:
            await asyncio.sleep(0)  # the first half's callers queue their next operations
    finally:
        for caller, result in zip(callers[half:], results[half:], strict=True):
            give(caller, result)
