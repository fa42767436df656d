"""The recovery loop: resumes the sagas of a dead worker that no broker redelivers.

Broker events come back by themselves (they were never acked); events of webhook, cron,
file, memory and poll triggers were acknowledged once accepted, so their sagas are found in
the store (lease expired) and resumed by a live engine: a started saga from its stored
context, a saga still pending (its worker stopped before the saga started, perhaps before
the trigger method ran) from the delivery it keeps, through admission again
(:mod:`sagaz.engine.pending`).

A saga the loop claimed is never left leased by this worker (its heartbeat would renew the
lease until the process stops, and no one would resume it):

- a pending saga whose kept delivery no longer decodes (its event's class changed since) is
  dead-lettered, reason ``invalid``, with the event as kept (``sagaz dlq replay`` rebuilds it
  once its class fits it again), its pending row dropped and its inbox row released;
- any other failure to resume one (an error of the store, a bug), and a run of one it
  resumed whose delivery is nacked (a run that an error of the store ends is not: it is held
  and run again, then dead-lettered, by :mod:`sagaz.engine.run_errors`), is reported and the
  saga given back (:meth:`~sagaz.abc.SagaStore.release_saga`) until a backoff passes
  (:mod:`sagaz.engine.resume_failures`); the others of the page are resumed all the same.
  After ``ResumeFailures.attempts`` failures here, a saga still pending is dead-lettered with
  its kept delivery, reason ``store_error``;
- a saga taken over (:meth:`~sagaz.abc.SagaStore.take_over_saga`, counted in the store
  unless it was given back) more than ``max_recovery_attempts`` times, by any worker, is not
  run again: it is dead-lettered, reason ``recovery_exhausted``
  (:mod:`sagaz.engine.recovery_attempts`);
- the store going away (:class:`~sagaz.exceptions.StoreUnavailableError`) is not the saga's
  doing: the pass ends (the loop waits for the store) and the saga is given back, at once,
  by the next pass.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping

from sagaz.clock import utcnow
from sagaz.engine.active_trigger import ActiveTrigger, PipelineState
from sagaz.engine.admission import Admission
from sagaz.engine.candidate import Candidate, identify
from sagaz.engine.dead_letters import RECOVERED
from sagaz.engine.identity import saga_id_for
from sagaz.engine.pending import pending_dead_letter, pending_delivery
from sagaz.engine.recovery_attempts import RECOVERY_EXHAUSTED, exhausted, fail_exhausted
from sagaz.engine.store_errors import STORE_ERROR
from sagaz.engine.work_item import WorkItem
from sagaz.events import Delivery, EventMeta, Reason
from sagaz.exceptions import StoreUnavailableError
from sagaz.records import ClaimOutcome, EventClaim, SagaRecord
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus

__all__ = ["recover", "recover_once", "resume_pending"]

logger = logging.getLogger(__name__)


async def recover(
    state: PipelineState, triggers: Mapping[str, ActiveTrigger], admission: Admission
) -> None:
    """Run :func:`recover_once` every ``recovery_interval_seconds``, until cancelled."""
    interval = state.config.recovery_interval_seconds
    outage = state.outage
    while True:
        await outage.wait_available()  # after an outage: once our own leases are renewed
        try:
            await recover_once(state, triggers, admission)
        except StoreUnavailableError as exc:
            outage.down(exc)
        except Exception:
            logger.exception("recovery pass failed", extra={"worker_id": state.worker_id})
        await asyncio.sleep(interval)  # real time: expired leases are found by real time


async def recover_once(
    state: PipelineState, triggers: Mapping[str, ActiveTrigger], admission: Admission
) -> int:
    """One recovery pass: claim the recoverable sagas of ``triggers`` whose source does not
    redeliver and queue them (a pending one through ``admission``); returns how many sagas
    were resumed. A saga that cannot be resumed is dead-lettered or given back (see the
    module); only an error of the store listing or claiming them, or the store going away,
    ends the pass early."""
    store = state.store
    failures = state.resume_failures
    for saga_id in list(failures.interrupted):  # claimed as the store went away: given back
        try:
            await store.release_saga(saga_id, state.worker_id)
        except StoreUnavailableError:
            raise
        except Exception:  # kept for the next pass: this one goes on with the others
            logger.exception("giving back saga %s failed", saga_id, extra={"saga_id": saga_id})
            continue
        failures.interrupted.discard(saga_id)
    lease_until = state.lease_until()
    resumed = 0
    for record in await store.list_recoverable(utcnow()):
        active = triggers.get(record.trigger_id or "")
        if active is None or (active.source is not None and active.source.redeliverable):
            continue
        # counted in the store as it is claimed: the bound holds across workers and restarts
        taken = await store.take_over_saga(record.saga_id, state.worker_id, lease_until)
        if taken is None or record.saga_id in failures.exhausting:
            continue
        try:
            resumed += await _resume(state, active, admission, record, taken)
        except StoreUnavailableError:  # not this saga's doing: given back once it is back
            failures.interrupted.add(record.saga_id)
            raise
        except Exception as exc:  # this saga's alone: the others are resumed all the same
            await admission.settlement.report(active, exc, record.event)
            try:
                await _give_back(state, record.saga_id, exc)
            except StoreUnavailableError:
                raise
            except Exception as again:  # given back by the next pass
                await admission.settlement.report(active, again, record.event)
    if resumed:
        logger.info("recovered %d saga(s)", resumed, extra={"worker_id": state.worker_id})
    return resumed


async def _resume(
    state: PipelineState,
    active: ActiveTrigger,
    admission: Admission,
    record: SagaRecord,
    taken: int,
) -> int:
    """Resume ``record``, claimed (``taken`` over that many times): 1 once queued (or
    admitted again), 0 if dead-lettered."""
    too_often = exhausted(state, taken)
    if too_often is not None:  # the row as it is now: it may have ended since it was listed
        current = await state.store.get_saga(record.saga_id)
        if current is None or current.status in TERMINAL_SAGA_STATUSES:
            return 0
        record = current
    if record.status is SagaStatus.PENDING:
        try:
            delivery = pending_delivery(record)
        except Exception as exc:  # its event's class changed since: kept as a dead letter
            await _undecodable(state, admission, active, record, exc)
            return 0
        if delivery is not None:  # else a row of an older sagaz: it has its context
            # failed here too often (its last error says why), or claimed too often in all
            error = state.resume_failures.exhausted(record.saga_id)
            if error is not None:
                args = (error, STORE_ERROR, state.resume_failures.count(record.saga_id))
                await _give_up(state, admission, active, delivery, record, *args)
                return 0
            if too_often is not None:
                args = (too_often, RECOVERY_EXHAUSTED, taken)
                await _give_up(state, admission, active, delivery, record, *args)
                return 0
            _settled_here(state, admission, delivery, record.saga_id)
            await resume_pending(admission, active, delivery, record)
            return 1
    delivery = Delivery(
        payload=record.event,
        decoded=True,
        identity="",
        meta=EventMeta(source=RECOVERED, trigger=active.trigger_id),
    )
    if too_often is not None:  # its key is not known here: a delivery of it is a duplicate
        await fail_exhausted(
            state, admission.settlement, active, record, delivery, "", taken, too_often
        )
        state.resume_failures.forget(record.saga_id)
        return 0
    _settled_here(state, admission, delivery, record.saga_id)
    item = WorkItem(
        trigger=active,
        delivery=delivery,
        key="",  # the inbox row completes lazily on a retried delivery
        saga_id=record.saga_id,
        context=dict(record.context),
        attempt=record.attempt,
        accepted_at=state.clock.monotonic(),
        context_hash="recovered" if active.poll_name else None,
        saga=active.saga_for_run(),
    )
    state.queue.put_nowait_unbounded(item)
    return 1


def _settled_here(
    state: PipelineState, admission: Admission, delivery: Delivery, saga_id: str
) -> None:
    """Point the ``delivery`` of resumed ``saga_id`` at its failure count: settled (acked),
    forgotten; nacked (its run failed here, before or after it started), given back."""
    delivery.ack = functools.partial(_settled, state, saga_id)
    delivery.nack = functools.partial(_nacked, state, admission, saga_id)


async def _settled(state: PipelineState, saga_id: str) -> None:
    state.resume_failures.forget(saga_id)


async def _nacked(state: PipelineState, admission: Admission, saga_id: str, requeue: bool) -> None:
    if not admission.accepting:  # the engine stops: it gives back all of its leases
        return
    # the runner (or the dispatcher) reported why: no one would resume it while it is ours
    await _give_back(state, saga_id, "its run failed here (reported as on_trigger_error)")


async def _give_back(state: PipelineState, saga_id: str, error: BaseException | str) -> None:
    """Count a failure of ``saga_id`` and give its lease back until its backoff passes."""
    failures = state.resume_failures
    retry_at = failures.failed(saga_id, error)
    try:
        await state.store.release_saga(saga_id, state.worker_id, retry_at)
    except BaseException:  # given back at once by the next pass
        failures.interrupted.add(saga_id)
        raise


async def _undecodable(
    state: PipelineState,
    admission: Admission,
    active: ActiveTrigger,
    record: SagaRecord,
    error: Exception,
) -> None:
    """Dead-letter the pending saga ``record`` whose kept delivery no longer decodes: its
    event as it was kept (``sagaz dlq replay`` rebuilds it once its class fits it again),
    reason ``invalid``, as admission does with an invalid event; then its claim is undone."""
    dead = pending_dead_letter(active, record, error)
    if dead is None:  # a row that keeps no delivery (pending_delivery does not raise then)
        raise error
    await admission.settlement.keep_dead_letter(active, dead)
    await _drop_pending(admission, active, record)
    await admission.settlement.filtered(active, record.event, Reason.INVALID)
    state.resume_failures.forget(record.saga_id)


async def _give_up(
    state: PipelineState,
    admission: Admission,
    active: ActiveTrigger,
    delivery: Delivery,
    record: SagaRecord,
    error: str,
    reason: str,
    attempts: int,
) -> None:
    """Dead-letter the pending saga ``record`` that failed to resume too often here
    (``reason`` ``store_error``, as admission's, with the last ``error``) or was taken over
    too often (``recovery_exhausted``), ``attempts`` times, with its kept ``delivery``, and
    undo its claim."""
    settlement, saga_id = admission.settlement, record.saga_id
    with state.resume_failures.giving_up(saga_id):  # before any await
        await settlement.dead_letter(
            active, delivery, reason=reason, error=error, attempts=attempts, saga_id=saga_id
        )
        await _drop_pending(admission, active, record)
    await settlement.filtered(active, delivery.payload, Reason.INVALID)
    state.resume_failures.forget(saga_id)


async def _drop_pending(admission: Admission, active: ActiveTrigger, record: SagaRecord) -> None:
    """Drop the pending row of ``record``, dead-lettered, and release its inbox row when the
    kept identity is its key (the trigger has no ``idempotency_key``, or the event came
    without an identity); else that row, its stopped worker's, is taken over by the event's
    next delivery or purged once expired (``purge_expired``)."""
    event = record.event if isinstance(record.event, dict) else {}
    identity = event.get("identity")
    key = ""
    if isinstance(identity, str) and saga_id_for(active.trigger_id, identity) == record.saga_id:
        key = identity
    meta = EventMeta(source=RECOVERED, trigger=active.trigger_id)
    delivery = Delivery(payload=None, meta=meta, identity="")
    dropped = Candidate(active, delivery, None, key, record.saga_id, None)
    await admission.not_started.unclaim(dropped, record, complete=False)


async def resume_pending(
    admission: Admission, trigger: ActiveTrigger, delivery: Delivery, record: SagaRecord
) -> None:
    """Admit again, from the ``delivery`` it keeps, the pending saga ``record`` of a
    stopped worker (for the recovery loop, which holds its lease): the trigger method
    runs again, and what becomes of the event is admission's."""
    try:
        event = trigger.decoder.decode(delivery)
        key, concurrency_key = identify(trigger, delivery, event)
    except Exception as exc:  # it was valid when accepted: the trigger changed since
        dropped = Candidate(trigger, delivery, delivery.payload, "", record.saga_id, None)
        await admission.not_started.invalid(
            trigger, delivery, delivery.payload, exc, record.saga_id, drop=(dropped, record)
        )
        return
    if saga_id_for(trigger.trigger_id, key) != record.saga_id:
        key = ""  # not the key it was claimed with: its inbox row completes lazily
    candidate = Candidate(trigger, delivery, event, key, record.saga_id, concurrency_key)
    claim = EventClaim(ClaimOutcome.TAKEN_OVER, record.saga_id, record.owner, record)
    await admission.accept(candidate, admission.state.lease_until(), claim, recovered=True)
