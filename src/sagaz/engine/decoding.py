"""Turning a :class:`~sagaz.events.Delivery` into the event a trigger method expects.

If the method's first parameter is annotated with a pydantic model, dataclass or TypedDict,
the payload is validated into it (pydantic ``TypeAdapter``). Unannotated: the decoded payload,
a JSON object as an :class:`~sagaz.events.EventData` (a read-only mapping with attribute
access, nested too), other JSON as decoded, otherwise ``bytes``.

The decoder knows no source: it goes by the method's annotation, the payload's type, and what
the source said its payload is (``Delivery.decoded``, ``Delivery.body``; see
:class:`~sagaz.events.Delivery`).
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from pydantic import TypeAdapter, ValidationError
from typing_extensions import is_typeddict

from sagaz.events import Delivery, EventMeta, as_event_data
from sagaz.exceptions import InvalidEventError, TriggerDefinitionError
from sagaz.triggers.signature import event_adapter, event_annotation

__all__ = ["EventDecoder", "InvalidPayloadError"]

#: payload types that are plain data (what JSON decodes to): no hint about the source's type
_PLAIN = (Mapping, list, tuple, str, bytes, bytearray, int, float, bool, type(None))


class InvalidPayloadError(InvalidEventError):
    """The payload could not be decoded or validated; ``details`` holds pydantic's errors."""

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.details = details


#: parses one JSON value at an index, without ``json.loads``' encoding detection and the two
#: whitespace matches around the value (about 2.5x faster on a small object); not in typeshed
_scan_json: Callable[[str, int], tuple[Any, int]]
_scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _loads(payload: bytes) -> Any:
    """``json.loads(payload)``: the common case (UTF-8, no whitespace around the value) by
    the scanner alone; anything else (a BOM, UTF-16, surrounding whitespace, invalid JSON) by
    ``json.loads`` itself, so the result and the errors are the same."""
    try:
        text = payload.decode()
        value, end = _scan_json(text, 0)
    except (ValueError, StopIteration):  # UnicodeDecodeError and JSONDecodeError included
        return json.loads(payload)
    if end != len(text):  # trailing whitespace or extra data: json.loads decides
        return json.loads(payload)
    return value


def _json_or_raw(payload: Any) -> Any:
    if type(payload) is bytes:  # a broker message: the common case first
        try:
            return _loads(payload)
        except (ValueError, UnicodeDecodeError):
            return payload
    if isinstance(payload, memoryview):
        payload = payload.tobytes()
    if isinstance(payload, (bytes, bytearray, str)):
        try:
            return json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return bytes(payload) if not isinstance(payload, str) else payload
    return payload


class EventDecoder:
    """Decodes deliveries for one trigger method (the ``TypeAdapter`` is built once)."""

    def __init__(self, fn: Callable[..., Any], *, where: str) -> None:
        self.where = where
        params = list(inspect.signature(fn).parameters.values())
        # bound method: no self; plain function: drop self
        bound = not (params and params[0].name == "self")
        self.wants_meta = len(params) - (0 if bound else 1) >= 2
        try:
            annotation = event_annotation(fn, bound=bound)
        except Exception as exc:
            raise TriggerDefinitionError(
                f"{where}: cannot resolve the type annotations of the trigger method ({exc}); "
                "define the event type at module level (not inside a function: a forward "
                "reference must resolve in the method's module by the time the engine "
                "starts) so sagaz can validate events into it"
            ) from exc
        self.annotation: Any = annotation
        origin = typing.get_origin(annotation) or annotation
        #: a model, dataclass or TypedDict (not a plain dict/mapping): validated from the body
        self.structured = annotation is not None and origin not in (
            dict,
            Mapping,
            MutableMapping,
            object,
        )
        #: the class a payload may already be an instance of; none for ``dict`` (its items are
        #: validated) nor for a TypedDict (a plain dict at run time, with no instance check)
        self._instance_of: type | None = (
            origin
            if isinstance(origin, type) and origin is not dict and not is_typeddict(annotation)
            else None
        )
        self.adapter: TypeAdapter[Any] | None = (
            event_adapter(annotation, where=where) if annotation is not None else None
        )
        #: ``dict[str, Any]`` (or a bare ``dict``): a ``dict`` whose keys are all ``str`` is
        #: what pydantic makes of it, a shallow copy, made here at a third of the cost
        self._copies_dict = origin is dict and typing.get_args(annotation) in ((), (str, Any))

    def decode(self, delivery: Delivery) -> Any:
        """The event object for the trigger method, or :class:`InvalidPayloadError`."""
        payload = delivery.payload
        if self.adapter is None:  # unannotated: the payload as the source gave it
            event = payload if delivery.decoded else _json_or_raw(payload)
            if type(event) is dict:  # a JSON object: event["user_id"] and event.user_id
                return as_event_data(event, delivery.meta.message_id)
            return event
        if self._instance_of is not None and isinstance(payload, self._instance_of):
            return payload  # already what the method wants (a CronTick, a WebhookRequest...)
        if self._copies_dict and type(payload) is dict and delivery.body is None:
            for key in payload:
                if type(key) is not str:
                    break  # pydantic's: it turns other keys into str, or refuses them
            else:
                return dict(payload)
        envelope = delivery.body is not None and (
            # a typed event is the envelope's body; a plain mapping gets a mapping envelope
            self.structured or not isinstance(payload, Mapping)
        )
        try:
            if envelope:
                return self.adapter.validate_json(delivery.body or b"null")
            if not delivery.decoded and isinstance(payload, (bytes, bytearray, str)):
                return self.adapter.validate_json(payload)
            return self.adapter.validate_python(payload)
        except ValidationError as exc:
            details = exc.errors(include_url=False, include_context=False)
            expected = getattr(self.annotation, "__name__", self.annotation)
            hint = ""
            if not envelope and not isinstance(payload, _PLAIN):
                delivered = type(payload).__name__
                hint = (
                    f" (the trigger's source delivers a {delivered}: annotate the event as "
                    f"{delivered}, or leave it unannotated)"
                )
            raise InvalidPayloadError(
                f"{self.where}: event does not match {expected}: "
                f"{exc.error_count()} validation error(s): {_summary(details)}{hint}",
                details=_jsonable(details),
            ) from exc

    def arguments(self, event: Any, meta: EventMeta) -> tuple[Any, ...]:
        """Positional arguments for the trigger method."""
        return (event, meta) if self.wants_meta else (event,)


def _summary(details: list[Any]) -> str:
    parts = []
    for error in details[:3]:
        loc = ".".join(str(p) for p in error.get("loc", ())) or "<root>"
        parts.append(f"{loc}: {error.get('msg')}")
    return "; ".join(parts)


def _jsonable(details: list[Any]) -> list[dict[str, Any]]:
    out = []
    for error in details:
        item = {k: v for k, v in error.items() if k in ("type", "loc", "msg")}
        item["loc"] = list(item.get("loc", ()))
        out.append(item)
    return out
