"""Settlement: acknowledging deliveries and dead-lettering events, after the store has them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any

from sagaz._aio import DONE
from sagaz.engine.active_trigger import ActiveTrigger, PipelineState
from sagaz.engine.dead_letters import dead_letter_record
from sagaz.events import Delivery, Reason
from sagaz.records import DeadLetterRecord
from sagaz.saga.listeners import notify

__all__ = ["Settlement"]

logger = logging.getLogger(__name__)


class Settlement:
    """Acks, nacks and dead letters. Broker acks and nacks are shielded from cancellation and
    tracked, so a shutdown lets them finish before it closes the sources (:meth:`drain`)."""

    def __init__(self, state: PipelineState) -> None:
        self.state = state
        self._under_way: set[asyncio.Task[None]] = set()

    def ack(self, trigger: ActiveTrigger, delivery: Delivery) -> Awaitable[None]:
        """Acknowledge to the source (failures are reported, never raised): an awaitable,
        :data:`~sagaz._aio.DONE` when the delivery settled in the call.

        A replayed dead letter is settled too, so it is deleted: its saga completed, its event
        was filtered or a duplicate, or it was dead-lettered again (the new dead letter
        replaces it)."""
        source = trigger.source
        acking: Awaitable[None]
        if source is not None and source.redeliverable and not source.settles_locally:
            acking = self._ack_detached(trigger, delivery)
        else:  # nothing to lose: no task, nor a coroutine when the source settles in the call
            # (a Kafka record's ack, an in-process event's): once per event
            try:
                settling = delivery.ack()
            except Exception as exc:
                acking = self.report(trigger, exc, delivery.payload)
            else:
                acking = settling if settling is DONE else self._settle(trigger, delivery, settling)
        if delivery.replay_of is not None:
            return self._delete_replayed(trigger, delivery, delivery.replay_of, acking)
        return acking

    async def _ack_detached(self, trigger: ActiveTrigger, delivery: Delivery) -> None:
        """Ack a delivery that a lost ack would have redelivered: in a task of its own, which
        finishes even if our caller is cancelled."""
        await asyncio.shield(self._detach(self._settle(trigger, delivery, delivery.ack())))

    async def _delete_replayed(
        self, trigger: ActiveTrigger, delivery: Delivery, replay_of: int, acking: Awaitable[None]
    ) -> None:
        """Await ``acking``, then delete the dead letter ``replay_of`` that ``delivery``
        replays."""
        await acking
        try:
            await self.state.store.delete_dead_letter(replay_of)
        except Exception as exc:
            await self.report(trigger, exc, delivery.payload)

    async def nack(self, trigger: ActiveTrigger, delivery: Delivery) -> None:
        """Leave the delivery for redelivery (shutdown, cancellation)."""
        await asyncio.shield(self._detach(self._settle(trigger, delivery, delivery.nack(True))))

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the acks and nacks under way."""
        if self._under_way:
            await asyncio.wait(set(self._under_way), timeout=timeout)

    async def _settle(
        self, trigger: ActiveTrigger, delivery: Delivery, settling: Awaitable[None]
    ) -> None:
        try:
            await settling
        except Exception as exc:
            await self.report(trigger, exc, delivery.payload)

    def _detach(self, settling: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(settling)
        self._under_way.add(task)
        task.add_done_callback(self._under_way.discard)
        return task

    async def report(self, trigger: ActiveTrigger, error: BaseException, event: Any) -> None:
        """Log an error and tell the listeners (``on_trigger_error``)."""
        self.state.metrics.source_errors[trigger.trigger_id] += 1
        logger.error(
            "trigger %s: %s",
            trigger.trigger_id,
            error,
            exc_info=error,
            extra={"trigger": trigger.trigger_id, "saga_name": trigger.saga_name},
        )
        await notify(trigger.listeners, "on_trigger_error", trigger.saga_name, error, event)

    async def filtered(self, trigger: ActiveTrigger, event: Any, reason: Reason) -> None:
        """Count and report an event that does not become a saga."""
        self.state.metrics.count_not_started(trigger.trigger_id, reason.value)
        if trigger.listeners:
            await notify(trigger.listeners, "on_trigger_filtered", trigger.saga_name, event, reason)

    async def dead_letter(
        self,
        trigger: ActiveTrigger,
        delivery: Delivery,
        *,
        reason: str,
        error: BaseException | str,
        attempts: int,
        saga_id: str | None = None,
    ) -> DeadLetterRecord:
        """Store a dead letter (the delivery exactly, see :mod:`sagaz.engine.dead_letters`),
        publish it to the source's broker if configured, notify."""
        record = dead_letter_record(
            trigger, delivery, reason=reason, error=error, attempts=attempts, saga_id=saga_id
        )
        return await self.keep_dead_letter(trigger, record, delivery)

    async def keep_dead_letter(
        self, trigger: ActiveTrigger, record: DeadLetterRecord, delivery: Delivery | None = None
    ) -> DeadLetterRecord:
        """Store the dead letter ``record`` and publish it with its ``delivery`` (when there
        is one) as :meth:`dead_letter` does; notify. For an event kept without a delivery
        that can be rebuilt (a pending saga's, :mod:`sagaz.engine.recovery`)."""
        record.id = await self.state.store.add_dead_letter(record)
        self.state.metrics.dead_lettered[trigger.trigger_id] += 1
        if trigger.dead_letter_topic and trigger.source is not None and delivery is not None:
            try:
                await trigger.source.publish_dead_letter(delivery, record)
            except Exception as exc:  # the store record exists: report, do not lose the event
                await self.report(trigger, exc, delivery.payload)
        logger.warning(
            "dead-lettered an event of %s: %s",
            trigger.trigger_id,
            record.error,
            extra={
                "trigger": trigger.trigger_id,
                "reason": record.reason,
                "saga_id": record.saga_id,
                "message_id": record.meta.get("message_id"),
            },
        )
        if trigger.listeners:
            await notify(trigger.listeners, "on_dead_letter", trigger.saga_name, record)
        return record
