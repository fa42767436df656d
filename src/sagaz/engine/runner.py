"""Running one admitted event: its saga, retries of a compensated saga, dead letters."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable

from sagaz._aio import DONE, TaskSet
from sagaz.engine.active_trigger import PipelineState
from sagaz.engine.run_errors import RunErrors
from sagaz.engine.settle_errors import SettleErrors, Unsettled
from sagaz.engine.settlement import Settlement
from sagaz.engine.work_item import WorkItem
from sagaz.events import NotRun
from sagaz.exceptions import LeaseLostError, StoreUnavailableError
from sagaz.records import SagaRecord
from sagaz.saga.cancellation import Cancellation
from sagaz.saga.execution import SagaExecution
from sagaz.saga.result import SagaResult
from sagaz.types import SagaStatus

__all__ = ["SagaRunner"]

logger = logging.getLogger(__name__)

#: the level of the line logged when a saga ends; any other status (a compensation failed
#: too) is a warning
_LEVELS = {
    SagaStatus.COMPLETED: logging.DEBUG,  # thousands a second: the normal case is not news
    SagaStatus.COMPENSATED: logging.INFO,  # retried or dead-lettered
    SagaStatus.CANCELLED: logging.INFO,  # an operator's decision
}

#: read once: on Python 3.11 ``SagaStatus.COMPLETED`` goes through ``EnumType.__getattr__``'s
#: hook (about 0.1 µs), once per event
_COMPLETED = SagaStatus.COMPLETED


def _log_fields(item: WorkItem) -> dict[str, str | None]:
    """The ``extra=`` fields of a log line about ``item``: trigger, saga id, message id."""
    return {
        "trigger": item.trigger_id,
        "saga_id": item.saga_id,
        "message_id": item.delivery.meta.message_id,
    }


class SagaRunner:
    """Runs the saga of one work item, retries a compensated saga, dead-letters the rest, and
    settles (inbox completed, then ack) only after the terminal state is in the store."""

    def __init__(self, state: PipelineState, settlement: Settlement) -> None:
        self.state = state
        self.settlement = settlement
        self._retries = TaskSet()
        #: runs a store error (not an outage) ended: held and run again (:mod:`.run_errors`)
        self.errors = RunErrors(state, settlement, self._settle)
        #: ended sagas whose settling a store error (not an outage) interrupted: held and
        #: settled again (:mod:`.settle_errors`)
        self.settle_errors = SettleErrors(state, settlement, self._settle)
        #: what becomes of the delivery of a run that lost its saga to another worker
        #: (the engine's :meth:`Admission.watch_taken_over`); unset: nacked
        self.taken_over: Callable[[WorkItem], None] | None = None

    async def run(self, item: WorkItem) -> None:
        """Run ``item``'s saga to a terminal state and settle it. Cancellation never acks.

        While the store is unavailable the saga waits for it, keeping its delivery un-acked,
        and then resumes from its last checkpoint (see :mod:`sagaz.engine.store_outage`);
        a run that another error ended is held and run again, then dead-lettered (see
        :mod:`sagaz.engine.run_errors`), and so is the settling of a saga that ended (see
        :mod:`sagaz.engine.settle_errors`)."""
        # no lambda in this coroutine (functools.partial instead): a variable a closure
        # captures is a cell made at every call, kept across every wait on the store
        state = self.state
        trigger = item.trigger
        try:
            # set once by a scheduled retry: this run starts a new attempt
            new_attempt, item.new_attempt = item.new_attempt, False
            known: SagaRecord | None = item.pending
            if known is not None:  # a row taken over: its old owner may have gone on since
                known = await self._taken_over(item, known)
            elif item.created:
                known = item.pending_row(state.worker_id)
            cancellations = state.cancellations
            cancellation = cancellations.track(item.saga_id)
            try:
                execution = self._execution(item, cancellation)
                try:  # the saga awaited here, not in a coroutine of its own: each wake-up of
                    # a store call resumes every coroutine between this task and the store
                    result = await execution.run(
                        item.context, item.saga_id, new_attempt=new_attempt, known=known
                    )
                    item.inbox_completed = execution.inbox_completed
                except StoreUnavailableError as exc:  # wait for the store, then resume
                    result = await self._resumed(item, execution, new_attempt, exc)
            finally:
                cancellations.untrack(item.saga_id)
        except asyncio.CancelledError:
            raise
        except LeaseLostError as exc:  # another worker took the saga over: it settles the event
            self._lease_lost(item, exc)
            if self.taken_over is not None:  # held until the new owner finished it
                self.taken_over(item)
            else:
                await self.settlement.nack(trigger, item.delivery)
            state.outcomes.settle(item.saga_id, NotRun(item.saga_id, "interrupted", str(exc)))
            return
        except Exception as exc:  # not an outage: held, run again, dead-lettered at last
            await self.errors.hold(item, exc)
            return
        if logger.isEnabledFor(_LEVELS.get(result.status, logging.WARNING)):
            self._log_result(item, result)
        if result.status is _COMPLETED:  # (first: the usual case)
            state.metrics.completed[trigger.trigger_id] += 1
            try:  # no closure and no extra coroutine on the common path: once per event
                settling = self._settle(item)
                if settling is not DONE:  # (DONE: acked in the call, nothing to wait for)
                    await settling
            except Exception as exc:  # an outage waited out, another store error held
                await self.settle_errors.failed_first(Unsettled(item, result), exc)
                return
            state.outcomes.settle(item.saga_id, result)
            return
        if result.status is SagaStatus.CANCELLED:  # an operator's decision: never retried
            state.metrics.cancelled[trigger.trigger_id] += 1
            await self.settle_errors.settle(Unsettled(item, result))
            return
        if result.status is SagaStatus.COMPENSATED:
            state.metrics.compensated[trigger.trigger_id] += 1
            if item.attempt <= trigger.max_retries and not item.already_terminal:
                self._schedule_retry(item)
                return
        else:
            state.metrics.failed[trigger.trigger_id] += 1
        dead_letter = functools.partial(
            self.settlement.dead_letter,
            trigger,
            item.delivery,
            reason="saga_failed" if result.status is SagaStatus.FAILED else "retries_exhausted",
            error=result.error or result.status.value,
            attempts=item.attempt,
            saga_id=item.saga_id,
        )
        await self.settle_errors.settle(Unsettled(item, result, dead_letter))

    def _execution(self, item: WorkItem, cancellation: Cancellation | None) -> SagaExecution:
        """A run of ``item``'s saga."""
        state = self.state
        trigger = item.trigger
        # saga, store, listeners, clock, trigger_id, event, owner, lease (a fresh one for each
        # saga row written), delivery, cancellation, inbox: by position (ten keywords cost
        # ~0.8 µs)
        return SagaExecution(
            item.saga if item.saga is not None else trigger.saga,
            state.store,
            trigger.listeners,
            state.clock,
            trigger.trigger_id,
            None,
            state.worker_id,
            state.lease_until,
            item.delivery,
            cancellation,
            # a completed saga completes its inbox row in the same store operation
            (trigger.trigger_id, item.key) if item.key else None,
        )

    async def _resumed(
        self,
        item: WorkItem,
        execution: SagaExecution,
        new_attempt: bool,
        exc: StoreUnavailableError,
    ) -> SagaResult:
        """Run the saga again once the store is back, as often as it goes away meanwhile:
        each run resumes it from its last checkpoint (the step whose checkpoint failed runs
        again)."""
        while True:
            # a new attempt stored as running is not started over again: it resumes
            new_attempt = new_attempt and not execution.began
            await self.state.outage.wait(exc)
            execution = self._execution(item, execution.cancellation)
            try:  # without a known row: what the store holds now is read again
                result = await execution.run(item.context, item.saga_id, new_attempt=new_attempt)
            except StoreUnavailableError as again:
                exc = again
                continue
            item.inbox_completed = execution.inbox_completed
            return result

    async def _taken_over(self, item: WorkItem, pending: SagaRecord) -> SagaRecord:
        """The row to start ``item``'s saga from: admission's ``pending`` row unless the
        saga moved on in the store since admission took it over (its old owner went on
        until the takeover): then the row as stored now."""
        stored = await self.state.store.get_saga(item.saga_id)
        if stored is None or stored.status is SagaStatus.PENDING:
            return pending
        return stored

    def _lease_lost(self, item: WorkItem, exc: LeaseLostError) -> None:
        """Count and log a run stopped because another worker owns its saga now."""
        self.state.metrics.lease_lost[item.trigger_id] += 1
        logger.warning(
            "saga %s was taken over by another worker (this one's lease had expired): its "
            "run here stops, unacked, until the new owner finished it",
            item.saga_id,
            extra={**_log_fields(item), "worker_id": self.state.worker_id},
        )

    @staticmethod
    def _log_result(item: WorkItem, result: SagaResult) -> None:
        status = result.status
        logger.log(
            _LEVELS.get(status, logging.WARNING),
            "saga %s (%s, attempt %d) %s%s",
            item.saga_id,
            item.trigger.saga_name,
            result.attempt,
            status.value,
            f": {result.error}" if result.error else "",
            extra={
                **_log_fields(item),
                "saga_name": item.trigger.saga_name,
                "attempt": result.attempt,
                "status": status.value,
            },
        )

    def _settle(self, item: WorkItem) -> Awaitable[None]:
        """Complete what the store still holds open for ``item``, then ack it."""
        if item.inbox_completed and item.context_hash is None:
            # the usual case: the inbox row was completed with the saga's completed state
            return self.settlement.ack(item.trigger, item.delivery)
        return self._settle_in_store(item)

    async def _settle_in_store(self, item: WorkItem) -> None:
        store = self.state.store
        if not item.inbox_completed:  # else written with the saga's completed state
            await store.complete_inbox(item.trigger_id, item.key)
            item.inbox_completed = True  # not again if what follows fails (settle_errors)
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
        item.created = False
        item.new_attempt = True
        self.state.metrics.retried[trigger.trigger_id] += 1
        logger.info(
            "retrying saga %s (attempt %d) in %.2fs",
            item.saga_id,
            item.attempt,
            delay,
            extra=_log_fields(item),
        )
        self._retries.spawn(self._retry_later(item, delay), f"sagaz-retry-{item.saga_id}")

    async def _retry_later(self, item: WorkItem, delay: float) -> None:
        """Queue ``item`` again after ``delay``, or sooner when an operator cancels its saga
        (it then starts cancelled: see :meth:`SagaCancellations.retry_waits`)."""
        cancellations = self.state.cancellations
        woken = asyncio.Event()
        cancellations.retry_waits(item.saga_id, woken.set)
        try:
            if not woken.is_set():
                backoff = asyncio.ensure_future(self.state.clock.sleep(delay))
                wake = asyncio.ensure_future(woken.wait())
                try:
                    await asyncio.wait((backoff, wake), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    backoff.cancel()
                    wake.cancel()
        except asyncio.CancelledError:
            await self.settlement.nack(item.trigger, item.delivery)
            raise
        finally:
            cancellations.retry_started(item.saga_id)
        self.state.queue.put_nowait_unbounded(item)

    @property
    def pending_retries(self) -> int:
        """Retries waiting for their backoff."""
        return len(self._retries)

    async def close(self) -> None:
        """Cancel waiting retries, held runs and held settlings (their deliveries are nacked
        for redelivery)."""
        await self._retries.close()
        await self.errors.close()
        await self.settle_errors.close()
