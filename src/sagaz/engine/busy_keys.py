"""Deliveries whose inbox key another live worker holds: each waits here, un-acked, until
that worker finishes the saga (the claim is then a duplicate: ack) or its lease expires (the
claim takes it over), so an event whose saga is not terminal is never acked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sagaz._aio import TaskSet
from sagaz.engine.active_trigger import ActiveTrigger, PipelineState
from sagaz.engine.settlement import Settlement
from sagaz.events import Delivery

__all__ = ["BusyKeys"]


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
        busy: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """Claim the key of ``delivery`` again (``claim``: ``None`` while still busy) until
        the claim settles it; an error of the claim goes to ``failed`` (else it is reported,
        and the delivery nacked). ``busy`` is called after the first claim that finds the
        key busy, and after the next ones until it returns true."""
        self._watchers.spawn(
            self._await_other_owner(trigger, delivery, claim, failed, busy),
            f"sagaz-busy-{saga_id}",
        )

    async def _await_other_owner(
        self,
        trigger: ActiveTrigger,
        delivery: Delivery,
        claim: Callable[[], Awaitable[object | None]],
        failed: Callable[[Exception], Awaitable[object]] | None,
        busy: Callable[[], Awaitable[bool]] | None,
    ) -> None:
        state = self.state
        try:
            while True:
                await state.clock.sleep(max(0.05, state.config.lease_seconds / 4))
                if await claim() is not None:
                    return
                if busy is not None and await busy():
                    busy = None
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
