"""What becomes of an event that starts no saga: its claim undone, its dead letter stored
(invalid, rejected), its reason counted and reported, its delivery settled.

:class:`NotStarted` serves :class:`~sagaz.engine.admission.Admission`; every path ends with
the event's reason reported (``on_trigger_filtered``) before it is acked, so a shutdown that
cancels the ack's caller cannot skip the count.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from sagaz.engine.active_trigger import ActiveTrigger, PipelineState
from sagaz.engine.candidate import Candidate
from sagaz.engine.decoding import InvalidPayloadError
from sagaz.engine.recovery_attempts import (
    RECOVERY_EXHAUSTED,
    dead_letter,
    exhausted,
    fail_exhausted,
)
from sagaz.engine.settlement import Settlement
from sagaz.engine.work_item import WorkItem
from sagaz.events import AdmissionOutcome, AdmissionResult, Delivery, NotRun, Reason
from sagaz.records import SagaRecord
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus

__all__ = ["NotStarted"]


class NotStarted:
    """Admission's outcomes for events that start no saga (see the module)."""

    def __init__(self, state: PipelineState, settlement: Settlement) -> None:
        self.state = state
        self.settlement = settlement

    async def unclaim(self, c: Candidate, pending: SagaRecord | None, *, complete: bool) -> None:
        """Undo the claim of an event that starts no saga: its pending row goes first (a
        crash in between leaves a claimed key without a saga, which the next delivery takes
        over), then its inbox row is completed (filtered) or released (invalid)."""
        store = self.state.store
        if pending is not None:
            await store.delete_saga(c.saga_id)
        if not c.key:
            return
        if complete:
            await store.complete_inbox(c.trigger.trigger_id, c.key)
        else:
            await store.release_inbox(c.trigger.trigger_id, c.key)

    async def refused(
        self, trigger: ActiveTrigger, item: WorkItem, *, accepting: bool
    ) -> AdmissionResult:
        """The answer for ``item``, refused by a full queue (or released from a blocked put
        by shutdown: ``accepting`` is then false)."""
        state = self.state
        if not accepting:  # released from a blocked put by shutdown
            await self.forget(item, "interrupted")
            await self.settlement.nack(trigger, item.delivery)
            return AdmissionResult(AdmissionOutcome.REJECTED, error="the engine is stopping")
        if state.queue.strategy == "reject":
            await self.forget(item, Reason.REJECTED)
            await self.settlement.dead_letter(
                trigger,
                item.delivery,
                reason=Reason.REJECTED.value,
                error=f"queue full (queue_size={state.queue.capacity}, strategy=reject)",
                attempts=0,
                saga_id=item.saga_id,
            )
            await self.settlement.filtered(trigger, item.event, Reason.REJECTED)
            await self.settlement.ack(trigger, item.delivery)
            return AdmissionResult(AdmissionOutcome.REJECTED, item.saga_id, Reason.REJECTED)
        await self.drop(item, Reason.DROPPED_NEWEST)
        return AdmissionResult(AdmissionOutcome.DROPPED, item.saga_id, Reason.DROPPED_NEWEST)

    async def drop(self, item: WorkItem, reason: Reason) -> None:
        await self.forget(item, reason)
        await self.settlement.filtered(item.trigger, item.event, reason)
        if item.delivery.replay_of is not None:  # not replayed after all: keep its dead letter
            await self.settlement.nack(item.trigger, item.delivery)
        else:
            await self.settlement.ack(item.trigger, item.delivery)

    async def duplicate(self, c: Candidate) -> AdmissionResult:
        """Settle ``c``, whose key's saga completed already (or its event was settled)."""
        await self.settlement.filtered(c.trigger, c.event, Reason.DUPLICATE)
        await self.settlement.ack(c.trigger, c.delivery)
        return AdmissionResult(AdmissionOutcome.DUPLICATE, c.saga_id, Reason.DUPLICATE)

    async def drop_evicted(self, evicted: WorkItem) -> None:
        """Drop ``evicted``, pushed out of the queue by ``drop_oldest``: the admission that
        evicted it is not run again, so the drop waits for the store."""
        await self.state.outage.retry(functools.partial(self.drop, evicted, Reason.DROPPED_OLDEST))

    async def forget(self, item: WorkItem, why: Reason | Literal["interrupted"]) -> None:
        """Undo an acceptance that never started: the key may be delivered again. Whoever
        waits on its saga id (``fire_event`` returned it) is told ``why`` at once."""
        self.state.outcomes.settle(item.saga_id, NotRun(item.saga_id, why))
        store = self.state.store
        await store.delete_saga(item.saga_id)
        await store.release_inbox(item.trigger_id, item.key)
        if item.context_hash is not None and item.trigger.poll_name is not None:
            await store.complete_trigger_execution(item.trigger.poll_name, item.saga_id)

    async def invalid(
        self,
        trigger: ActiveTrigger,
        delivery: Delivery,
        event: Any,
        exc: BaseException,
        saga_id: str | None,
        *,
        drop: tuple[Candidate, SagaRecord | None] | None = None,
    ) -> AdmissionResult:
        """Dead-letter (unless ``keep_invalid`` says no), report and ack an invalid event;
        ``event`` is what listeners got as received: decoded, or the payload if undecodable.
        ``drop``: the claim to undo (:meth:`unclaim`), once the dead letter is stored."""
        details = exc.details if isinstance(exc, InvalidPayloadError) else None
        if delivery.keep_invalid is None or delivery.keep_invalid():
            await self.settlement.dead_letter(
                trigger,
                delivery,
                reason=Reason.INVALID.value,
                error=exc,
                attempts=0,
                saga_id=saga_id,
            )
        if drop is not None:
            await self.unclaim(*drop, complete=False)
        await self.settlement.filtered(trigger, event, Reason.INVALID)
        await self.settlement.ack(trigger, delivery)
        return AdmissionResult(
            AdmissionOutcome.INVALID, saga_id, Reason.INVALID, error=str(exc), details=details
        )

    async def exhausted(self, c: Candidate, taken: int) -> AdmissionResult:
        """Settle ``c``, whose saga its claim took over ``taken`` times, past
        ``max_recovery_attempts`` (:mod:`sagaz.engine.recovery_attempts`): dead-lettered with
        reason ``recovery_exhausted``, never run again. A saga still pending (its trigger
        method never completed) starts no saga, as an invalid event; a started one is
        written failed. The delivery is acked either way."""
        trigger, delivery, settlement = c.trigger, c.delivery, self.settlement
        error = exhausted(self.state, taken) or RECOVERY_EXHAUSTED
        with self.state.resume_failures.giving_up(c.saga_id):  # before any await
            # the row as it is now: it may have ended since it was read (given up here)
            current = await self.state.store.get_saga(c.saga_id)
            if current is None or current.status in TERMINAL_SAGA_STATUSES:
                return await self.duplicate(c)
            if current.status is not SagaStatus.PENDING:
                await fail_exhausted(
                    self.state, settlement, trigger, current, delivery, c.key, taken, error
                )
                await settlement.ack(trigger, delivery)
                return AdmissionResult(AdmissionOutcome.ACCEPTED, c.saga_id, error=error)
            await dead_letter(settlement, trigger, delivery, c.saga_id, taken, error)
            await self.unclaim(c, current, complete=False)
        await settlement.filtered(trigger, c.event, Reason.INVALID)
        await settlement.ack(trigger, delivery)
        return AdmissionResult(AdmissionOutcome.INVALID, c.saga_id, Reason.INVALID, error=error)
