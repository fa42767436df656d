"""How a dead letter keeps its event, and how a replay gets the very same delivery back.

A dead letter keeps the :class:`~sagaz.events.Delivery` exactly, as data that every store holds
alike (JSON plus ``bytes`` and ``datetime``, see :mod:`sagaz.storage.codec`), and so does a
pending saga until its trigger method has run (:mod:`sagaz.engine.pending`):

``payload``
    the event: a message's raw ``bytes`` or ``str`` as it arrived (``meta["decoded"]`` false);
    a decoded payload (dict, list, scalar) as it is; an event object (``CronTick``,
    ``FileEvent``, ``WebhookRequest``, a pydantic model or dataclass given to ``fire_event``)
    as a dict of its fields, its class named by ``meta["payload_type"]``.
``meta``
    ``format`` (:data:`FORMAT`); every :class:`~sagaz.events.EventMeta` field (``source``,
    ``trigger``, ``message_id``, ``topic``, ``partition``, ``offset``, ``key``, ``headers``,
    ``received_at``, ``attempt``); the delivery's ``identity``, ``decoded`` and ``body`` (an
    envelope's raw body, ``bytes`` or ``str`` as the source gave it, or ``body_field``: the
    field of ``payload`` that holds it, as a ``WebhookRequest`` does); where the saga class
    lives (``saga_module``, ``saga_qualname``, ``saga_file``), so that a replay imports it by
    itself; ``replay_of`` when it is the dead letter of a replay that failed again.

Dead letters written before this format (``meta`` with only ``message_id``, ``topic``,
``partition``, ``offset``, ``identity`` and ``body``) are replayed as well as they can be: their
payload as a decoded event, with their identity and body.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import sys
import traceback as tb
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sagaz.events import Delivery, EventData, EventMeta, plain_data
from sagaz.exceptions import DeadLetterReplayError, StoreError
from sagaz.records import DeadLetterRecord
from sagaz.storage.codec import encode_value

if TYPE_CHECKING:
    from sagaz.engine.active_trigger import ActiveTrigger

__all__ = [
    "FORMAT",
    "dead_letter_record",
    "describe_error",
    "keep_body",
    "keep_payload",
    "replay_delivery",
    "saga_location",
]

FORMAT = 2
"""The version of the layout above (1: before the delivery was kept whole)."""

#: the class of an event a dead letter could only describe (``repr``): it cannot be replayed
UNSTORABLE = "unstorable"
#: the source of a saga the recovery loop resumed (``TriggerEngine.recover_once``)
RECOVERED = "recovery"

_PLAIN = (type(None), str, bytes, int, float, bool, dict, list)
#: the values a flat event keeps as they are (a float may be NaN: checked by _finite)
_FLAT = frozenset({str, int, bool})


def dead_letter_record(
    trigger: ActiveTrigger,
    delivery: Delivery,
    *,
    reason: str,
    error: BaseException | str,
    attempts: int,
    saga_id: str | None,
) -> DeadLetterRecord:
    """The dead letter of ``delivery``: the event exactly, its metadata, where its saga lives."""
    message, trace = describe_error(error)
    payload, kept = keep_payload(delivery.payload)
    event_meta = delivery.meta
    meta: dict[str, Any] = {
        "format": FORMAT,
        "source": event_meta.source,
        "trigger": event_meta.trigger or trigger.trigger_id,
        "message_id": event_meta.message_id,
        "topic": event_meta.topic,
        "partition": event_meta.partition,
        "offset": event_meta.offset,
        "key": event_meta.key,
        "headers": dict(event_meta.headers),
        "received_at": event_meta.received_at,
        "attempt": event_meta.attempt,
        "identity": delivery.identity,
        "decoded": delivery.decoded,
        **kept,
        **saga_location(type(trigger.saga)),
    }
    if delivery.body is not None:  # an envelope: a typed trigger method gets its body
        keep_body(meta, payload, delivery.body)
    if delivery.replay_of is not None:
        meta["replay_of"] = delivery.replay_of
    return DeadLetterRecord(
        trigger_id=trigger.trigger_id,
        saga_name=trigger.saga_name,
        payload=payload,
        error=message,
        reason=reason,
        traceback=trace,
        attempts=attempts,
        saga_id=saga_id,
        source=event_meta.source,
        meta=meta,
    )


def describe_error(error: BaseException | str) -> tuple[str, str | None]:
    """A dead letter's ``error`` and ``traceback`` for ``error``."""
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}", "".join(tb.format_exception(error))
    return error, None


def keep_body(kept: dict[str, Any], payload: Any, body: bytes | str) -> None:
    """Record in ``kept`` (a dead letter's or a pending row's metadata) the body of an
    envelope whose fields are ``payload``: as the name of the field that holds it
    (``body_field``: stored once, in the envelope, e.g. a WebhookRequest's body), else as
    itself (``body``)."""
    if isinstance(payload, dict):
        for name, value in payload.items():
            if value is body or (type(value) is type(body) and value == body):
                kept["body_field"] = str(name)
                return
    kept["body"] = body


def saga_location(saga_cls: type) -> dict[str, str | None]:
    """Where ``saga_cls`` is defined: its module, qualified name and source file.

    The file matters for a saga defined in a script (``python app.py``: module ``__main__``)
    and for a module that does not import from where the replay runs."""
    module = sys.modules.get(saga_cls.__module__)
    path = getattr(module, "__file__", None)
    return {
        "saga_module": saga_cls.__module__,
        "saga_qualname": saga_cls.__qualname__,
        "saga_file": os.path.abspath(path) if isinstance(path, str) else None,
    }


# -- keeping an event ------------------------------------------------------------------------
def _storable(value: Any) -> bool:
    """Whether the stores keep ``value`` exactly (JSON, bytes, datetimes; finite floats)."""
    if type(value) is dict:  # the usual event, a flat JSON object: checked without a copy
        for key, item in value.items():
            if type(key) is not str or (item is not None and type(item) not in _FLAT):
                break
        else:
            return True
    try:
        encode_value(value)
    except StoreError:
        return False
    return _finite(value)


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    return True


def keep_payload(payload: Any) -> tuple[Any, dict[str, Any]]:
    """The payload as a dead letter stores it, and what ``meta`` says about it."""
    if type(payload) is EventData:  # an event a trigger method got, handed in again
        payload = plain_data(payload)
    if isinstance(payload, _PLAIN) and _storable(payload):
        return payload, {}
    cls = type(payload)
    type_name = f"{cls.__module__}:{cls.__qualname__}"
    if dataclasses.is_dataclass(payload) and not isinstance(payload, type):
        fields = {
            f.name: dict(value) if isinstance(value := getattr(payload, f.name), Mapping) else value
            for f in dataclasses.fields(payload)
        }
        if _storable(fields):
            return fields, {"payload_type": type_name, **_zones(fields)}
    elif hasattr(payload, "model_dump") and hasattr(cls, "model_validate"):
        fields = payload.model_dump(mode="python")
        if _storable(fields):
            return fields, {"payload_type": type_name, **_zones(fields)}
    if not isinstance(payload, (*_PLAIN, Mapping, tuple)):
        try:  # pydantic knows most types (UUID, Decimal, nested models) and parses them back
            from pydantic import TypeAdapter

            data = TypeAdapter(cls).dump_python(payload, mode="json")
            TypeAdapter(cls).validate_python(data)
        except Exception:
            return repr(payload)[:10_000], {"payload_type": UNSTORABLE, "payload_class": type_name}
        return data, {"payload_type": type_name, "payload_form": "json"}
    return _approximate(payload), {"payload_approximate": True}


def _zones(fields: dict[str, Any]) -> dict[str, Any]:
    """The time zone names of ``fields``' datetimes (the stores keep only their UTC offset)."""
    zones = {
        name: value.tzinfo.key
        for name, value in fields.items()
        if isinstance(value, datetime) and isinstance(value.tzinfo, ZoneInfo) and value.tzinfo.key
    }
    return {"payload_zones": zones} if zones else {}


def _approximate(value: Any) -> Any:
    """Plain data that the stores cannot keep exactly (a ``Decimal``, a ``set``...), as close
    as JSON gets; the dead letter says so (``meta["payload_approximate"]``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, str | bool | int | float | bytes | datetime):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Mapping):
        return {str(k): _approximate(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_approximate(v) for v in value]
    try:
        from pydantic_core import to_jsonable_python

        return to_jsonable_python(value)
    except Exception:
        return repr(value)


# -- getting it back ---------------------------------------------------------------------------
def replay_delivery(
    record: DeadLetterRecord,
    *,
    known_types: Iterable[type] = (),
    module_aliases: Mapping[str, str] | None = None,
) -> Delivery:
    """The delivery that was dead-lettered as ``record``, to admit again (``replay_of`` set).

    ``known_types`` are classes to rebuild the event with before importing one by name (the
    trigger method's annotation: it may live in a function or a script). ``module_aliases``
    maps a module name stored with the dead letter to the one it was imported as for the
    replay (``__main__`` → the script's name). Raises :class:`DeadLetterReplayError` when the
    event cannot be rebuilt.
    """
    meta = record.meta
    if meta.get("format") != FORMAT:
        return _legacy_delivery(record)
    if meta.get("source") == RECOVERED:
        raise DeadLetterReplayError(
            f"dead letter {record.id} is of saga {record.saga_id}, which was resumed after its "
            "worker stopped: the engine resumed it from its stored context, without the "
            "event's original delivery, so it cannot be replayed as that event. Send the "
            f"event again (saga {record.saga_id} holds its context)"
        )
    event_meta = EventMeta(
        source=meta.get("source") or record.source or "replay",
        trigger=meta.get("trigger") or record.trigger_id,
        message_id=meta.get("message_id"),
        topic=meta.get("topic"),
        partition=meta.get("partition"),
        offset=meta.get("offset"),
        key=meta.get("key"),
        headers=dict(meta.get("headers") or {}),
        attempt=int(meta.get("attempt") or 1),
    )
    if isinstance(meta.get("received_at"), datetime):
        event_meta.received_at = meta["received_at"]
    body = meta.get("body")
    if meta.get("body_field") and isinstance(record.payload, dict):
        body = record.payload.get(meta["body_field"])
    return Delivery(
        payload=_event(record, known_types, module_aliases or {}),
        meta=event_meta,
        identity=str(meta.get("identity") or ""),
        decoded=bool(meta.get("decoded")),
        body=body if isinstance(body, bytes | str) else None,
        replay_of=record.id,
    )


def _legacy_delivery(record: DeadLetterRecord) -> Delivery:
    meta = record.meta
    body = meta.get("body")
    return Delivery(
        payload=record.payload,
        meta=EventMeta(
            source=record.source or "replay",
            trigger=record.trigger_id,
            message_id=meta.get("message_id"),
            topic=meta.get("topic"),
            partition=meta.get("partition"),
            offset=meta.get("offset"),
        ),
        identity=str(meta.get("identity") or ""),
        decoded=True,
        body=body if isinstance(body, bytes | str) else None,
        replay_of=record.id,
    )


def _event(record: DeadLetterRecord, known: Iterable[type], aliases: Mapping[str, str]) -> Any:
    meta = record.meta
    type_name = meta.get("payload_type")
    if type_name is None:
        return record.payload
    if type_name == UNSTORABLE:
        raise DeadLetterReplayError(
            f"dead letter {record.id} kept only a description of its event, a "
            f"{meta.get('payload_class')} that sagaz cannot store: "
            f"{str(record.payload)[:200]}. It cannot be replayed; send the event again "
            "(give fire_event a pydantic model, a dataclass or JSON data to make it replayable)"
        )
    cls = _resolve(str(type_name), known, aliases, record)
    fields = record.payload
    if not isinstance(fields, dict):
        raise DeadLetterReplayError(
            f"dead letter {record.id}: its event of type {type_name} is stored as a "
            f"{type(fields).__name__}, not as its fields; it cannot be rebuilt"
        )
    try:
        if meta.get("payload_form") == "json":
            from pydantic import TypeAdapter

            return TypeAdapter(cls).validate_python(fields)
        fields = dict(fields)
        for name, zone in (meta.get("payload_zones") or {}).items():
            if isinstance(fields.get(name), datetime):
                fields[name] = fields[name].astimezone(ZoneInfo(zone))
        validate = getattr(cls, "model_validate", None)
        if validate is not None and not dataclasses.is_dataclass(cls):
            return validate(fields)
        return cls(**fields)
    except Exception as exc:
        raise DeadLetterReplayError(
            f"dead letter {record.id}: its event no longer fits {type_name} "
            f"({type(exc).__name__}: {exc}); was the class changed since?"
        ) from exc


def _resolve(
    type_name: str, known: Iterable[type], aliases: Mapping[str, str], record: DeadLetterRecord
) -> type:
    module_name, _, qualname = type_name.partition(":")
    for cls in known:
        if cls.__module__ == module_name and cls.__qualname__ == qualname:
            return cls
    module_name = aliases.get(module_name, module_name)
    where = f"dead letter {record.id}: its event is a {qualname} (module {module_name})"
    if "<locals>" in qualname:
        raise DeadLetterReplayError(
            f"{where}, a class defined inside a function, which a replay cannot import; "
            "define the event class at module level"
        )
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception as exc:
        raise DeadLetterReplayError(
            f"{where}, which cannot be imported ({type(exc).__name__}: {exc}); pass the module "
            "that defines it with --modules"
        ) from exc
    if not isinstance(found, type):
        raise DeadLetterReplayError(f"{where}, but {type_name} is not a class")
    return found
