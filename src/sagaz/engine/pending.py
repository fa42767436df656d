"""A pending saga: the row admission writes with an event's inbox claim, before the trigger
method runs, and the delivery it keeps until its saga starts.

The row has no context yet: the trigger method's context reaches the store with the saga's
start (its first checkpoint). A delivery that no one delivers again (a webhook request, a cron
tick, a file, a poll, ``fire_event``) is acknowledged once accepted, so the row keeps it whole
(as a dead letter keeps its event, :mod:`sagaz.engine.dead_letters`): if its worker stops
before the saga starts, the recovery loop rebuilds it and runs the trigger method again
(:func:`~sagaz.engine.recovery.resume_pending`). A broker's message is not kept:
it was not acked, and its redelivery brings it back.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sagaz.engine.dead_letters import (
    FORMAT,
    describe_error,
    keep_body,
    keep_payload,
    replay_delivery,
    saga_location,
)
from sagaz.engine.identity import storable
from sagaz.events import Delivery, Reason
from sagaz.records import DeadLetterRecord, SagaRecord
from sagaz.storage.codec import from_micros, to_micros
from sagaz.types import SagaStatus

if TYPE_CHECKING:
    from sagaz.engine.active_trigger import ActiveTrigger, PipelineState

__all__ = [
    "PENDING_EVENT",
    "pending_dead_letter",
    "pending_delivery",
    "pending_event",
    "pending_record",
]

#: the key that marks a pending saga's kept delivery (:func:`pending_event`)
PENDING_EVENT = "sagaz_pending_event"
_RECEIVED_MICROS = "received_at_us"
#: the ``EventMeta`` fields kept when set
_OPTIONAL = ("message_id", "topic", "partition", "offset", "key")
#: the kept event's entries that are not the rebuilt delivery's ``meta``
_NOT_META = frozenset({PENDING_EVENT, "payload", _RECEIVED_MICROS})
# read once: on Python 3.11 ``SagaStatus.PENDING`` goes through ``EnumType.__getattr__``'s hook
# (about 1,000 instructions), once per event
_PENDING = SagaStatus.PENDING


def pending_record(
    trigger: ActiveTrigger, delivery: Delivery, saga_id: str, state: PipelineState, lease: datetime
) -> SagaRecord:
    """The ``PENDING`` row of ``delivery``'s saga, as admission writes it with the claim;
    the delivery is kept on a durable store only (nothing is recovered from another)."""
    source = trigger.source
    event: Any
    if state.store.durable and (source is None or not source.redeliverable):
        event = pending_event(trigger.trigger_id, delivery)
    else:  # a redelivery brings it back, or nothing outlives the process
        event = storable(delivery.payload) if trigger.persist_events else None
    # saga_id, saga_name, status, context, attempt, error, trigger_id, event, owner, lease:
    # by position (once per event; keywords cost a third more)
    return SagaRecord(
        saga_id,
        trigger.saga_name,
        _PENDING,
        {},
        1,
        None,
        trigger.trigger_id,
        event,
        state.worker_id,
        lease,
    )


def pending_event(trigger_id: str, delivery: Delivery) -> dict[str, Any]:
    """The delivery as a pending saga keeps it until its trigger method has run (its
    ``SagaRecord.event``): acknowledged at acceptance, it is rebuilt from this by
    :func:`pending_delivery` if its worker stops before the saga starts.

    The payload is kept as a dead letter keeps it; of the metadata (a dead letter's
    ``meta``, flat beside the payload) only what a rebuilt delivery would not have anyway:
    this is written once per event."""
    payload, kept = keep_payload(delivery.payload)
    meta = delivery.meta
    event: dict[str, Any] = {
        PENDING_EVENT: FORMAT,
        "payload": payload,
        "source": meta.source,
        "identity": delivery.identity,
        _RECEIVED_MICROS: to_micros(meta.received_at),
    }
    if kept:
        event.update(kept)
    if meta.trigger and meta.trigger != trigger_id:
        event["trigger"] = meta.trigger
    for name in _OPTIONAL:
        value = getattr(meta, name)
        if value is not None:
            event[name] = value
    if meta.headers:
        event["headers"] = dict(meta.headers)
    if meta.attempt != 1:
        event["attempt"] = meta.attempt
    if delivery.decoded:
        event["decoded"] = True
    if delivery.body is not None:  # an envelope: a typed trigger method gets its body
        keep_body(event, payload, delivery.body)
    return event


def pending_delivery(saga: SagaRecord, *, known_types: Iterable[type] = ()) -> Delivery | None:
    """The delivery that ``saga`` keeps (:func:`pending_event`), or ``None`` if it keeps
    none (a pending row written by an older sagaz, an event kept for ``persist_events``).
    Raises :class:`DeadLetterReplayError` when the event cannot be rebuilt (its class
    changed since): :func:`pending_dead_letter` then keeps it."""
    kept = _kept(saga)
    if kept is None:
        return None
    delivery = replay_delivery(kept, known_types=known_types)
    delivery.replay_of = None
    return delivery


def pending_dead_letter(
    trigger: ActiveTrigger, saga: SagaRecord, error: BaseException
) -> DeadLetterRecord | None:
    """The dead letter (reason ``invalid``) of the delivery ``saga`` keeps but
    :func:`pending_delivery` could not rebuild (``error``): the event as it was kept, so
    that ``sagaz dlq replay`` rebuilds it once its class fits it again; ``None`` if ``saga``
    keeps no delivery."""
    kept = _kept(saga)
    if kept is None:
        return None
    kept.error, kept.traceback = describe_error(error)
    kept.reason = Reason.INVALID.value
    kept.source = kept.meta.get("source")
    kept.meta.update(saga_location(type(trigger.saga)))
    return kept


def _kept(saga: SagaRecord) -> DeadLetterRecord | None:
    """The delivery ``saga`` keeps, read as a dead letter keeps one (one way to rebuild an
    event), or ``None``."""
    event = saga.event
    if not (isinstance(event, dict) and event.get(PENDING_EVENT) == FORMAT):
        return None
    meta = {name: value for name, value in event.items() if name not in _NOT_META}
    meta["format"] = FORMAT
    received = event.get(_RECEIVED_MICROS)
    if isinstance(received, int):
        meta["received_at"] = from_micros(received)
    return DeadLetterRecord(
        trigger_id=saga.trigger_id or "",
        saga_name=saga.saga_name,
        payload=event.get("payload"),
        error="",
        reason="",
        saga_id=saga.saga_id,
        meta=meta,
    )
