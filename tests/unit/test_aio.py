"""``wait_event``: a cancellation that arrives as the event is set is never lost."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import pytest

from sagaz._aio import wait_event


async def stubborn_loop(event: asyncio.Event, wait: object) -> int:
    """A committer-style loop: wait for the event (or a timeout), clear it, go on."""
    rounds = 0
    while True:
        await wait(event)  # type: ignore[operator]
        event.clear()
        rounds += 1


async def cancel_as_event_is_set(wait: object) -> asyncio.Task[int]:
    event = asyncio.Event()
    task = asyncio.create_task(stubborn_loop(event, wait))
    await asyncio.sleep(0.01)  # parked in the wait
    event.set()  # its waiter completes in this loop iteration...
    task.cancel()  # ...and the cancel lands on the same one
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        async with asyncio.timeout(1):
            await asyncio.shield(task)
    return task


async def test_a_cancel_racing_the_event_stops_the_loop() -> None:
    task = await cancel_as_event_is_set(lambda event: wait_event(event, 10))
    assert task.cancelled()


async def test_the_timeout_answers_whether_the_event_is_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True
    assert await wait_event(event, None) is True


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="CPython 3.11's wait_for race")
async def test_asyncio_wait_for_loses_that_cancel_here() -> None:
    """Why wait_event exists: the same loop on wait_for survives its cancellation."""

    async def with_wait_for(event: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), 10)

    task = await cancel_as_event_is_set(with_wait_for)
    assert not task.done()  # still looping: a shutdown awaiting it would hang
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
