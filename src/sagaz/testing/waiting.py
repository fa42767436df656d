"""``eventually`` and ``continually``: poll with a deadline instead of ``sleep()``-and-hope.

A test of an asynchronous system waits for an outcome (``eventually``) or checks that
something keeps holding over a window (``continually``). Both take a condition that is a
plain or an ``async`` callable, so a condition may query a store or a broker.

>>> await eventually(lambda: engine.metrics.completed["orders.on_order"] == 3)  # doctest: +SKIP
>>> await continually(lambda: runs == [], during=0.5, what="a paused trigger stays idle")
... # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

__all__ = ["continually", "eventually"]

T = TypeVar("T")


async def _check(condition: Callable[[], T | Awaitable[T]]) -> T:
    result = condition()
    if inspect.isawaitable(result):
        return await result
    return result


@overload
async def eventually(
    condition: Callable[[], Awaitable[T]],
    *,
    within: float = ...,
    interval: float = ...,
    what: str | None = ...,
) -> T: ...


@overload
async def eventually(
    condition: Callable[[], T],
    *,
    within: float = ...,
    interval: float = ...,
    what: str | None = ...,
) -> T: ...


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    *,
    within: float = 10.0,
    interval: float = 0.01,
    what: str | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Raises :class:`AssertionError` (a test failure) naming ``what`` when ``within`` seconds
    pass first. An exception raised by the condition is not retried: it propagates at once,
    so a condition can give up early (``pytest.fail("the worker died")``).

    >>> saga = await eventually(lambda: store.get_saga(saga_id), what="the saga row")
    ... # doctest: +SKIP
    """
    deadline = time.monotonic() + within
    while True:
        result = await _check(condition)
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or condition}")
        await asyncio.sleep(interval)


async def continually(
    condition: Callable[[], object],
    *,
    during: float,
    interval: float = 0.05,
    what: str | None = None,
) -> None:
    """Check that ``condition`` holds for ``during`` seconds, polling every ``interval``.

    Raises :class:`AssertionError` naming ``what`` at the first poll where it does not hold.
    For an invariant over a window (nothing consumed while paused, at most N in flight), not
    for waiting on an outcome: that is :func:`eventually`.
    """
    deadline = time.monotonic() + during
    while True:
        if not await _check(condition):
            raise AssertionError(f"{what or condition} stopped holding")
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(interval)
