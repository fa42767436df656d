"""Event-side value types: what sources hand in and what trigger methods receive."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from sagaz.clock import utcnow

__all__ = [
    "AdmissionOutcome",
    "AdmissionResult",
    "CronTick",
    "Delivery",
    "EventMeta",
    "FileEvent",
    "NotRun",
    "Reason",
    "WebhookRequest",
]


@dataclass(slots=True)
class EventMeta:
    """Source metadata: a trigger method gets it as a second parameter annotated ``EventMeta``."""

    source: str
    trigger: str = ""
    message_id: str | None = None
    topic: str | None = None  # Kafka topic, RabbitMQ queue, Redis stream, SQS queue url, channel
    partition: int | None = None
    offset: int | None = None
    key: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    received_at: datetime = field(default_factory=utcnow)
    attempt: int = 1


async def _no_ack() -> None:
    return None


async def _no_nack(requeue: bool) -> None:
    return None


@dataclass(slots=True, eq=False)
class Delivery:
    """One event as a source hands it to the pipeline.

    The source says what its payload is, and the pipeline decodes it by that and by the
    trigger method's annotation, never by the source's name:

    * ``decoded=False`` (the default): ``payload`` is the raw ``bytes``/``str`` of a message.
      It is parsed as JSON where it is JSON (non-JSON bytes stay ``bytes``); a typed method
      (pydantic model, dataclass, TypedDict) gets it validated from the JSON.
    * ``decoded=True``: ``payload`` is the event object itself (a dict, a ``CronTick``, a
      ``FileEvent``, a poll trigger's context). A method annotated with its type gets it as it
      is; any other annotation gets it validated (pydantic's python mode).
    * ``body`` set (with ``decoded=True``): ``payload`` is an **envelope**, the message as the
      source knows it (the SQS message dict, a ``WebhookRequest``), and ``body`` the raw
      ``bytes``/``str`` its producer sent. An unannotated method, one annotated with the
      envelope's type, or a plain mapping when the envelope is a mapping, gets the envelope;
      a typed method gets ``body`` validated as JSON (an empty body as ``null``).

    ``identity`` is the source's message identity, the dedup key when the trigger has no
    ``idempotency_key`` (DESIGN 3.1). ``""``: the delivery has none, and then it is its own
    event (two identical webhook bodies, two ``fire_event`` calls start two sagas), unless
    its trigger sets ``dedup="content"`` (or its source is redeliverable: a redelivery must
    map to the same saga), which makes the content the key: ``content_identity`` when the
    source gives one (the webhook hashes method, path, query and body), else a hash of
    ``body`` (an envelope) or of ``payload``. ``ack``/``nack(requeue)`` are called once, after
    the saga's terminal state is in the store.

    ``keep_invalid`` is asked (once) when the event turns out invalid: ``True`` stores it as a
    dead letter, ``False`` only counts and reports it. ``None`` (brokers, files...) always
    stores it. The webhook answers an invalid request 400 and keeps it only when its trigger
    opts in, within a cap: whoever reaches the port must not grow the store.

    ``replay_of`` is the id of the dead letter this delivery replays (``sagaz dlq replay``):
    its event was dead-lettered after its saga ran, so admission reopens the event's inbox key
    and runs that saga again as a new attempt of the same ``saga_id`` (unless it completed in
    the meantime). Once the replay is settled the dead letter is deleted; a replay that is
    dead-lettered again leaves a new dead letter naming the old one (``meta["replay_of"]``).

    ``wait_for_store``: while the store is unavailable, admission holds the delivery until the
    store is back (``emit`` does not return, so a broker source stops fetching meanwhile).
    ``False`` for a caller better answered at once: the webhook sets it, and its client gets
    503 + ``Retry-After``.
    """

    payload: Any
    meta: EventMeta
    identity: str
    ack: Callable[[], Awaitable[None]] = _no_ack
    nack: Callable[[bool], Awaitable[None]] = _no_nack
    decoded: bool = False
    body: bytes | str | None = None
    keep_invalid: Callable[[], bool] | None = None
    content_identity: str | None = None
    replay_of: int | None = None
    wait_for_store: bool = True


class AdmissionOutcome(StrEnum):
    """What happened to an event at admission."""

    ACCEPTED = "accepted"  # durably accepted: a saga will run (or is running) for it
    DUPLICATE = "duplicate"  # its key already completed
    FILTERED = "filtered"  # the trigger method returned None
    DROPPED = "dropped"  # the backpressure queue dropped it (drop_oldest / drop_newest)
    REJECTED = "rejected"  # the queue was full under ``reject``: dead-lettered
    # decoding, validation or the trigger method failed: dead-lettered (unless the delivery's
    # keep_invalid says no: a webhook request answered 400)
    INVALID = "invalid"
    BUSY = "busy"  # another live worker holds the key (or an overlapping poll run)


class Reason(StrEnum):
    """The one reason code of an event that does not become a saga (DESIGN 3.6)."""

    FILTERED = "filtered"
    DUPLICATE = "duplicate"
    DROPPED_OLDEST = "dropped_oldest"
    DROPPED_NEWEST = "dropped_newest"
    REJECTED = "rejected"
    OVERLAP_SKIPPED = "overlap_skipped"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class AdmissionResult:
    """Answer of ``emit(delivery)``; the webhook maps it to a status code."""

    outcome: AdmissionOutcome
    saga_id: str | None = None
    reason: Reason | None = None
    error: str | None = None
    details: Any = None  # e.g. pydantic's error list for a validation failure

    @property
    def accepted(self) -> bool:
        """True when a saga will run for this event."""
        return self.outcome is AdmissionOutcome.ACCEPTED


@dataclass(frozen=True, slots=True)
class NotRun:
    """Why an accepted event's saga has no result here: what ``TriggerEngine.wait_for(saga_id)``
    answers instead of a ``SagaResult``.

    ``reason`` is

    * ``Reason.DROPPED_OLDEST``: the event was accepted (its saga id returned by
      ``fire_event``, a webhook answered 202) and later evicted from the full queue under
      ``backpressure_strategy="drop_oldest"``; its saga never runs (the drop was reported
      to ``on_trigger_filtered`` and counted, like every drop);
    * ``"interrupted"``: the engine stopped, or the store failed, before the saga ended; the
      event is redelivered (brokers) or recovered from the store (other sources, with a
      durable store) and its saga resumes, in this process after a restart or in another.

    A ``NotRun`` is falsy, so ``if outcome:`` reads "there is a result"::

        [saga_id] = await sagaz.fire_event("orders", {"id": 1})
        outcome = await engine.wait_for(saga_id, timeout=30)
        if isinstance(outcome, NotRun):
            log.warning("order 1 did not run: %s", outcome.reason)
    """

    saga_id: str
    reason: Reason | Literal["interrupted"]
    error: str | None = None  # what interrupted it, when it was an error

    def __bool__(self) -> Literal[False]:
        return False


@dataclass(frozen=True, slots=True)
class CronTick:
    """What a ``source="cron"`` trigger method receives."""

    timestamp: float  # the scheduled tick, as a POSIX timestamp
    scheduled_at: datetime
    fired_at: datetime
    schedule: str


@dataclass(frozen=True, slots=True)
class FileEvent:
    """What a ``source="file"`` trigger method receives."""

    path: str
    size: int
    event_type: str  # "created" | "modified" | "deleted"
    mtime: float


@dataclass(slots=True)
class WebhookRequest:
    """What a ``source="webhook"`` trigger method receives. ``json()`` is synchronous."""

    method: str
    path: str
    path_params: dict[str, str]
    query_params: dict[str, str]
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (raises ``ValueError`` for a body that is not JSON)."""
        return json.loads(self.body) if self.body else None
