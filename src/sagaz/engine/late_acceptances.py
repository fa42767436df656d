"""Acceptances finished after their admission was cancelled, once the claim had made the key
this worker's (:class:`LateAcceptances`).

A source cancels an admission under way when it gives the event up: a Kafka partition revoked
by a rebalance cancels its emits; a webhook request, a cron tick, a poll or a ``fire()`` is
cancelled when its caller is (a client that went away, a timeout). If the inbox claim had
already made the key ours (claimed, or taken over), a nack would leave the key, and the saga's
pending or taken-over row, owned by this worker, their leases renewed by its heartbeat while
no saga runs here: the event's next delivery (the partition's new owner) would find the key
busy and wait for ever, and the recovery loop would not take the pending row of an event no
one delivers again (it keeps the event) before this process ends. So the acceptance is
finished in a task of its own instead, whatever the source: the saga runs here, once (a
broker's ack may be ignored, the next delivery is then a duplicate; the caller of a source
that does not redeliver got no answer, yet the store had accepted its event). While the
engine stops, the delivery is nacked as before: its heartbeat stops too and it releases its
leases, so the pending row (which keeps an event no one delivers again) is the recovery
loop's, on any instance, at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

from sagaz._aio import TaskSet
from sagaz.engine.candidate import Candidate
from sagaz.engine.settlement import Settlement
from sagaz.events import AdmissionResult
from sagaz.records import ClaimOutcome, EventClaim

__all__ = ["OURS", "LateAcceptances"]

#: the claims that make the key this worker's
OURS = (ClaimOutcome.CLAIMED, ClaimOutcome.TAKEN_OVER)

Accept = Callable[[Candidate, datetime, EventClaim], Awaitable[AdmissionResult]]
Failed = Callable[[Candidate, Exception], Awaitable[AdmissionResult]]


class LateAcceptances:
    """The tasks finishing acceptances whose admission was cancelled (see the module)."""

    def __init__(self, settlement: Settlement, accept: Accept, failed: Failed) -> None:
        self.settlement = settlement
        self._accept = accept  # unbounded, past the queue's bound (accepted before)
        self._failed = failed
        self._tasks = TaskSet()

    def take(self, c: Candidate, lease: datetime, claim: EventClaim | None) -> bool:
        """Finish accepting ``c`` in a task of its own if ``claim`` made its key ours;
        whether it did (else its caller nacks the delivery). ``c.handed_over`` says so to
        the callers up the stack, which then leave the delivery alone."""
        if claim is None or claim.outcome not in OURS:
            return False
        c.handed_over = True
        self._tasks.spawn(self._finish(c, lease, claim), f"sagaz-accept-{c.saga_id}")
        return True

    async def _finish(self, c: Candidate, lease: datetime, claim: EventClaim) -> None:
        try:
            await self._accept(c, lease, claim)
        except asyncio.CancelledError:
            await self.settlement.nack(c.trigger, c.delivery)
            raise
        except Exception as exc:
            await self._failed(c, exc)

    async def close(self) -> None:
        """Cancel what is still being accepted (those deliveries are nacked)."""
        await self._tasks.close()
