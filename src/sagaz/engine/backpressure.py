"""``BackpressureQueue``: the bounded buffer between sources and the dispatcher.

It also parks events whose ``concurrency_key`` is busy, whose trigger is at its
``max_concurrent_sagas``, or whose trigger has no ``rate_limit_per_second`` token left, so they
never block events of other keys or triggers (no head-of-line blocking), while keeping per-key
and per-trigger arrival order. Parked events count against the capacity: memory stays bounded
by ``queue_size`` plus the sagas in flight.

A trigger with ``limit_scope="cluster"`` (:mod:`sagaz.engine.cluster_limits`) asks the store
instead: an event whose key is free here takes the key locally (later events of the key park
behind it, as in process scope), then waits, in a task of its own key, for the key's lease in
the store; then, in its trigger's arrival order, for a slot and a rate token. Other keys and
triggers go on meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Coroutine, Hashable
from dataclasses import dataclass

from sagaz.config import BackpressureStrategy
from sagaz.engine.cluster_limits import ClusterLimits
from sagaz.engine.limits import TokenBucket
from sagaz.engine.work_item import WorkItem

__all__ = ["BackpressureQueue", "PutResult"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PutResult:
    """What :meth:`BackpressureQueue.put` did."""

    accepted: bool
    evicted: WorkItem | None = None  # drop_oldest: the event pushed out


_ACCEPTED = PutResult(True)  # what nearly every put returns: not one object per event


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
        #: limit_scope="cluster": events waiting for a slot or token, per trigger, and the
        #: tasks asking the store (one per waiting key, one per trigger)
        self._cluster_waiting: dict[str, deque[WorkItem]] = {}
        self._cluster_gates: dict[str, asyncio.Task[None]] = {}
        self._cluster_tasks: set[asyncio.Task[None]] = set()
        #: sagas running per trigger id, and events buffered per trigger id (``depth``); plain
        #: dicts, not ``Counter``s: a ``Counter``'s ``__missing__`` and ``__delitem__`` are Python
        #: code, run once or twice per event
        self._running: dict[str, int] = {}
        self._depths: dict[str, int] = {}
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
        return self._depths.get(trigger_id, 0)

    def running(self, trigger_id: str) -> int:
        """Sagas of ``trigger_id`` started and not finished."""
        return self._running.get(trigger_id, 0)

    # -- put -------------------------------------------------------------------------------
    async def put(self, item: WorkItem) -> PutResult:
        """Buffer ``item``; under ``block`` wait for room, otherwise apply the strategy."""
        evicted: WorkItem | None = None
        if len(self._buffered) >= self.capacity:
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
        return _ACCEPTED if evicted is None else PutResult(True, evicted)

    @property
    def room(self) -> int:
        """Places free in the buffer now (what a batch of admissions may fill without
        meeting the strategy)."""
        return max(0, self.capacity - len(self._buffered))

    def offer(self, item: WorkItem) -> bool:
        """Buffer ``item`` if there is room now (``False``: full, :meth:`put` applies the
        strategy): what nearly every admission does, without a coroutine."""
        if len(self._buffered) >= self.capacity:
            return False
        self._add(item)
        return True

    def put_nowait_unbounded(self, item: WorkItem) -> None:
        """Buffer an already-admitted event (a retry) regardless of capacity."""
        self._add(item)

    def _add(self, item: WorkItem) -> None:
        item.seq = next(self._seq)
        item.evicted = False
        item.key_reserved = item.key_leased = item.cluster_ready = False
        self._buffered[item.seq] = item
        depths = self._depths
        trigger_id = item.trigger.trigger_id
        depths[trigger_id] = depths.get(trigger_id, 0) + 1
        self._ready.append(item)
        if self._getters:
            self._wake(self._getters)

    def _evict(self, item: WorkItem) -> None:
        item.evicted = True
        self._unbuffer(item)

    def _unbuffer(self, item: WorkItem) -> None:
        del self._buffered[item.seq]
        depths = self._depths
        trigger_id = item.trigger.trigger_id
        depth = depths[trigger_id] - 1
        if depth > 0:
            depths[trigger_id] = depth
        else:
            del depths[trigger_id]

    # -- get -------------------------------------------------------------------------------
    async def get(self) -> WorkItem:
        """The next event that may start now (its key and trigger are free)."""
        while True:
            item = self.get_nowait()
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

    def get_nowait(self) -> WorkItem | None:
        """The next event that may start now, or ``None`` (then :meth:`get` waits): what a
        worker finds nearly every time, without a coroutine."""
        returning, ready = self._returning, self._ready
        while returning or ready:
            item = returning.popleft() if returning else ready.popleft()
            if item.evicted:
                self._abandon(item)
                continue
            key = item.concurrency_key
            if key is not None and not item.key_reserved and key in self._busy_keys:
                self._parked_keys.setdefault(key, deque()).append(item)
                continue
            trigger = item.trigger
            limit = trigger.max_concurrent
            trigger_id = trigger.trigger_id
            if limit is not None and self._running.get(trigger_id, 0) >= limit:
                self._parked_triggers.setdefault(trigger_id, deque()).append(item)
                continue
            bucket = trigger.bucket
            if (
                bucket is not None
                and not item.rate_granted
                and (trigger_id in self._rate_parked or not bucket.try_take())
            ):
                self._park_for_rate(item, bucket)
                continue
            cluster = trigger.cluster
            if cluster is not None and not item.cluster_ready:
                if key is not None:  # later events of the key wait behind it, here
                    self._busy_keys.add(key)
                    item.key_reserved = True
                self._to_cluster(item, cluster)
                continue
            item.rate_granted = False  # a retry takes a token of its own
            if key is not None:
                self._busy_keys.add(key)
            self._running[trigger_id] = self._running.get(trigger_id, 0) + 1
            self._unbuffer(item)
            if self._putters:
                self._wake(self._putters)
            return item
        return None

    def done(self, item: WorkItem) -> None:
        """An event's saga finished (or was given up): free its key and trigger slot."""
        if item.concurrency_key is not None:
            self._free_key(item.concurrency_key)
        item.key_reserved = False
        trigger_id = item.trigger.trigger_id
        running = self._running.get(trigger_id, 0) - 1
        if running > 0:
            self._running[trigger_id] = running
        else:
            self._running.pop(trigger_id, None)
        if self._parked_triggers:
            self._unpark(self._parked_triggers, trigger_id)

    def _free_key(self, key: Hashable | None) -> None:
        if key is not None:
            self._busy_keys.discard(key)
            self._unpark(self._parked_keys, key)

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
        for task in [*self._cluster_gates.values(), *self._cluster_tasks]:
            task.cancel()
        self._cluster_gates.clear()
        self._cluster_tasks.clear()
        self._cluster_waiting.clear()

    # -- cluster limits --------------------------------------------------------------------
    def _to_cluster(self, item: WorkItem, cluster: ClusterLimits) -> None:
        """Ask the store for ``item``'s cluster limits: its key first (one task per key, so
        keys never wait for each other), then a slot and a token in trigger order."""
        if cluster.keys and item.concurrency_key is not None and not item.key_leased:
            self._spawn(self._lease_key(item, cluster), f"sagaz-key-{item.saga_id}")
        else:
            self._to_trigger_gate(item, cluster)

    async def _lease_key(self, item: WorkItem, cluster: ClusterLimits) -> None:
        item.key_leased = await cluster.take_key(item)
        if item.evicted:
            self._abandon(item)
        else:
            self._to_trigger_gate(item, cluster)

    def _to_trigger_gate(self, item: WorkItem, cluster: ClusterLimits) -> None:
        if cluster.slots is None and cluster.rate is None:
            self._cluster_ready(item)
            return
        trigger_id = item.trigger_id
        self._cluster_waiting.setdefault(trigger_id, deque()).append(item)
        if trigger_id not in self._cluster_gates:
            gate = asyncio.get_running_loop().create_task(
                self._gate(trigger_id, cluster), name=f"sagaz-cluster-{trigger_id}"
            )
            gate.add_done_callback(self._cluster_task_done)
            self._cluster_gates[trigger_id] = gate

    async def _gate(self, trigger_id: str, cluster: ClusterLimits) -> None:
        """Let the events of ``trigger_id`` waiting for a slot or token through, in order;
        ends when none is left."""
        waiting = self._cluster_waiting[trigger_id]
        try:
            while waiting:
                item = waiting[0]
                if not item.evicted and cluster.slots is not None:
                    await cluster.take_slot(item)
                if not item.evicted and cluster.rate is not None:
                    await cluster.take_token()
                waiting.popleft()
                if item.evicted:
                    self._abandon(item)
                else:
                    self._cluster_ready(item)
        finally:
            if self._cluster_waiting.get(trigger_id) is waiting and not waiting:
                del self._cluster_waiting[trigger_id]
            if self._cluster_gates.get(trigger_id) is asyncio.current_task():
                del self._cluster_gates[trigger_id]

    def _cluster_ready(self, item: WorkItem) -> None:
        item.cluster_ready = True
        self._returning.append(item)  # it arrived before anything behind it
        self._wake(self._getters)

    def _abandon(self, item: WorkItem) -> None:
        """An evicted event will not start: free what it took here and in the store."""
        if item.key_reserved:
            item.key_reserved = False
            self._free_key(item.concurrency_key)
        cluster = item.trigger.cluster
        if cluster is not None and item.cluster_leases:
            self._spawn(cluster.release(item), f"sagaz-release-{item.saga_id}")

    def _spawn(self, work: Coroutine[None, None, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._cluster_tasks.add(task)
        task.add_done_callback(self._cluster_task_done)

    def _cluster_task_done(self, task: asyncio.Task[None]) -> None:
        self._cluster_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # only a store unavailable at shutdown ends one so: its event is nacked by drain()
            logger.debug("%s ended: %r", task.get_name(), task.exception())

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
