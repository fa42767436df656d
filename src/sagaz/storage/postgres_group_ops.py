"""The operations a :class:`~sagaz.storage.postgres_groups.PgGroupCommitter` group holds:
each queued operation with the future its caller awaits, and a group's batches by runner
(what lets the group run as one statement).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

__all__ = ["NO_ARG", "Batch", "BatchRunner", "Queued", "one_statement"]

BatchRunner = Callable[[Any, list[Any]], Awaitable[list[Any]]]
"""Runs the items of several operations at once on a connection; a result per item, in order."""
Batch = tuple[BatchRunner, Any, tuple[Hashable, ...]]
"""An operation's batch form: ``(runner, item, rows)``, ``rows`` the rows the item writes."""

NO_ARG: Any = object()
"""``Queued.arg`` of an operation called without an argument."""


@dataclass(slots=True)
class Queued:
    """An operation waiting for its group, and the future its caller awaits.

    The operation is ``op(conn)``, or ``op(conn, arg)`` given ``arg``, or, with no ``op``,
    its batch's runner on its item alone: a bound method and its argument instead of a
    closure (fewer objects for the garbage collector to track per operation)."""

    op: Callable[..., Awaitable[Any]] | None
    future: asyncio.Future[Any]
    batch: Batch | None = None
    arg: Any = NO_ARG
    #: its caller starts new work once it has the result (an event's claim): handed over a
    #: loop turn before the group's other callers (``HandOver``'s ``first``)
    first: bool = False
    #: times queued again after deadlocking (``_requeue_deadlocked``)
    requeued: int = 0

    async def call(self, conn: Any) -> Any:
        """Run the operation on ``conn``; its result."""
        if self.op is None:
            assert self.batch is not None  # run() refuses an operation without either
            runner, item, _ = self.batch
            return (await runner(conn, [item]))[0]
        if self.arg is NO_ARG:
            return await self.op(conn)
        return await self.op(conn, self.arg)


def one_statement(group: list[Queued]) -> dict[BatchRunner, tuple[list[int], list[Any]]] | None:
    """The indexes and items of ``group`` by runner if it can run as one statement (every
    operation a batch, no row written twice), else None."""
    batches: dict[BatchRunner, tuple[list[int], list[Any]]] = {}
    written: set[Hashable] = set()
    for index, queued in enumerate(group):
        if queued.batch is None:
            return None
        runner, item, rows = queued.batch
        if not written.isdisjoint(rows):
            return None
        written.update(rows)
        indexes, items = batches.setdefault(runner, ([], []))
        indexes.append(index)
        items.append(item)
    return batches
