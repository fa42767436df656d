"""``BackpressureQueue``: the bounded buffer between sources and the dispatcher.

It also parks events whose ``concurrency_key`` is busy, or whose trigger is at its
``max_concurrent_sagas``, so they never block events of other keys (no head-of-line
blocking), while keeping per-key arrival order. Parked events count against the capacity:
memory stays bounded by ``queue_size`` plus the sagas in flight.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, deque
from collections.abc import Hashable
from dataclasses import dataclass

from sagaz.config import BackpressureStrategy
from sagaz.flow.items import WorkItem

__all__ = ["BackpressureQueue", "PutResult"]


@dataclass(frozen=True, slots=True)
class PutResult:
    """What :meth:`BackpressureQueue.put` did."""

    accepted: bool
    evicted: WorkItem | None = None  # drop_oldest: the event pushed out


class BackpressureQueue:
    """A bounded FIFO with four full-queue strategies (``block``, ``drop_oldest``,
    ``drop_newest``, ``reject``) and concurrency-key / per-trigger parking."""

    def __init__(self, capacity: int, strategy: BackpressureStrategy = "block") -> None:
        if capacity < 1:
            raise ValueError(f"queue_size must be >= 1, got {capacity}")
        self.capacity = capacity
        self.strategy = strategy
        self._buffered: dict[int, WorkItem] = {}  # seq -> item, oldest first
        self._ready: deque[WorkItem] = deque()
        self._parked_keys: dict[Hashable, deque[WorkItem]] = {}
        self._parked_triggers: dict[str, deque[WorkItem]] = {}
        self._busy_keys: set[Hashable] = set()
        self._running: Counter[str] = Counter()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._seq = itertools.count()
        self._closed = False

    # -- sizes -----------------------------------------------------------------------------
    def __len__(self) -> int:
        """Events buffered (ready or parked), not yet started."""
        return len(self._buffered)

    @property
    def full(self) -> bool:
        """True when a new event would need the full-queue strategy."""
        return len(self._buffered) >= self.capacity

    def running(self, trigger_id: str) -> int:
        """Sagas of ``trigger_id`` started and not finished."""
        return self._running[trigger_id]

    # -- put -------------------------------------------------------------------------------
    async def put(self, item: WorkItem) -> PutResult:
        """Buffer ``item``; under ``block`` wait for room, otherwise apply the strategy."""
        evicted: WorkItem | None = None
        if self.full:
            if self.strategy == "block":
                while self.full:
                    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    self._putters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if not waiter.done():
                            waiter.cancel()
                    if self._closed:
                        return PutResult(False)
            elif self.strategy == "drop_oldest":
                evicted = next(iter(self._buffered.values()))
                self._evict(evicted)
            else:  # drop_newest, reject
                return PutResult(False)
        self._add(item)
        return PutResult(True, evicted)

    def put_nowait_unbounded(self, item: WorkItem) -> None:
        """Buffer an already-admitted event (a retry) regardless of capacity."""
        self._add(item)

    def _add(self, item: WorkItem) -> None:
        item.seq = next(self._seq)
        item.evicted = False
        self._buffered[item.seq] = item
        self._ready.append(item)
        self._wake(self._getters)

    def _evict(self, item: WorkItem) -> None:
        item.evicted = True
        del self._buffered[item.seq]

    # -- get -------------------------------------------------------------------------------
    async def get(self) -> WorkItem:
        """The next event that may start now (its key and trigger are free)."""
        while True:
            item = self._pop_eligible()
            if item is not None:
                return item
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake(self._getters)  # pass our wake-up on
                raise

    def _pop_eligible(self) -> WorkItem | None:
        ready = self._ready
        while ready:
            item = ready.popleft()
            if item.evicted:
                continue
            key = item.concurrency_key
            if key is not None and key in self._busy_keys:
                self._parked_keys.setdefault(key, deque()).append(item)
                continue
            limit = item.trigger.max_concurrent
            trigger_id = item.trigger_id
            if limit is not None and self._running[trigger_id] >= limit:
                self._parked_triggers.setdefault(trigger_id, deque()).append(item)
                continue
            if key is not None:
                self._busy_keys.add(key)
            self._running[trigger_id] += 1
            del self._buffered[item.seq]
            self._wake(self._putters)
            return item
        return None

    def done(self, item: WorkItem) -> None:
        """An event's saga finished (or was given up): free its key and trigger slot."""
        key = item.concurrency_key
        if key is not None:
            self._busy_keys.discard(key)
            self._unpark(self._parked_keys, key)
        trigger_id = item.trigger_id
        self._running[trigger_id] -= 1
        if self._running[trigger_id] <= 0:
            del self._running[trigger_id]
        self._unpark(self._parked_triggers, trigger_id)

    def _unpark(
        self, parked: dict[Hashable, deque[WorkItem]] | dict[str, deque[WorkItem]], key: Hashable
    ) -> None:
        queue = parked.get(key)  # type: ignore[call-overload]
        while queue:
            head = queue.popleft()
            if not head.evicted:
                self._ready.appendleft(head)  # it arrived before anything behind it
                self._wake(self._getters)
                break
        if queue is not None and not queue:
            del parked[key]  # type: ignore[arg-type]

    # -- shutdown --------------------------------------------------------------------------
    def drain(self) -> list[WorkItem]:
        """Remove and return every buffered event (shutdown: they are nacked)."""
        items = list(self._buffered.values())
        for item in items:
            item.evicted = True
        self._buffered.clear()
        self._ready.clear()
        self._parked_keys.clear()
        self._parked_triggers.clear()
        return items

    def close(self) -> None:
        """Release producers waiting for room (they get ``accepted=False``)."""
        self._closed = True
        while self._putters:
            waiter = self._putters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    @staticmethod
    def _wake(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
