"""Sagas whose run an error of the store (not an outage) interrupted, held and run again
(:class:`RunErrors`).

An outage (:class:`~sagaz.exceptions.StoreUnavailableError`) is waited for where it happens
(:mod:`sagaz.engine.store_outage`). Any other error that ends a run (a context the store cannot
encode, a checkpoint it refuses, a bug) was answered with a nack, which is neither defined nor
bounded (see :mod:`sagaz.engine.store_errors`): a Kafka partition's commits stopped there,
RabbitMQ and SQS delivered the event again at once, and the event of a source that does not
redeliver (``fire_event``, a webhook, cron) left its saga pending or running, owned by this
worker (its lease renewed by the heartbeat) until the process stopped.

So the delivery is held, neither acked nor nacked, as admission holds an event whose
admission failed (the same policy, :class:`~sagaz.engine.store_errors.HeldEvents`), and the
saga is queued again after the backoff: that run resumes it from its last checkpoint (a new
attempt that never began starts again). An outage meanwhile is waited for and not counted.
After :attr:`RunErrors.attempts` failed runs (the first included), or after the first when
its error is a value the store cannot keep (:class:`~sagaz.exceptions.UnstorableValueError`:
it fails every run alike), the event is dead-lettered
with the last error (reason ``store_error``, with its traceback), tried again until the store
has it; then its saga gets a terminal row: ``failed``, with the error and the context of its
last checkpoint (the one the store has: the context the run had may be what the store cannot
encode), and its inbox row is completed in the same write, as a dead-lettered saga's is; then
the delivery is acked. ``sagaz dlq replay`` runs the saga again, as a new attempt. If the
store refuses that settling too (the saga had ended before, compensated between attempts, and
its inbox row's completion is refused), the failure is reported, an inbox row still open is
released (:meth:`~sagaz.abc.SagaStore.release_inbox`: no heartbeat of this worker keeps the
key leased, as :mod:`sagaz.engine.settle_errors` gives up), and the delivery is acked.

A row the store refuses even so is given back (:meth:`~sagaz.abc.SagaStore.release_saga`,
no owner: the heartbeat no longer renews it) until the recovery loop's backoff passes
(:mod:`sagaz.engine.resume_failures`); the event is acked all the same, its dead letter stored.
While the engine stops, a held delivery is nacked (redelivered, or recovered from the store).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from sagaz.engine.active_trigger import PipelineState
from sagaz.engine.dead_letters import describe_error
from sagaz.engine.identity import storable
from sagaz.engine.outcomes import SagaOutcome
from sagaz.engine.settlement import Settlement
from sagaz.engine.store_errors import HeldEvents
from sagaz.engine.work_item import WorkItem
from sagaz.events import NotRun
from sagaz.records import SagaRecord
from sagaz.saga.result import SagaResult
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus

__all__ = ["RunErrors"]


class RunErrors(HeldEvents[WorkItem]):
    """The tasks holding the deliveries of sagas whose run a store error interrupted (see the
    module). ``settle`` completes what the store still holds open for an item, then acks it
    (the runner's)."""

    def __init__(
        self,
        state: PipelineState,
        settlement: Settlement,
        settle: Callable[[WorkItem], Awaitable[None]],
    ) -> None:
        super().__init__(state, settlement)
        self._settle = settle

    async def hold(self, item: WorkItem, error: Exception) -> None:
        """Hold ``item``, whose run ``error`` ended, and queue it again after the backoff in
        a task of its own; dead-letter it after the last attempt; while the engine stops,
        nack it instead."""
        if self.stopping:
            await self._interrupted(item, error)
            return
        if item.run_errors is None:  # its first: the backoff counts this event's failed runs
            item.run_errors = self.backoff()
        retry = self._retry(item, item.trigger, item.event, error, item.run_errors)
        self._tasks.spawn(retry, f"sagaz-rerun-{item.saga_id}")

    async def _interrupted(self, item: WorkItem, error: Exception) -> None:
        self.interrupted.append(item.saga_id)
        await self.settlement.nack(item.trigger, item.delivery)
        self.state.outcomes.settle(item.saga_id, NotRun(item.saga_id, "interrupted", str(error)))

    async def _again(self, item: WorkItem) -> None:
        """Queue ``item`` again (past the queue's bound: its delivery is held already), to
        resume its saga from what the store holds now."""
        stored = await self.state.store.get_saga(item.saga_id)
        if stored is None or stored.status is not SagaStatus.PENDING:
            # it started: read again (the pending row admission gave the run is gone)
            item.pending, item.created = None, False
        # a new attempt that never began (the row still ends the one before) starts again;
        # one that began is resumed (a run that was no new attempt never starts one)
        item.new_attempt = (
            stored is not None
            and not item.already_terminal
            and stored.status in (SagaStatus.COMPENSATED, SagaStatus.FAILED)
            and (stored.attempt < item.attempt or item.delivery.replay_of is not None)
        )
        self.state.queue.put_nowait_unbounded(item)

    async def _give_up(self, item: WorkItem, error: Exception, attempts: int) -> None:
        """Dead-letter ``item`` with ``error`` after ``attempts`` runs, end its saga, settle
        its delivery."""
        await self.dead_letter(item.trigger, item.delivery, error, item.saga_id, attempts)
        outcome = await self._end(item, error)
        try:
            await self.state.outage.retry(functools.partial(self._settle, item))
        except Exception as exc:  # its dead letter is stored: the event is settled
            await self.settlement.report(item.trigger, exc, item.event)
            if isinstance(outcome, SagaResult):  # ended: not left leased by this worker
                await self.free_key(item)
            await self.settlement.ack(item.trigger, item.delivery)
        self.state.outcomes.settle(item.saga_id, outcome)

    async def _end(self, item: WorkItem, error: Exception) -> SagaOutcome:
        """Give the saga of ``item`` its terminal row (``failed``) with its inbox row's
        completion, unless it has one or another worker owns it; its outcome then."""
        try:
            return await self.state.outage.retry(functools.partial(self._fail, item, error))
        except Exception as exc:  # not even that: no lease is kept on it
            await self.settlement.report(item.trigger, exc, item.event)
            await self._release(item, exc)
            return NotRun(item.saga_id, "interrupted", str(error))

    async def _fail(self, item: WorkItem, error: Exception) -> SagaOutcome:
        state = self.state
        saga = await state.store.get_saga(item.saga_id)
        if saga is not None and saga.status in TERMINAL_SAGA_STATUSES:
            return _result(saga)
        if saga is None or saga.owner not in (None, state.worker_id):  # none, or another's
            return NotRun(item.saga_id, "interrupted", str(error))
        if saga.status is SagaStatus.PENDING:  # the delivery it kept is the dead letter's
            trigger = item.trigger
            saga.event = storable(item.delivery.payload) if trigger.persist_events else None
        # the context of its last checkpoint, as the store has it (and can encode)
        saga.status, saga.error = SagaStatus.FAILED, describe_error(error)[0]
        saga.owner, saga.lease_expires_at = state.worker_id, state.lease_until()
        inbox = (item.trigger_id, item.key) if item.key else None
        await state.store.save_checkpoint(saga, complete_inbox=inbox)
        item.inbox_completed = inbox is not None
        state.metrics.failed[item.trigger_id] += 1
        return _result(saga)

    async def _release(self, item: WorkItem, error: Exception) -> None:
        """Give the lease of ``item``'s saga back until the recovery loop's backoff passes."""
        state = self.state
        try:
            retry_at = state.resume_failures.failed(item.saga_id, error)
            await state.store.release_saga(item.saga_id, state.worker_id, retry_at)
        except Exception as exc:
            await self.settlement.report(item.trigger, exc, item.event)


def _result(saga: SagaRecord) -> SagaResult:
    """The outcome of ``saga``, ended: its row as stored."""
    return SagaResult(
        saga.saga_id, saga.status, dict(saga.context), saga.error, None, {}, saga.attempt
    )
