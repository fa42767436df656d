"""Running one admitted event: its saga, retries of a compensated saga, dead letters."""

from __future__ import annotations

import asyncio
import logging
import random

from sagaz.engine.active_trigger import PipelineState
from sagaz.engine.settlement import Settlement
from sagaz.engine.work_item import WorkItem
from sagaz.events import NotRun
from sagaz.saga.execution import SagaExecution
from sagaz.types import SagaStatus

__all__ = ["SagaRunner"]

logger = logging.getLogger(__name__)


class SagaRunner:
    """Runs the saga of one work item, retries a compensated saga, dead-letters the rest, and
    settles (inbox completed, then ack) only after the terminal state is in the store."""

    def __init__(self, state: PipelineState, settlement: Settlement) -> None:
        self.state = state
        self.settlement = settlement
        self._retries: set[asyncio.Task[None]] = set()

    async def run(self, item: WorkItem) -> None:
        """Run ``item``'s saga to a terminal state and settle it. Cancellation never acks."""
        state = self.state
        trigger = item.trigger
        execution = SagaExecution(
            item.saga if item.saga is not None else trigger.saga,
            store=state.store,
            listeners=trigger.listeners,
            clock=state.clock,
            trigger_id=trigger.trigger_id,
            owner=state.worker_id,
            lease_until=state.lease_until(),
        )
        try:
            result = await execution.run(
                item.context,
                item.saga_id,
                new_attempt=self._take_new_attempt(item),
                known=item.pending,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store failed: leave the event for redelivery/recovery
            await self.settlement.report(trigger, exc, item.event)
            await self.settlement.nack(trigger, item.delivery)
            state.outcomes.settle(item.saga_id, NotRun(item.saga_id, "interrupted", str(exc)))
            return
        if result.status is SagaStatus.COMPLETED:
            state.metrics.completed[trigger.trigger_id] += 1
            await self._settle(item)
            state.outcomes.settle(item.saga_id, result)
            return
        if result.status is SagaStatus.COMPENSATED:
            state.metrics.compensated[trigger.trigger_id] += 1
            if item.attempt <= trigger.max_retries and not item.already_terminal:
                self._schedule_retry(item)
                return
        else:
            state.metrics.failed[trigger.trigger_id] += 1
        await self.settlement.dead_letter(
            trigger,
            item.delivery,
            reason="saga_failed" if result.status is SagaStatus.FAILED else "retries_exhausted",
            error=result.error or result.status.value,
            attempts=item.attempt,
            saga_id=item.saga_id,
        )
        await self._settle(item)
        state.outcomes.settle(item.saga_id, result)

    @staticmethod
    def _take_new_attempt(item: WorkItem) -> bool:
        """Whether this run starts a new attempt (set once by a scheduled retry)."""
        new_attempt, item.new_attempt = item.new_attempt, False
        return new_attempt

    async def _settle(self, item: WorkItem) -> None:
        store = self.state.store
        await store.complete_inbox(item.trigger_id, item.key)
        if item.context_hash is not None and item.trigger.poll_name is not None:
            await store.complete_trigger_execution(item.trigger.poll_name, item.saga_id)
        await self.settlement.ack(item.trigger, item.delivery)

    def _schedule_retry(self, item: WorkItem) -> None:
        trigger = item.trigger
        delay = trigger.backoff(item.attempt)
        jitter = self.state.config.retry_jitter
        if delay and jitter:
            delay *= 1 + random.uniform(-jitter, jitter)
        item.attempt += 1
        item.pending = None
        item.new_attempt = True
        self.state.metrics.retried[trigger.trigger_id] += 1
        logger.info(
            "retrying saga %s (attempt %d) in %.2fs",
            item.saga_id,
            item.attempt,
            delay,
            extra={"saga_id": item.saga_id, "trigger": trigger.trigger_id},
        )
        task = asyncio.create_task(
            self._retry_later(item, delay), name=f"sagaz-retry-{item.saga_id}"
        )
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _retry_later(self, item: WorkItem, delay: float) -> None:
        try:
            await self.state.clock.sleep(delay)
        except asyncio.CancelledError:
            await self.settlement.nack(item.trigger, item.delivery)
            raise
        self.state.queue.put_nowait_unbounded(item)

    @property
    def pending_retries(self) -> int:
        """Retries waiting for their backoff."""
        return len(self._retries)

    async def close(self) -> None:
        """Cancel waiting retries (their deliveries are nacked for redelivery)."""
        for task in list(self._retries):
            task.cancel()
        if self._retries:
            await asyncio.gather(*self._retries, return_exceptions=True)
