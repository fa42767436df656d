"""A saga taken over too often: the end of a crash loop.

A worker that claims a saga it did not start (the recovery loop's claim of an expired lease,
admission's takeover of an event's key) claims it with
:meth:`~sagaz.abc.SagaStore.take_over_saga`, which counts the takeover in the saga's row in
the same statement, before anything of the saga runs. The count is the store's, so every
worker and every restart sees it; a new attempt of the saga (a retry, a replayed dead letter,
an operator's ``sagaz sagas resume|retry``) starts it over.

Only a takeover counts: the claim of a row that still names another owner, whose lease
expired (it crashed, was killed, or froze). A saga given back
(:meth:`~sagaz.abc.SagaStore.release_saga`: no owner) is claimed uncounted: a graceful stop
gives back every saga it did not finish (:func:`sagaz.engine.leases.release_leases`: the
runs ``shutdown_timeout`` cut short, the events accepted and never started), so a long saga
outlives any number of rolling deploys; and so are the sagas a worker lets go of (another
holds their key, resuming them failed: :mod:`sagaz.engine.resume_failures` bounds that).

Past ``TriggerConfig.max_recovery_attempts`` the saga is not run again: a saga whose step
stops its worker (a crash, ``os._exit``, an out-of-memory kill) would otherwise take down one
worker after another for ever, and the healthy events of each with it. Instead it is
dead-lettered with reason :data:`RECOVERY_EXHAUSTED`:

- a saga still ``pending`` (its trigger method never completed) with its event, its pending
  row dropped and its inbox row released, as an invalid event is (``sagaz dlq replay``
  admits the event again);
- a started saga with its event (the delivery at hand, or the one it keeps with
  ``persist_events``), then its row is written ``failed`` with that error, keeping its
  context and completed steps, and its inbox row is completed: ``sagaz sagas resume ID``
  runs it again from its steps once it is fixed (``sagaz dlq replay`` runs it again from the
  event, as a new attempt).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sagaz.events import Delivery
from sagaz.records import SagaRecord
from sagaz.saga.result import SagaResult
from sagaz.types import SagaStatus

if TYPE_CHECKING:
    from sagaz.engine.active_trigger import ActiveTrigger, PipelineState
    from sagaz.engine.settlement import Settlement

__all__ = ["RECOVERY_EXHAUSTED", "dead_letter", "exhausted", "fail_exhausted"]

#: the dead letter's reason of a saga taken over more than ``max_recovery_attempts`` times
RECOVERY_EXHAUSTED = "recovery_exhausted"


def exhausted(state: PipelineState, taken: int) -> str | None:
    """The error of a saga taken over ``taken`` times, once that is past the bound."""
    bound = state.config.max_recovery_attempts
    if taken <= bound:
        return None
    return (
        f"recovery_exhausted: claimed for recovery {taken} times (max_recovery_attempts="
        f"{bound}): its worker stopped without giving it back (a crash, a kill, a freeze past "
        "its lease) each time; a saga that stops its worker (a crash, os._exit, an "
        "out-of-memory kill) is not run again: "
        "fix it, then run `sagaz sagas resume ID` (or replay its dead letter)"
    )


async def dead_letter(
    settlement: Settlement,
    trigger: ActiveTrigger,
    delivery: Delivery,
    saga_id: str,
    taken: int,
    error: str,
) -> None:
    """Dead-letter ``delivery`` of the saga ``saga_id``, taken over ``taken`` times, past the
    bound (``error``): reason :data:`RECOVERY_EXHAUSTED`."""
    await settlement.dead_letter(
        trigger, delivery, reason=RECOVERY_EXHAUSTED, error=error, attempts=taken, saga_id=saga_id
    )


async def fail_exhausted(
    state: PipelineState,
    settlement: Settlement,
    trigger: ActiveTrigger,
    saga: SagaRecord,
    delivery: Delivery,
    key: str,
    taken: int,
    error: str,
) -> None:
    """Dead-letter the started ``saga`` (claimed: ``taken`` times, ``error``) with
    ``delivery``, then write it ``failed`` with ``error``, its inbox row ``key`` (if known)
    completed with it. The dead letter goes first: a crash in between leaves the saga as it
    was, taken over once more and dead-lettered again, never failed without a dead letter."""
    with state.resume_failures.giving_up(saga.saga_id):  # before any await
        await dead_letter(settlement, trigger, delivery, saga.saga_id, taken, error)
        saga.status, saga.error = SagaStatus.FAILED, error
        saga.owner, saga.lease_expires_at = state.worker_id, state.lease_until()
        inbox = (trigger.trigger_id, key) if key else None
        await state.store.save_checkpoint(saga, complete_inbox=inbox)
        state.metrics.failed[trigger.trigger_id] += 1
        outcome = SagaResult(
            saga.saga_id, saga.status, dict(saga.context), error, None, {}, saga.attempt
        )
        state.outcomes.accepted(saga.saga_id)  # an outcome of an earlier attempt is not this one
        state.outcomes.settle(saga.saga_id, outcome)
