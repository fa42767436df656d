"""Small asyncio helpers.

:func:`gather_all` awaits every awaitable, then raises the first error: a batch's callers
each get their answer made before an error is seen.

``asyncio.wait_for`` on Python 3.11 loses a cancellation that arrives just as the awaited
future completes (it returns the result instead: CPython gh-86296, fixed in 3.12). A loop
that waits on an event with ``wait_for`` can then survive its own cancellation and hang the
shutdown that awaits it. :func:`wait_event` waits with ``asyncio.timeout``, which does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Generator, Iterable
from typing import Any, TypeVar

__all__ = ["DONE", "TaskSet", "gather_all", "wait_event"]

T = TypeVar("T")


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


async def gather_all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """The results of ``awaitables``, run together, in their order; once all are done, the
    first error (in their order) is raised instead, so none is left running or unawaited."""
    answers = await asyncio.gather(*awaitables, return_exceptions=True)
    made: list[T] = []
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
        made.append(answer)
    return made


class TaskSet:
    """Tasks run beside their owner (a held delivery, a retry waiting for its backoff): each
    kept until it ends, all cancelled and awaited by :meth:`close`."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coroutine`` in a task named ``name``, kept here until it ends."""
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Cancel every task and wait until all have ended (their errors are not raised)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class _Done:
    """An awaitable that is already done (awaiting it gives ``None`` at once)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that returns at once


#: an awaitable already done, for an ``ack``/``nack`` that settled in the call (one object
#: for all: no coroutine per call)
DONE: Awaitable[None] = _Done()
