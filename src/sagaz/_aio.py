"""Small asyncio helpers.

``asyncio.wait_for`` on Python 3.11 loses a cancellation that arrives just as the awaited
future completes (it returns the result instead: CPython gh-86296, fixed in 3.12). A loop
that waits on an event with ``wait_for`` can then survive its own cancellation and hang the
shutdown that awaits it. :func:`wait_event` waits with ``asyncio.timeout``, which does not.
"""

from __future__ import annotations

import asyncio

__all__ = ["wait_event"]


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; return whether it is set.

    A cancellation of the caller always propagates.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
