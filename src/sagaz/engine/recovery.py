"""The recovery loop: resumes the sagas of a dead worker that no broker redelivers.

Broker events come back by themselves (they were never acked); events of webhook, cron,
file, memory and poll triggers were acknowledged once accepted, so their sagas are found in
the store (lease expired) and resumed by a live engine: a started saga from its stored
context, a saga still pending (its worker stopped before the saga started, perhaps before
the trigger method ran) from the delivery it keeps, through admission again
(:mod:`sagaz.engine.pending`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from sagaz.clock import utcnow
from sagaz.engine.active_trigger import ActiveTrigger, PipelineState
from sagaz.engine.admission import Admission
from sagaz.engine.candidate import Candidate, identify
from sagaz.engine.identity import saga_id_for
from sagaz.engine.pending import pending_delivery
from sagaz.engine.work_item import WorkItem
from sagaz.events import Delivery, EventMeta
from sagaz.exceptions import StoreUnavailableError
from sagaz.records import ClaimOutcome, EventClaim, SagaRecord
from sagaz.types import SagaStatus

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
    were resumed."""
    store = state.store
    lease_until = state.lease_until()
    resumed = 0
    for record in await store.list_recoverable(utcnow()):
        active = triggers.get(record.trigger_id or "")
        if active is None or (active.source is not None and active.source.redeliverable):
            continue
        if not await store.claim_saga(record.saga_id, state.worker_id, lease_until):
            continue
        if record.status is SagaStatus.PENDING:
            try:
                delivery = pending_delivery(record)
            except Exception as exc:  # its event's class changed since: keep it, tell
                await admission.settlement.report(active, exc, record.event)
                continue
            if delivery is not None:  # else a row of an older sagaz: it has its context
                await resume_pending(admission, active, delivery, record)
                resumed += 1
                continue
        item = WorkItem(
            trigger=active,
            delivery=Delivery(
                payload=record.event,
                decoded=True,
                identity="",
                meta=EventMeta(source="recovery", trigger=active.trigger_id),
            ),
            key="",  # the inbox row completes lazily on a retried delivery
            saga_id=record.saga_id,
            context=dict(record.context),
            attempt=record.attempt,
            accepted_at=state.clock.monotonic(),
            context_hash="recovered" if active.poll_name else None,
            saga=active.saga_for_run(),
        )
        state.queue.put_nowait_unbounded(item)
        resumed += 1
    if resumed:
        logger.info("recovered %d saga(s)", resumed, extra={"worker_id": state.worker_id})
    return resumed


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
