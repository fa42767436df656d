"""Admission of a broker poll's records as one batch (``Admission.admit_many``).

What :meth:`~sagaz.engine.admission.Admission.admit` does per event, shaped for a batch:

1. one loop decodes, identifies and names the saga of every delivery, joins a redelivery to
   its saga in flight here (within the batch too), and builds the pending rows;
2. one store call claims the batch's inbox keys with their pending rows
   (:meth:`~sagaz.abc.SagaStore.claim_events`);
3. the deliveries are then accepted and queued one after the other, in the batch's order
   (per-key order, backpressure strategies), each as ``admit`` would from its own claim.

Each delivery gets the outcome and the reason ``admit`` would give it. A delivery that does
not decode or has no identity is admitted alone by ``admit`` (which says why), in its place;
when the batch's claim fails, each delivery is claimed again alone, waiting for the store
as ``admit`` does (a key the failed batch claimed for us is taken over, its pending row kept).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sagaz.engine.candidate import Candidate, identify
from sagaz.engine.identity import saga_id_for
from sagaz.engine.joint_deliveries import JointDeliveries
from sagaz.engine.pending import pending_record
from sagaz.events import AdmissionOutcome, AdmissionResult, Delivery
from sagaz.exceptions import StoreUnavailableError
from sagaz.records import EventClaim, SagaRecord

if TYPE_CHECKING:
    from sagaz.engine.active_trigger import ActiveTrigger
    from sagaz.engine.admission import Admission

__all__ = ["admit_batch", "admit_each"]


#: the most deliveries admitted as one batch on a store without I/O (the memory store): a
#: poll's records (up to ``max_poll_records``) go through in batches of this size, so that
#: what a batch holds until it is queued (its candidates, pending rows and claims) stays
#: small for the garbage collector. A durable store takes the whole poll as one batch, as
#: ``admit_many`` did before batches (its claims went out together): each batch waits for
#: its claims' round trip
CHUNK = 30


async def admit_batch(
    admission: Admission, trigger: ActiveTrigger, deliveries: Sequence[Delivery]
) -> list[AdmissionResult]:
    """Admit ``deliveries`` of ``trigger`` as batches (see the module); one result each, in
    order. Never raises (bar cancellation: then the deliveries claimed and not yet settled
    are nacked, or accepted all the same when the claim made the key ours, and those not yet
    admitted are left as they are).

    A durable store takes them as one batch. The memory store takes batches of up to
    :data:`CHUNK`, and no more than the queue has room for (at least one): with a full
    queue one at a time, as ``admit_many`` did there before batches, so ``block`` leaves the
    rest with the source, unclaimed."""
    if admission.state.store.durable:
        return await _admit_chunk(admission, trigger, deliveries)
    queue, total = admission.state.queue, len(deliveries)
    results: list[AdmissionResult] = []
    start = 0
    while start < total:
        size = min(CHUNK, max(1, queue.room))
        results += await _admit_chunk(admission, trigger, deliveries[start : start + size])
        start += size
    return results


async def admit_each(
    admission: Admission, trigger: ActiveTrigger, deliveries: Sequence[Delivery]
) -> list[AdmissionResult]:
    """``admit_many`` one delivery at a time (when it does not admit them as a batch): on a
    durable store concurrently, so their claims go out together, each queued only after the
    one before it; on the memory store (nothing to coalesce) and for a trigger with
    listeners (whose ``on_trigger_received`` could suspend before a redelivery within the
    batch is matched with its first delivery) one after the other."""
    admit = admission.admit
    if len(deliveries) < 2 or not admission.state.store.durable or trigger.listeners:
        return [await admit(trigger, delivery) for delivery in deliveries]
    loop = asyncio.get_running_loop()
    admitted = [loop.create_future() for _ in deliveries]
    return list(
        await asyncio.gather(
            *(
                admit(trigger, d, after=admitted[n - 1] if n else None, admitted=admitted[n])
                for n, d in enumerate(deliveries)
            )
        )
    )


async def _admit_chunk(
    admission: Admission, trigger: ActiveTrigger, deliveries: Sequence[Delivery]
) -> list[AdmissionResult]:
    state = admission.state
    trigger_id = trigger.trigger_id
    decode = trigger.decoder.decode
    in_flight = admission.in_flight
    received = state.metrics.received
    lease = state.lease_until()
    results: list[AdmissionResult | None] = [None] * len(deliveries)
    claimed: list[Candidate] = []
    where: list[int] = []  # the position of each of ``claimed`` in the batch
    rows: list[tuple[str, SagaRecord]] = []
    for n, delivery in enumerate(deliveries):
        meta = delivery.meta
        meta.trigger = meta.trigger or trigger_id
        try:
            event = decode(delivery)
            key, concurrency_key = identify(trigger, delivery, event)
        except Exception:
            continue  # admitted alone, in its place: ``admit`` decodes it again, says why
        received[trigger_id] += 1
        saga_id = saga_id_for(trigger_id, key)
        joint = in_flight.get(saga_id)
        if joint is not None:  # redelivered while its saga is in flight (see ``_admit``)
            joint.join(delivery)
            results[n] = AdmissionResult(AdmissionOutcome.ACCEPTED, saga_id)
            continue
        joint = in_flight[saga_id] = JointDeliveries(delivery, in_flight, saga_id)
        delivery.ack = delivery.nack = joint
        claimed.append(Candidate(trigger, delivery, event, key, saga_id, concurrency_key))
        where.append(n)
        rows.append((key, pending_record(trigger, delivery, saga_id, state, lease)))
    claims: list[EventClaim] | None = None
    if rows:
        claiming: asyncio.Future[list[EventClaim]] | None = None
        try:
            if state.store.durable:
                # shielded: cancelled meanwhile, the batch still learns which keys it made ours
                claiming = asyncio.ensure_future(state.store.claim_events(trigger_id, rows))
                claims = await asyncio.shield(claiming)
            else:
                # the memory store answers in the call: nothing to shield (no cancellation
                # arrives half-way; one that did, in a store that waits, leaves its claims
                # unknown: made again in a while), so no task (~2,500 instructions per event
                # with its shield). The batch still yields to the loop once, as it did while
                # the task ran, so that the workers start the sagas queued so far: a poll's
                # first events do not wait for the whole poll's admission (without the yield,
                # ~13,000 instructions fewer per event, but a start latency of ~9 ms at p50
                # instead of ~0.7 in kafka_instructions.py's run)
                claims = await state.store.claim_events(trigger_id, rows)
                await asyncio.sleep(0)
        except asyncio.CancelledError:  # bounded: a store that hangs does not hold the
            # caller (a rebalance); the claims it did not answer are made again in a while
            made = claims  # the memory store's, answered before the batch yielded
            if claiming is not None:
                timeout = min(5.0, state.config.lease_seconds / 2)
                await asyncio.wait({claiming}, timeout=timeout)
                claiming.cancel()  # a no-op once done
                if claiming.done() and not claiming.cancelled() and claiming.exception() is None:
                    made = claiming.result()
            await _hand_back(admission, claimed, made, lease)
            raise
        except Exception:  # claimed again one by one: they wait for the store, or say why
            claims = None
    settle, each, admit = admission.settle_claim, admission.claim_each, admission.admit
    accept = admission.accept
    k = 0  # the next of ``claimed``
    try:
        for n, delivery in enumerate(deliveries):
            if results[n] is not None:
                continue
            if k == len(where) or where[k] != n:
                results[n] = await admit(trigger, delivery)
                continue
            c, k = claimed[k], k + 1  # settled by the calls below, even when cancelled
            claim = None if claims is None else claims[k - 1]
            if claim is None:
                results[n] = await each(c)
            elif not claim.created or delivery.replay_of is not None:
                results[n] = await settle(c, lease, claim)
            else:  # the usual: a new key and its new pending row (settle_claim's last case)
                try:
                    results[n] = await accept(c, lease, claim)
                except asyncio.CancelledError:
                    if not c.handed_over:
                        await admission.settlement.nack(trigger, delivery)
                    raise
                except StoreUnavailableError as exc:  # after the claim (undoing a filtered
                    # event's, a dead letter): as ``admit``, claimed again once the store answers
                    if c.handed_over or not delivery.wait_for_store:
                        results[n] = await admission.failed(trigger, delivery, exc)
                    else:
                        results[n] = await each(c)
                except Exception as exc:
                    results[n] = await admission.failed(trigger, delivery, exc)
    except asyncio.CancelledError:
        await _hand_back(admission, claimed[k:], None if claims is None else claims[k:], lease)
        raise
    return [r for r in results if r is not None]


async def _hand_back(
    admission: Admission,
    candidates: Sequence[Candidate],
    claims: Sequence[EventClaim] | None,
    lease: datetime,
) -> None:
    """Settle ``candidates``, whose admission was cancelled before their turn: those whose
    ``claims`` made the key ours are accepted all the same, in tasks of their own (else the
    key would stay ours while nothing runs its saga: see
    :mod:`sagaz.engine.late_acceptances`); the others are nacked.

    ``claims`` None: what the batch's claim made is not known (it did not answer in time, or
    failed), yet it may have made keys ours at the server all the same, their pending rows
    then renewed by this worker's heartbeat: a new owner of the event would find its key
    busy for ever. So each key is claimed again in a while, as a busy key (its saga then runs
    here once if the key is ours, or its delivery is held until whoever holds it finished).
    While the engine stops, they are nacked: it gives its leases back."""
    if not admission.accepting:
        for c in candidates:
            await admission.settlement.nack(c.trigger, c.delivery)
        return
    if claims is None:
        for c in candidates:
            c.handed_over = True  # its delivery is the watcher's to settle
            admission.watch_busy(c)
        return
    take = admission.late.take
    for c, claim in zip(candidates, claims, strict=True):
        if not take(c, lease, claim):
            await admission.settlement.nack(c.trigger, c.delivery)
