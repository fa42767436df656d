"""``BackpressureQueue``: the bounded buffer between sources and the dispatcher.

It also parks events whose ``concurrency_key`` is busy, whose trigger is at its
``max_concurrent_sagas``, or whose trigger has no ``rate_limit_per_second`` token left, so they
never block events of other keys or triggers (no head-of-line blocking), while keeping per-key
and per-trigger arrival order. Parked events count against the capacity: memory stays bounded
by ``queue_size`` plus the sagas in flight.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, deque
from collections.abc import Hashable
from dataclasses import dataclass

from sagaz.config import BackpressureStrategy
from sagaz.engine.limits import TokenBucket
from sagaz.engine.work_item import WorkItem

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
        #: parked events handed back (key or trigger freed, rate token granted), in the order
        #: they were handed back; served before ``_ready``: they arrived before it
        self._returning: deque[WorkItem] = deque()
        self._parked_keys: dict[Hashable, deque[WorkItem]] = {}
        self._parked_triggers: dict[str, deque[WorkItem]] = {}
        #: events waiting for a rate-limit token, per trigger, and the task granting them
        self._rate_parked: dict[str, deque[WorkItem]] = {}
        self._rate_granters: dict[str, asyncio.Task[None]] = {}
        self._busy_keys: set[Hashable] = set()
        self._running: Counter[str] = Counter()
        #: events buffered per trigger id (``depth``)
        self._depths: Counter[str] = Counter()
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

    def depth(self, trigger_id: str) -> int:
        """Events of ``trigger_id`` buffered (ready or parked), not yet started."""
        return self._depths[trigger_id]

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
        self._depths[item.trigger_id] += 1
        self._ready.append(item)
        self._wake(self._getters)

    def _evict(self, item: WorkItem) -> None:
        item.evicted = True
        self._unbuffer(item)

    def _unbuffer(self, item: WorkItem) -> None:
        del self._buffered[item.seq]
        trigger_id = item.trigger_id
        self._depths[trigger_id] -= 1
        if self._depths[trigger_id] <= 0:
            del self._depths[trigger_id]

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
        returning, ready = self._returning, self._ready
        while returning or ready:
            item = returning.popleft() if returning else ready.popleft()
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
            bucket = item.trigger.bucket
            if (
                bucket is not None
                and not item.rate_granted
                and (trigger_id in self._rate_parked or not bucket.try_take())
            ):
                self._park_for_rate(item, bucket)
                continue
            item.rate_granted = False  # a retry takes a token of its own
            if key is not None:
                self._busy_keys.add(key)
            self._running[trigger_id] += 1
            self._unbuffer(item)
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
                self._returning.append(head)  # it arrived before anything behind it
                self._wake(self._getters)
                break
        if queue is not None and not queue:
            del parked[key]  # type: ignore[arg-type]

    # -- rate limits -----------------------------------------------------------------------
    def _park_for_rate(self, item: WorkItem, bucket: TokenBucket) -> None:
        trigger_id = item.trigger_id
        self._rate_parked.setdefault(trigger_id, deque()).append(item)
        if trigger_id not in self._rate_granters:
            self._rate_granters[trigger_id] = asyncio.get_running_loop().create_task(
                self._grant(trigger_id, bucket), name=f"sagaz-rate-{trigger_id}"
            )

    async def _grant(self, trigger_id: str, bucket: TokenBucket) -> None:
        """Hand the events parked for ``trigger_id``'s rate limit back, in order, one per
        token; ends when none is left."""
        waiting = self._rate_parked[trigger_id]
        try:
            while True:
                while waiting and waiting[0].evicted:
                    waiting.popleft()
                if not waiting:
                    return
                if not bucket.try_take():
                    await bucket.clock.sleep(bucket.delay())
                    continue
                item = waiting.popleft()
                item.rate_granted = True
                self._returning.append(item)  # it arrived before anything behind it
                self._wake(self._getters)
        finally:
            if self._rate_parked.get(trigger_id) is waiting and not waiting:
                del self._rate_parked[trigger_id]
            if self._rate_granters.get(trigger_id) is asyncio.current_task():
                del self._rate_granters[trigger_id]

    def _stop_granting(self) -> None:
        for task in self._rate_granters.values():
            task.cancel()
        self._rate_granters.clear()

    # -- shutdown --------------------------------------------------------------------------
    def drain(self) -> list[WorkItem]:
        """Remove and return every buffered event (shutdown: they are nacked)."""
        items = list(self._buffered.values())
        for item in items:
            item.evicted = True
        self._buffered.clear()
        self._depths.clear()
        self._ready.clear()
        self._returning.clear()
        self._parked_keys.clear()
        self._parked_triggers.clear()
        self._rate_parked.clear()
        self._stop_granting()
        return items

    def close(self) -> None:
        """Release producers waiting for room (they get ``accepted=False``)."""
        self._closed = True
        self._stop_granting()
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
