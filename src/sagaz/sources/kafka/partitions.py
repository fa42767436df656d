"""Bookkeeping of one assigned Kafka partition: what is buffered, what is unsettled, how far
it may be committed, and whether it should be paused. Pure data, no aiokafka.

Offsets are tracked in fetch order (not as ``offset + 1``), so gaps left by compaction or
transaction markers never hold a commit back.

Offsets 0, 1, 2 fetched, 2 and 0 settled: ``commit_offset`` is 1, because offset 1 still runs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PartitionState", "resumes_at"]


def resumes_at(max_buffered: int) -> int:
    """The buffered records at most of a paused partition that :meth:`PartitionState.flow`
    resumes: half of ``max_buffered``."""
    return max_buffered // 2


@dataclass(slots=True, eq=False)
class PartitionState:
    """State of one assigned partition; a fresh one replaces it on every assignment."""

    tp: Any  # aiokafka's TopicPartition
    buffer: deque[Any] = field(default_factory=deque)  # fetched records, not yet emitted
    #: when the buffered records were fetched: (received_at, last offset of that fetch); one
    #: entry per poll, not a (record, received_at) pair per record: what a deep buffer holds
    #: is promoted by the garbage collector and walked by every full collection
    arrivals: deque[tuple[Any, int]] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)  # set when buffer fills
    outstanding: deque[int] = field(default_factory=deque)  # fetched, unsettled, in order
    done: set[int] = field(default_factory=set)  # settled, but behind an unsettled offset
    last_offset: int = -1
    commit_offset: int | None = None  # just after the last contiguous settled offset
    committed_offset: int | None = None
    paused: bool = False
    worker: asyncio.Task[None] | None = None

    def track(self, records: Iterable[Any], received_at: Any) -> int:
        """Buffer new records (ones at or below the last offset seen are skipped)."""
        added = 0
        for record in records:
            if record.offset > self.last_offset:
                self.last_offset = record.offset
                self.outstanding.append(record.offset)
                self.buffer.append(record)
                added += 1
        if added:
            self.arrivals.append((received_at, self.last_offset))
        return added

    def settle(self, offset: int) -> None:
        """Mark ``offset`` done and move the commit point over the contiguous done prefix."""
        outstanding, done = self.outstanding, self.done
        if not outstanding or outstanding[0] != offset:  # behind an unsettled offset
            done.add(offset)
            return
        # the first unsettled offset (the usual case: events finish about in order), and
        # after it those that finished before it
        outstanding.popleft()
        while done and outstanding and outstanding[0] in done:
            offset = outstanding.popleft()
            done.discard(offset)
        self.commit_offset = offset + 1

    @property
    def commit_due(self) -> bool:
        """Whether the commit point moved since the last successful commit."""
        return self.commit_offset is not None and self.commit_offset != self.committed_offset

    def flow(self, max_buffered: int, max_unsettled: int) -> bool | None:
        """``True``: pause it now; ``False``: resume it now; ``None``: leave it as it is.

        Paused above ``max_buffered`` un-emitted or ``max_unsettled`` unsettled events;
        resumed once the buffer is half drained and the backlog is under its bound.
        """
        buffered, unsettled = len(self.buffer), len(self.outstanding)
        if not self.paused:
            if buffered < max_buffered and unsettled < max_unsettled:
                return None
            self.paused = True
            return True
        if buffered <= resumes_at(max_buffered) and unsettled < max_unsettled:
            self.paused = False
            return False
        return None
