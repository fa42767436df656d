"""Event-side value types: what sources hand in and what trigger methods receive."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, NoReturn

from sagaz._aio import DONE
from sagaz._frozen import quick_init

__all__ = [
    "AdmissionOutcome",
    "AdmissionResult",
    "CronTick",
    "Delivery",
    "EventData",
    "EventMeta",
    "FileEvent",
    "NotRun",
    "Reason",
    "WebhookRequest",
    "plain_data",
]


class EventData(dict[str, Any]):
    """A JSON object event, as an unannotated trigger method receives it: a read-only mapping
    that also allows attribute access, nested too.

    >>> event = EventData({"user_id": "u-1", "order": {"id": 7, "lines": [{"sku": "A"}]}})
    >>> event["user_id"], event.user_id, event.order.id, event.order.lines[0].sku
    ('u-1', 'u-1', 7, 'A')
    >>> event == {"user_id": "u-1", "order": {"id": 7, "lines": [{"sku": "A"}]}}
    True

    It *is* a ``dict`` (``json.dumps(event)``, ``dict(event)``, ``event.get("x")`` and
    ``isinstance(event, dict)`` work; it compares equal to the plain dict) that refuses
    changes: ``dict(event)`` or ``event.copy()`` is a plain dict to change, and
    :func:`plain_data` a plain deep copy. Objects nested in it, also in lists, are
    ``EventData`` too (the lists are copies: changing one leaves the message as it was).

    A field named like a ``dict`` method (``items``, ``keys``, ``values``, ``get``, ``copy``...)
    is read with ``event["items"]``. A missing field raises ``AttributeError`` naming the
    fields there are (``event.get("field")`` reads an optional one). It is data: it has no
    methods but ``dict``'s, so a trigger method of a broker, SQS, webhook, cron or file source
    that calls another one on its unannotated event (ADR-025's ``event.is_valid()``) is refused
    when the saga class is defined: annotate the event with a pydantic model that defines the
    method.

    ``event.message_id`` is the event's own ``message_id`` field when it has one, else the id
    of the message that carried it (:attr:`EventMeta.message_id`: Kafka
    ``topic:partition:offset``, the Redis entry id, the SQS MessageId, the RabbitMQ
    message_id...), so ``idempotency_key=lambda e: e.message_id`` dedups by the message.
    """

    __slots__ = ("_message_id",)
    _message_id: str | None

    def __init__(
        self,
        data: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
        /,
        *,
        message_id: str | None = None,
    ) -> None:
        dict.__init__(self, data)
        if message_id is not None:  # unset, the slot reads as None (see _message_id)
            _set_message_id(self, message_id)
        _wrap_nested(self)

    def __getattr__(self, name: str) -> Any:
        # called only when normal lookup fails: a field, or an error naming the fields
        value = dict.get(self, name, _MISSING)
        if value is not _MISSING:
            return value
        if name.startswith("__") or name == "_message_id":
            raise AttributeError(name)
        if name == "message_id":
            message_id = _message_id(self)
            if message_id is not None:
                return message_id
            hint = (
                ", nor did its message carry an id (EventMeta.message_id is None: a "
                "fire_event call, a RabbitMQ message without message_id...); dedup by a "
                "field of the event instead, e.g. idempotency_key=lambda e: e.order_id"
            )
        else:
            hint = (
                f'; read an optional field with event.get("{name}") (an unannotated event is '
                "the message's data, without methods of its own: to call methods on it, "
                "annotate the trigger method's event with a pydantic model that defines them)"
            )
        raise AttributeError(f"the event has no field {name!r}{hint}; {_fields(self)}")

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *(k for k in self if isinstance(k, str) and k.isidentifier())]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (plain_data(self), _message_id(self)))

    # -- read-only -------------------------------------------------------------------------
    def __setitem__(self, key: str, value: Any) -> NoReturn:
        _read_only()

    def __delitem__(self, key: str) -> NoReturn:
        _read_only()

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        _read_only()

    def __delattr__(self, name: str) -> NoReturn:
        _read_only()

    def __ior__(self, other: Any) -> NoReturn:  # type: ignore[misc]
        _read_only()

    def clear(self) -> NoReturn:
        _read_only()

    def pop(self, *args: Any) -> NoReturn:
        _read_only()

    def popitem(self) -> NoReturn:
        _read_only()

    def setdefault(self, *args: Any) -> NoReturn:
        _read_only()

    def update(self, *args: Any, **kwargs: Any) -> NoReturn:
        _read_only()


_MISSING = object()
_MESSAGE_ID_SLOT: Any = vars(EventData)["_message_id"]  # the slot's descriptor, used directly
_set_message_id = _MESSAGE_ID_SLOT.__set__


def _message_id(event: EventData) -> str | None:
    try:
        message_id: str | None = _MESSAGE_ID_SLOT.__get__(event, EventData)
    except AttributeError:  # never set: the message had no id
        return None
    return message_id


def _read_only() -> NoReturn:
    raise TypeError(
        "an event is read-only: change a copy, e.g. data = dict(event) (or "
        "sagaz.events.plain_data(event) for a deep copy)"
    )


def _fields(event: EventData) -> str:
    names = [repr(k) for k in event]
    if not names:
        return "it has no fields"
    more = f" and {len(names) - 20} more" if len(names) > 20 else ""
    return f"its fields: {', '.join(names[:20])}{more}"


def _rebuild(data: dict[str, Any], message_id: str | None) -> EventData:
    return EventData(data, message_id=message_id)


_new_dict = dict.__new__
_update = dict.update


def as_event_data(payload: dict[str, Any], message_id: str | None) -> EventData:
    """``EventData(payload, message_id=message_id)``, about twice as fast (no ``__init__``
    call): the decoder builds one per event of an unannotated trigger method."""
    event: EventData = _new_dict(EventData)
    _update(event, payload)
    if message_id is not None:
        _set_message_id(event, message_id)
    _wrap_nested(event)
    return event


def _wrap_nested(event: EventData) -> None:
    for value in dict.values(event):  # most events are flat: this scan is all they cost
        if type(value) is dict or type(value) is list:
            for key, item in list(dict.items(event)):
                dict.__setitem__(event, key, _wrap(item))
            return


def _wrap(value: Any) -> Any:
    """``value`` with its JSON objects as :class:`EventData` (lists copied)."""
    if type(value) is dict:
        return EventData(value)
    if type(value) is list:
        return [_wrap(item) for item in value]
    return value


def plain_data(value: Any) -> Any:
    """``value`` with every :class:`EventData` in it (nested in dicts and lists too) turned
    into a plain, changeable ``dict``; anything else as it is (containers without an
    ``EventData`` inside are not copied).

    The engine passes what a trigger method returns through it, so a saga's context holds
    plain data, as it does once it is read back from the store."""
    cls = type(value)
    if cls is dict:  # the usual context: flat, nothing to copy (a cheap scan first)
        for item in value.values():
            kind = type(item)
            if kind is dict or kind is list or kind is EventData:
                break
        else:
            return value
    if cls is EventData or cls is dict:
        changed = False
        items = {}
        for key, item in dict.items(value):
            new = plain_data(item)
            changed = changed or new is not item
            items[key] = new
        return items if changed or cls is EventData else value
    if cls is list:
        new_items = [plain_data(item) for item in value]
        if any(a is not b for a, b in zip(new_items, value, strict=True)):
            return new_items
        return value
    return value


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
    #: utcnow(), made by a C callable (no Python call per event)
    received_at: datetime = field(default_factory=functools.partial(datetime.now, UTC))
    attempt: int = 1


def _no_ack() -> Awaitable[None]:
    return DONE  # settled in the call: no coroutine per event (``Settlement.ack`` skips it)


def _no_nack(requeue: bool) -> Awaitable[None]:
    return DONE


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

    ``trace_context`` is the OpenTelemetry context the event continues (:mod:`sagaz.tracing`;
    only while tracing is on): ``fire_event`` sets the caller's, admission replaces it with
    the context found in ``meta.headers`` when there is one, and its saga runs under it.

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
    trace_context: Any = None  # an opentelemetry Context (the extra is optional)
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
    #: its trigger was paused and the event could not wait: a cron tick, a ``fire_event``
    PAUSED = "paused"


@quick_init  # one per admission: see sagaz._frozen
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
