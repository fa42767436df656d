"""Admission: decode, validate, identify, claim the inbox, transform, persist, enqueue.

Every event leaves admission with exactly one outcome (:class:`~sagaz.events.AdmissionResult`)
and, when it does not become a saga, exactly one reason code. Such an event is counted and
reported (``on_trigger_filtered``) before it is acked, so a shutdown that cancels the ack's
caller cannot skip the count (:mod:`sagaz.engine.not_started` holds those paths).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sagaz import tracing
from sagaz.engine.active_trigger import ActiveTrigger, PipelineState
from sagaz.engine.admission_batch import admit_batch, admit_each
from sagaz.engine.busy_keys import BusyKeys
from sagaz.engine.candidate import Candidate, identify
from sagaz.engine.identity import canonical_hash, saga_id_for, storable
from sagaz.engine.joint_deliveries import JointDeliveries
from sagaz.engine.late_acceptances import LateAcceptances
from sagaz.engine.not_started import NotStarted
from sagaz.engine.pending import pending_record
from sagaz.engine.recovery_attempts import exhausted
from sagaz.engine.settlement import Settlement
from sagaz.engine.store_errors import StoreErrors
from sagaz.engine.work_item import WorkItem
from sagaz.events import AdmissionOutcome, AdmissionResult, Delivery, Reason
from sagaz.exceptions import InvalidEventError, StoreUnavailableError
from sagaz.records import ClaimOutcome, EventClaim, TriggerExecutionRecord
from sagaz.saga.listeners import notify
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus

__all__ = ["Admission"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_ACCEPTED = AdmissionOutcome.ACCEPTED  # read once: on 3.11 a read through EnumType's hook

_STORE_UNAVAILABLE = AdmissionResult(
    AdmissionOutcome.REJECTED, error="the store is unavailable; retry later"
)


class Admission:
    """The front of the pipeline; ``admit`` is what sources call as ``emit``."""

    def __init__(self, state: PipelineState, settlement: Settlement) -> None:
        self.state = state
        self.settlement = settlement
        self.accepting = True
        #: set by :meth:`close`: ends the waits for an unavailable store
        self._closing = asyncio.Event()
        self._busy = BusyKeys(state, settlement)
        #: the outcomes of events that start no saga (invalid, refused, dropped, unclaimed)
        self.not_started = NotStarted(state, settlement)
        #: saga id -> deliveries of the saga queued or running here (see ``_join``)
        self.in_flight: dict[str, JointDeliveries] = {}
        #: events whose admission a store error (not an outage) interrupted, held, tried again
        self.errors = StoreErrors(state, self.not_started, self._readmit)
        #: acceptances cancelled after their claim made the key ours, finished in tasks
        self.late = LateAcceptances(
            settlement,
            lambda c, lease, claim: self.accept(c, lease, claim, recovered=True),
            self.errors.hold,
        )

    async def admit(
        self,
        trigger: ActiveTrigger,
        delivery: Delivery,
        *,
        after: asyncio.Future[None] | None = None,
        admitted: asyncio.Future[None] | None = None,
        untraced: bool = False,
    ) -> AdmissionResult:
        """Admit one delivery of ``trigger``; never raises (bar cancellation).

        ``after`` (:meth:`admit_many`): the delivery is queued only once ``after`` is done,
        i.e. once the delivery before it in its batch is admitted; ``admitted`` is set once
        this one is (queued, refused, or given up), for the delivery after it.

        A failure of the store itself leaves the delivery for redelivery (nack) and answers
        ``REJECTED`` with the error, so a webhook caller gets 503 and retries. While the store
        is unavailable (:mod:`sagaz.engine.store_outage`), a delivery that may wait
        (``Delivery.wait_for_store``: a broker message, whose source stops fetching meanwhile)
        waits for it; the others are answered ``REJECTED`` at once.

        ``untraced``: admit it here, without looking at the store's availability or at
        tracing (:meth:`_admit_when` did, and calls this within the admission span).
        """
        if not untraced and (not self.state.outage.available or tracing.recorder() is not None):
            return await self._admit_when(trigger, delivery, after, admitted)
        # the usual case, in this one coroutine: the store is available, tracing is off (no
        # lambda here: a cell per captured variable at every call, kept while the claim waits)
        try:
            state = self.state
            state.metrics.received[trigger.trigger_id] += 1
            delivery.meta.trigger = delivery.meta.trigger or trigger.trigger_id
            undecodable: Exception | None = None
            try:
                event = trigger.decoder.decode(delivery)
            except Exception as exc:
                event, undecodable = delivery.payload, exc
            if trigger.listeners:  # the object on_trigger_filtered gets, should it come to that
                await notify(
                    trigger.listeners,
                    "on_trigger_received",
                    trigger.saga_name,
                    delivery.meta.source,
                    event,
                )
            if not self.accepting:
                await self.settlement.nack(trigger, delivery)
                return AdmissionResult(AdmissionOutcome.REJECTED, error="the engine is stopping")
            error = undecodable
            if error is None:
                try:
                    key, concurrency_key = identify(trigger, delivery, event)
                except Exception as exc:
                    error = exc
            if error is not None:  # dead-lettered, waiting for the store if it is down
                invalid = self.not_started.invalid
                args = (trigger, delivery, event, error, None)
                return await self._waiting(delivery, functools.partial(invalid, *args))
            saga_id = saga_id_for(trigger.trigger_id, key)
            joint = self.in_flight.get(saga_id)
            if joint is not None:
                # Redelivered (a lost ack, a broker reconnect) or sent twice while its saga is
                # being admitted, queued or running here: the inbox would hand our own claim back
                # (TAKEN_OVER) and a second run would repeat the steps. Settle it with that one.
                joint.join(delivery)
                return AdmissionResult(_ACCEPTED, saga_id)
            # settled with the deliveries of the same saga admitted until it is acked or nacked
            # (see JointDeliveries): the delivery itself, not a copy (one object fewer per queued
            # event, which a deep queue promotes to the oldest generation), its ``ack`` and
            # ``nack`` pointed at the JointDeliveries, which keeps the source's and settles it
            joint = self.in_flight[saga_id] = JointDeliveries(delivery, self.in_flight, saga_id)
            delivery.ack = delivery.nack = joint
            candidate = Candidate(trigger, delivery, event, key, saga_id, concurrency_key, after)
            try:
                try:  # the claim at once: ``_waiting``'s closure and coroutine only after a failure
                    result = await self._claim(candidate)
                except StoreUnavailableError as exc:
                    await self._wait_for_store(delivery, exc)
                    result = await self._waiting(
                        delivery, functools.partial(self._claim, candidate)
                    )
                if result is None:
                    self.watch_busy(candidate)
                    return AdmissionResult(AdmissionOutcome.BUSY, saga_id)
                return result
            except asyncio.CancelledError:
                if not candidate.handed_over:
                    await self.settlement.nack(trigger, delivery)
                raise
            except Exception as exc:
                return await self.failed(trigger, delivery, exc, candidate)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return await self.failed(trigger, delivery, exc)
        finally:  # queued, refused or given up: the next one of the batch may be queued
            if admitted is not None and not admitted.done():
                admitted.set_result(None)

    async def _admit_when(
        self,
        trigger: ActiveTrigger,
        delivery: Delivery,
        after: asyncio.Future[None] | None,
        admitted: asyncio.Future[None] | None,
    ) -> AdmissionResult:
        """:meth:`admit` while the store is unavailable (wait for it, or answer at once) or
        tracing is on (within the admission span)."""
        outage = self.state.outage
        try:
            if not outage.available:
                if not delivery.wait_for_store:
                    await self.settlement.nack(trigger, delivery)
                    return _STORE_UNAVAILABLE
                await outage.wait_available(until=self._closing)
            spans = tracing.recorder()
            if spans is None:
                return await self.admit(trigger, delivery, after=after, untraced=True)
            with spans.admission(trigger.trigger_id, delivery) as span:
                result = await self.admit(trigger, delivery, after=after, untraced=True)
                spans.admitted(span, result)
                return result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return await self.failed(trigger, delivery, exc)
        finally:  # queued, refused or given up: the next one of the batch may be queued
            if admitted is not None and not admitted.done():
                admitted.set_result(None)

    async def _waiting(self, delivery: Delivery, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``; while the store is unavailable, a delivery that may wait waits
        for it and runs the operation again, the others get the error (and 503)."""
        while True:
            try:
                return await operation()
            except StoreUnavailableError as exc:
                await self._wait_for_store(delivery, exc)

    async def _wait_for_store(self, delivery: Delivery, exc: StoreUnavailableError) -> None:
        """``exc`` came from the store: wait until it is back when ``delivery`` may wait
        (then the operation runs again), else raise ``exc``."""
        if not delivery.wait_for_store or not self.accepting:
            raise exc
        await self.state.outage.wait(exc, until=self._closing)

    async def admit_many(
        self, trigger: ActiveTrigger, deliveries: Sequence[Delivery]
    ) -> list[AdmissionResult]:
        """Admit a batch of deliveries of ``trigger`` (a broker poll's records), queued in
        their order; never raises (bar cancellation).

        As one batch (:mod:`sagaz.engine.admission_batch`): decoded, identified and joined
        to the sagas in flight in one loop, their inbox claims and pending rows made with one
        store call (:meth:`~sagaz.abc.SagaStore.claim_events`), then accepted and queued one
        after the other, in order. Each delivery gets what :meth:`admit` would give it. Not
        while the store is down, tracing is on, or for a trigger with listeners (whose
        ``on_trigger_received`` runs first, per event) or a poll trigger: then each delivery
        is admitted by :meth:`admit` (:func:`~sagaz.engine.admission_batch.admit_each`).
        """
        if (
            len(deliveries) < 2
            or trigger.listeners
            or trigger.poll_name is not None
            or not self.accepting
            or not self.state.outage.available
            or tracing.recorder() is not None
        ):
            return await admit_each(self, trigger, deliveries)
        return await admit_batch(self, trigger, deliveries)

    async def failed(
        self, trigger: ActiveTrigger, delivery: Delivery, exc: Exception, c: Candidate | None = None
    ) -> AdmissionResult:
        """A delivery whose admission failed with ``exc``: nacked (and reported, unless it is
        the store that is down); its answer. An error of the store for the claim of ``c``
        (not an outage) holds a delivery that may wait instead (:mod:`~.store_errors`)."""
        if isinstance(exc, StoreUnavailableError):
            self.state.outage.down(exc)
            await self.settlement.nack(trigger, delivery)
            return _STORE_UNAVAILABLE
        if c is not None and delivery.wait_for_store and not c.handed_over:
            return await self.errors.hold(c, exc)
        await self.settlement.report(trigger, exc, delivery.payload)
        await self.settlement.nack(trigger, delivery)
        return AdmissionResult(
            AdmissionOutcome.REJECTED, error=f"the event could not be accepted: {exc}"
        )

    async def settle_claim(
        self, c: Candidate, lease: datetime, claim: EventClaim
    ) -> AdmissionResult:
        """Admit ``c`` from the claim :meth:`~sagaz.abc.SagaStore.claim_events` made for it
        (``admit_many``), as :meth:`_admit` does from its own."""
        try:
            return await self._settle(c, lease, claim)
        except asyncio.CancelledError:
            if not c.handed_over:
                await self.settlement.nack(c.trigger, c.delivery)
            raise
        except Exception as exc:
            return await self.failed(c.trigger, c.delivery, exc, c)

    async def claim_each(self, c: Candidate) -> AdmissionResult:
        """Admit ``c`` with a claim of its own, waiting for the store as :meth:`_admit` does
        (``admit_many``, once the batch's claim failed)."""
        try:
            try:
                result = await self._claim(c)
            except StoreUnavailableError as exc:
                await self._wait_for_store(c.delivery, exc)
                result = await self._waiting(c.delivery, functools.partial(self._claim, c))
            if result is None:
                self.watch_busy(c)
                return AdmissionResult(AdmissionOutcome.BUSY, c.saga_id)
            return result
        except asyncio.CancelledError:
            if not c.handed_over:
                await self.settlement.nack(c.trigger, c.delivery)
            raise
        except Exception as exc:
            return await self.failed(c.trigger, c.delivery, exc, c)

    async def _claim(self, c: Candidate) -> AdmissionResult | None:
        """Claim the inbox row of ``c`` with its saga's pending row, in one store operation,
        before the trigger method runs; ``None`` while another live worker holds it."""
        lease = self.state.lease_until()
        try:
            claim = await self._claim_event(c, lease)
        except asyncio.CancelledError:  # the key may be ours now: claimed again in a while,
            if self.accepting:  # not left ours, unrun (late_acceptances)
                c.handed_over = True
                self.watch_busy(c)
            raise
        if claim.created and c.delivery.replay_of is None:  # the usual: a new key, a new row
            return await self.accept(c, lease, claim)
        if claim.outcome is ClaimOutcome.BUSY:
            return None
        return await self._settle(c, lease, claim)

    async def _reopen(self, c: Candidate, claim: EventClaim, lease: datetime) -> EventClaim:
        """Claim the key of a replayed dead letter again: dead-lettering completed its inbox
        row, but its saga did not complete. A saga that completed since (an earlier replay)
        keeps its key completed: the replay is then a duplicate."""
        store = self.state.store
        saga = await store.get_saga(c.saga_id)
        if saga is not None and saga.status is SagaStatus.COMPLETED:
            return claim
        await store.release_inbox(c.trigger.trigger_id, c.key)
        return await self._claim_event(c, lease)

    def _claim_event(self, c: Candidate, lease: datetime) -> Awaitable[EventClaim]:
        record = pending_record(c.trigger, c.delivery, c.saga_id, self.state, lease)
        return self.state.store.claim_event(c.trigger.trigger_id, c.key, record)

    async def accept(
        self, c: Candidate, lease: datetime, claim: EventClaim, *, recovered: bool = False
    ) -> AdmissionResult:
        """Accept ``c``, whose key ``claim`` made ours (``CLAIMED``, ``TAKEN_OVER``): the
        trigger method, then the queue (``recovered``: past the queue's bound). Raises what
        the store or the queue raises (the callers nack and report it), bar a store error that
        is not an outage, or any for a delivery that may not wait: then ``c`` is held and
        admitted again (:mod:`~.store_errors`). Cancelled, it is finished in a task of its own
        (:mod:`sagaz.engine.late_acceptances`); either way ``c.handed_over`` is set."""
        try:
            state = self.state
            trigger, delivery, event = c.trigger, c.delivery, c.event
            key, saga_id = c.key, c.saga_id
            # a key never claimed before has no saga yet; a taken-over one may be half done
            existing = None if claim.created else claim.saga
            # a replayed dead letter runs its saga again, from the event, as a new attempt
            rerun = (
                delivery.replay_of is not None
                and existing is not None
                and existing.status in TERMINAL_SAGA_STATUSES
                and existing.status is not SagaStatus.COMPLETED
            )
            # a finished saga is not run again (its stored result settles the event), and its
            # lease may still name the worker that finished it but never acked the event
            if existing is not None and existing.status not in TERMINAL_SAGA_STATUSES:
                taken = await state.store.take_over_saga(saga_id, state.worker_id, lease)
                # leased by a live worker (e.g. the recovery loop elsewhere), or given up here
                if taken is None or saga_id in state.resume_failures.exhausting:
                    self.watch_busy(c)
                    return AdmissionResult(AdmissionOutcome.BUSY, saga_id)
                if exhausted(state, taken) is not None:  # counted in the store, past the bound
                    return await self.not_started.exhausted(c, taken)
            saga = trigger.saga_for_run()
            # the pending row (new, or left by a stopped worker) gets its context at the start
            pending = (
                claim.saga if existing is None or existing.status is SagaStatus.PENDING else None
            )
            if existing is not None and existing.status is not SagaStatus.PENDING and not rerun:
                context: Any = dict(existing.context)  # resume an interrupted (or ended) saga
            else:
                try:
                    context = trigger.transform(event, delivery.meta, saga)
                    if trigger.is_async:
                        context = await context
                    if context is not None and not isinstance(context, dict):
                        raise InvalidEventError(
                            f"{trigger.trigger_id}: the trigger method returned "
                            f"{type(context).__name__}; it must return a dict (the saga's "
                            "starting context) or None (skip the event)"
                        )
                except Exception as exc:
                    return await self.not_started.invalid(
                        trigger, delivery, event, exc, saga_id, drop=(c, pending)
                    )
                if context is None:
                    await self.not_started.unclaim(c, pending, complete=True)
                    await self.settlement.filtered(trigger, event, Reason.FILTERED)
                    await self.settlement.ack(trigger, delivery)
                    return AdmissionResult(AdmissionOutcome.FILTERED, saga_id, Reason.FILTERED)
            context_hash: str | None = None
            if trigger.poll_name is not None:
                context_hash = canonical_hash(context)
                started = await state.store.start_trigger_execution(
                    TriggerExecutionRecord(trigger.poll_name, context_hash, saga_id),
                    exclusive=trigger.poll_exclusive,
                )
                if not started:
                    await self.not_started.unclaim(c, pending, complete=True)
                    await self.settlement.filtered(trigger, event, Reason.OVERLAP_SKIPPED)
                    await self.settlement.ack(trigger, delivery)
                    return AdmissionResult(
                        AdmissionOutcome.FILTERED, saga_id, Reason.OVERLAP_SKIPPED
                    )
            if pending is not None and not claim.created:  # a pending row taken over
                pending.event = storable(delivery.payload) if trigger.persist_events else None
            # by position, in the order of WorkItem's first fields: once per event, where a
            # dozen keywords cost about 0.3 µs more
            item = WorkItem(
                trigger,
                delivery,
                key,
                saga_id,
                context,
                event,
                c.concurrency_key,
                state.clock.monotonic(),  # accepted_at
                context_hash,
                # pending: a row it just created is not kept (``WorkItem.created``), the collector
                # would walk one object more per queued event
                None if claim.created else pending,
                claim.created,  # created
                rerun,  # new_attempt
                saga,
            )
            if existing is not None and existing.status in TERMINAL_SAGA_STATUSES and not rerun:
                item.already_terminal = True
            state.outcomes.accepted(saga_id)  # its outcome is still to come
            if recovered:  # accepted before: never dropped nor refused now
                state.queue.put_nowait_unbounded(item)
                return AdmissionResult(_ACCEPTED, saga_id)
            if c.after is not None and not c.after.done():
                await asyncio.shield(c.after)  # queued in its batch's order (``admit_many``)
            if state.queue.offer(item):  # room now: no strategy to apply
                state.metrics.accepted[trigger.trigger_id] += 1
                return AdmissionResult(_ACCEPTED, saga_id)
            put = await state.queue.put(item)
            if not put.accepted:
                return await self.not_started.refused(trigger, item, accepting=self.accepting)
            if put.evicted is not None:
                # queued now: its delivery is its run's to settle (cancelled from here on, it is
                # neither nacked nor accepted again), and the evicted event's drop is finished
                # even so (its key would stay ours, unrun)
                c.handed_over = True
                await asyncio.shield(self.not_started.drop_evicted(put.evicted))
            state.metrics.accepted[trigger.trigger_id] += 1
            return AdmissionResult(_ACCEPTED, saga_id)
        except asyncio.CancelledError:  # a claim that made the key ours is not left behind
            if not recovered and self.accepting and not c.handed_over:
                self.late.take(c, lease, claim)
            raise
        except Exception as exc:  # nor a failure once the claim made the key ours
            outage = isinstance(exc, StoreUnavailableError) and c.delivery.wait_for_store
            if recovered or outage or c.handed_over:  # the callers wait for the store, or settle
                raise
            return await self.errors.hold(c, exc)

    async def _settle(
        self, c: Candidate, lease: datetime, claim: EventClaim, *, recovered: bool = False
    ) -> AdmissionResult:
        if claim.outcome is ClaimOutcome.DUPLICATE and c.delivery.replay_of is not None:
            claim = await self._reopen(c, claim, lease)
        if claim.outcome is ClaimOutcome.BUSY:
            self.watch_busy(c)
            return AdmissionResult(AdmissionOutcome.BUSY, c.saga_id)
        if claim.outcome is ClaimOutcome.DUPLICATE:
            return await self.not_started.duplicate(c)
        return await self.accept(c, lease, claim, recovered=recovered)

    async def _readmit(self, c: Candidate) -> None:
        """Claim the key of ``c`` again and admit it past the queue's bound (held by
        :mod:`~.store_errors`); raises what the store raises."""
        lease = self.state.lease_until()
        await self._settle(c, lease, await self._claim_event(c, lease), recovered=True)

    def watch_taken_over(self, item: WorkItem) -> None:
        """Hold ``item``'s delivery, whose saga another worker took over while it ran here
        (a lost lease), as a busy key: its key is claimed again until that worker finished
        the saga (a duplicate: ack, so a Kafka partition's commits go on past it) or died
        (taken over again here)."""
        trigger, delivery, key, saga_id = item.trigger, item.delivery, item.key, item.saga_id
        self.watch_busy(
            Candidate(trigger, delivery, item.event, key, saga_id, item.concurrency_key)
        )

    def watch_busy(self, c: Candidate) -> None:
        """Hold the delivery of ``c`` until the live worker holding its key is done (also
        for a key whose claim, cancelled under way, may or may not have been made)."""
        c = dataclasses.replace(c, handed_over=False)  # its own claims: held on a store error
        again = functools.partial(self._waiting, c.delivery, functools.partial(self._claim, c))
        failed = functools.partial(self.failed, c.trigger, c.delivery, c=c)
        self._busy.watch(c.trigger, c.delivery, c.saga_id, again, failed)

    async def close(self) -> None:
        """Stop watching busy keys (their deliveries are nacked) and waiting for the store."""
        self.accepting = False
        self._closing.set()
        await self._busy.close()
        await self.late.close()
        await self.errors.close()
