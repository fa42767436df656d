"""``ClusterLimits``: the limits of a trigger with ``limit_scope="cluster"``, kept in the store.

Every instance of the app on one store shares them:

- a ``concurrency_key`` is a named lease ``sagaz.key/<trigger_id>/<key>`` (the key as ``str``)
  held by the saga running for it, renewed while it runs, released at its terminal state, and
  taken over by another instance once it expires (its holder died);
- ``max_concurrent_sagas`` is ``N`` slot leases ``sagaz.slot/<trigger_id>/<i>``: a saga holds
  one while it runs;
- ``rate_limit_per_second`` is a token bucket in the store (``take_rate_token``).

The waits are in real time (leases and buckets live on the store's clock), whatever the
engine's clock. :class:`~sagaz.engine.backpressure.BackpressureQueue` decides when to ask;
this module only asks the store.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sagaz.abc import SagaStore
from sagaz.engine.store_outage import StoreOutage
from sagaz.engine.work_item import WorkItem
from sagaz.exceptions import StoreUnavailableError

__all__ = ["CLUSTER_POLL_MAXIMUM", "CLUSTER_POLL_MINIMUM", "ClusterLimits"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

CLUSTER_POLL_MINIMUM = 0.005
"""Seconds before asking the store again for a key or slot held elsewhere (doubling)..."""
CLUSTER_POLL_MAXIMUM = 0.1
"""...up to this many seconds between two asks."""


class ClusterLimits:
    """The store-kept concurrency key, slots and rate limit of one trigger.

    >>> limits = ClusterLimits("orders.on_order", store, "worker-1", outage=outage,
    ...                        lease_seconds=30, keys=True, slots=10, rate=50.0)  # doctest: +SKIP
    """

    def __init__(
        self,
        trigger_id: str,
        store: SagaStore,
        worker_id: str,
        *,
        outage: StoreOutage,
        lease_seconds: float,
        keys: bool,
        slots: int | None,
        rate: float | None,
        burst: int = 1,
    ) -> None:
        self.trigger_id = trigger_id
        self.store = store
        self.worker_id = worker_id
        self.outage = outage
        self.lease_seconds = lease_seconds
        #: whether the concurrency key is held in the store
        self.keys = keys
        #: ``max_concurrent_sagas`` counted in the store (``None``: not limited there)
        self.slots = slots
        #: ``rate_limit_per_second`` shared through the store (``None``: not limited there)
        self.rate = rate
        self.burst = burst
        #: lease name -> holder of every lease this process holds (renewed by :meth:`renew`)
        self.held: dict[str, str] = {}
        #: slot lease name -> slot number, and the slots released here since the last take
        self._slots = {self.slot_lease(n): n for n in range(slots or 0)}
        self._freed: list[int] = []
        self._closing = asyncio.Event()

    # -- names -----------------------------------------------------------------------------
    def key_lease(self, key: object) -> str:
        """The lease name of a concurrency key."""
        return f"sagaz.key/{self.trigger_id}/{key}"

    def slot_lease(self, slot: int) -> str:
        """The lease name of slot number ``slot``."""
        return f"sagaz.slot/{self.trigger_id}/{slot}"

    @property
    def bucket(self) -> str:
        """The name of the trigger's token bucket."""
        return f"sagaz.rate/{self.trigger_id}"

    # -- taking ----------------------------------------------------------------------------
    async def take_key(self, item: WorkItem) -> bool:
        """Wait until ``item``'s concurrency key is held for it; ``False``: ``item`` was
        evicted from the queue meanwhile (nothing taken)."""
        name = self.key_lease(item.concurrency_key)
        holder = self._holder(item)
        wait = CLUSTER_POLL_MINIMUM
        while not await self._ask(functools.partial(self._acquire, name, holder)):
            if item.evicted:
                return False
            await asyncio.sleep(wait)
            wait = min(wait * 2, CLUSTER_POLL_MAXIMUM)
        self.held[name] = holder
        item.cluster_leases = (*item.cluster_leases, name)
        return True

    async def take_slot(self, item: WorkItem) -> bool:
        """Wait until one of the trigger's slots is held for ``item``; ``False``: ``item`` was
        evicted from the queue meanwhile (no slot taken)."""
        assert self.slots is not None
        holder = self._holder(item)
        wait = CLUSTER_POLL_MINIMUM
        while True:
            first = random.randrange(self.slots)  # spread the instances over the slots
            freed, self._freed = self._freed, []  # released here lately: likely still free
            for slot in [*freed, *((first + k) % self.slots for k in range(self.slots))]:
                name = self.slot_lease(slot)
                if name in self.held:  # ours, for another saga: no need to ask
                    continue
                if await self._ask(functools.partial(self._acquire, name, holder)):
                    self.held[name] = holder
                    item.cluster_leases = (*item.cluster_leases, name)
                    return True
            if item.evicted:
                return False
            await asyncio.sleep(wait)
            wait = min(wait * 2, CLUSTER_POLL_MAXIMUM)

    async def take_token(self) -> None:
        """Wait for one token of the shared bucket."""
        assert self.rate is not None
        rate = self.rate
        while True:
            wait = await self._ask(
                lambda: self.store.take_rate_token(self.bucket, rate, self.burst)
            )
            if not wait:
                return
            await asyncio.sleep(wait)  # the store said how long: nothing to wake us earlier

    # -- holding ---------------------------------------------------------------------------
    async def release(self, item: WorkItem) -> None:
        """Give up the leases ``item`` holds (its saga reached its terminal state, or will
        not start here); a failure leaves them to expire."""
        names, item.cluster_leases = item.cluster_leases, ()
        await asyncio.gather(*(self._release(name, item) for name in names))

    async def _release(self, name: str, item: WorkItem) -> None:
        holder = self.held.pop(name, None)
        if holder is None:
            return
        try:
            await self.store.release_lease(name, holder)
        except Exception as exc:  # it expires by itself within lease_seconds
            logger.warning(
                "could not release %s (it expires within %ss): %s",
                name,
                self.lease_seconds,
                exc,
                extra={"trigger": self.trigger_id, "saga_id": item.saga_id},
            )
            return
        slot = self._slots.get(name)
        if slot is not None:
            self._freed.append(slot)

    async def renew(self) -> None:
        """Extend every lease held here (called by the engine's heartbeat)."""
        for name, holder in list(self.held.items()):
            if await self.store.renew_lease(name, holder, self._ttl):
                continue
            if self.held.get(name) == holder:  # not released meanwhile: lost
                logger.warning(
                    "the cluster lease %s expired before it was renewed: another instance may "
                    "run beside this saga; raise lease_seconds if the store is slow to answer",
                    name,
                    extra={"trigger": self.trigger_id, "worker_id": self.worker_id},
                )

    async def close(self) -> None:
        """Stop waiting for the store and release every lease still held (shutdown)."""
        self._closing.set()
        held, self.held = self.held, {}
        for name, holder in held.items():
            try:
                await self.store.release_lease(name, holder)
            except Exception:  # it expires by itself
                logger.debug("could not release %s at shutdown", name, exc_info=True)

    # -- internals -------------------------------------------------------------------------
    @property
    def _ttl(self) -> float:
        return self.lease_seconds

    async def _acquire(self, name: str, holder: str) -> bool:
        return await self.store.acquire_lease(name, holder, self._ttl)

    def _holder(self, item: WorkItem) -> str:
        """The holder of ``item``'s leases: this worker and this run of its saga."""
        if item.cluster_holder is None:
            item.cluster_holder = f"{self.worker_id}/{item.saga_id}/{uuid.uuid4().hex[:8]}"
        return item.cluster_holder

    async def _ask(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``; while the store is unavailable wait for it, and after another
        error try again a little later (the event keeps waiting: it is not lost)."""
        while True:
            try:
                return await operation()
            except StoreUnavailableError as exc:
                await self.outage.wait(exc, until=self._closing)
                if self._closing.is_set():
                    raise
            except Exception:
                logger.exception(
                    "asking the store for a cluster limit of %s failed; trying again",
                    self.trigger_id,
                    extra={"trigger": self.trigger_id},
                )
                await asyncio.sleep(CLUSTER_POLL_MAXIMUM)
