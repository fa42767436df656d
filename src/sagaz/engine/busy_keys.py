"""Deliveries whose inbox key another live worker holds: each waits here, un-acked, until
that worker finishes the saga (the claim is then a duplicate: ack) or its lease expires (the
claim takes it over), so an event whose saga is not terminal is never acked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from sagaz._aio import TaskSet
from sagaz.engine.active_trigger import ActiveTrigger, PipelineState
from sagaz.engine.settlement import Settlement
from sagaz.events import Delivery

__all__ = ["BusyKeys"]

logger = logging.getLogger(__name__)


class BusyKeys:
    """One task per delivery whose key is busy, claiming it again every quarter lease."""

    def __init__(self, state: PipelineState, settlement: Settlement) -> None:
        self.state = state
        self.settlement = settlement
        self._watchers = TaskSet()

    def watch(
        self,
        trigger: ActiveTrigger,
        delivery: Delivery,
        saga_id: str,
        claim: Callable[[], Awaitable[object | None]],
        failed: Callable[[Exception], Awaitable[object]] | None = None,
    ) -> None:
        """Claim the key of ``delivery`` again (``claim``: ``None`` while still busy) until
        the claim settles it; an error of the claim goes to ``failed`` (else it is reported,
        and the delivery nacked). Once the key is found busy, this worker's lease on the
        saga ``saga_id`` is given back (:meth:`let_go_of_saga`)."""
        self._watchers.spawn(
            self._await_other_owner(trigger, delivery, saga_id, claim, failed),
            f"sagaz-busy-{saga_id}",
        )

    async def let_go_of_saga(self, saga_id: str) -> bool:
        """Another live worker holds the key of ``saga_id``: give back this worker's lease on
        the saga, if it holds one and does not run it here; whether that was done.

        The takeover of a key and the claim of its saga are two store calls, and the old
        owner, alive after all (frozen past its lease, then thawed), may renew the saga's
        lease between them. The new owner then holds the key and waits for the saga, while
        the old one, which claimed the key but runs no saga for it (its claim's answer was
        lost, a store error held it), waits for the key: each renewing what it holds, the
        event's saga would never run. Given back (recoverable a lease from now, claimable
        by the key's holder at once), the saga is the key holder's next claim's. A no-op
        write (fenced by owner) where the saga is not this worker's, once per busy key."""
        state = self.state
        if state.cancellations.running(saga_id):
            return True  # its run goes on; the other worker's claims wait for its end
        try:
            await state.store.release_saga(saga_id, state.worker_id, state.lease_until())
        except asyncio.CancelledError:
            raise
        except Exception:  # (the store away, or refusing): given back after the next claim
            logger.debug("giving back saga %s failed", saga_id, exc_info=True)
            return False
        return True

    async def _await_other_owner(
        self,
        trigger: ActiveTrigger,
        delivery: Delivery,
        saga_id: str,
        claim: Callable[[], Awaitable[object | None]],
        failed: Callable[[Exception], Awaitable[object]] | None,
    ) -> None:
        state = self.state
        holding = True  # perhaps: this worker's lease on the saga, not yet given back
        try:
            while True:
                await state.clock.sleep(max(0.05, state.config.lease_seconds / 4))
                if await claim() is not None:
                    return
                if holding:
                    holding = not await self.let_go_of_saga(saga_id)
        except asyncio.CancelledError:
            await self.settlement.nack(trigger, delivery)
            raise
        except Exception as exc:
            if failed is not None:
                await failed(exc)
                return
            await self.settlement.report(trigger, exc, delivery.payload)
            await self.settlement.nack(trigger, delivery)

    async def close(self) -> None:
        """Stop watching (the deliveries are nacked for redelivery)."""
        await self._watchers.close()
