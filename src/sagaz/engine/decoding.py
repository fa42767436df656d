"""Turning a :class:`~sagaz.events.Delivery` into the event a trigger method expects.

If the method's first parameter is annotated with a pydantic model, dataclass or TypedDict,
the payload is validated into it (pydantic ``TypeAdapter``). Unannotated: the decoded payload
(JSON → dict/list, otherwise ``bytes``).
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from sagaz.events import CronTick, Delivery, EventMeta, FileEvent, WebhookRequest
from sagaz.exceptions import InvalidEventError

__all__ = ["EventDecoder", "InvalidPayloadError"]

_PASSTHROUGH = (CronTick, FileEvent, WebhookRequest)


class InvalidPayloadError(InvalidEventError):
    """The payload could not be decoded or validated; ``details`` holds pydantic's errors."""

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.details = details


def _json_or_raw(payload: Any) -> Any:
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
        if params and params[0].name == "self":
            params = params[1:]
        self.wants_meta = len(params) >= 2
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:
            from sagaz.exceptions import TriggerDefinitionError

            raise TriggerDefinitionError(
                f"{where}: cannot resolve the type annotations of the trigger method ({exc}); "
                "define the event type at module level (not inside a function) so sagaz can "
                "validate events into it"
            ) from exc
        annotation = hints.get(params[0].name) if params else None
        if annotation is Any:
            annotation = None
        self.annotation: Any = annotation
        self.adapter: TypeAdapter[Any] | None = None
        origin_type = typing.get_origin(annotation) or annotation
        #: a model, dataclass or TypedDict (not a plain dict/mapping): validated from the body
        self.structured = annotation is not None and origin_type not in (
            dict,
            Mapping,
            MutableMapping,
            object,
        )
        self._isinstance_type: type | None = None
        if annotation is not None:
            origin = typing.get_origin(annotation) or annotation
            if isinstance(origin, type):
                self._isinstance_type = origin
            if annotation not in _PASSTHROUGH:
                self.adapter = TypeAdapter(annotation)

    def decode(self, delivery: Delivery) -> Any:
        """The event object for the trigger method, or :class:`InvalidPayloadError`."""
        payload = delivery.payload
        if self.annotation is None:
            return _json_or_raw(payload) if not delivery.decoded else payload
        if (
            self._isinstance_type is not None
            and isinstance(payload, self._isinstance_type)
            and not typing.is_typeddict(self.annotation)
            and self._isinstance_type is not dict
        ):
            return payload
        if self.adapter is None:  # a source type such as CronTick, and it did not match
            raise InvalidPayloadError(
                f"{self.where}: expected a {self.annotation.__name__}, got "
                f"{type(payload).__name__}; is the trigger's source right?"
            )
        try:
            if isinstance(payload, WebhookRequest):
                return self.adapter.validate_json(payload.body or b"null")
            if (
                self.structured
                and delivery.meta.source == "sqs"
                and isinstance(payload, dict)
                and "Body" in payload
            ):  # a model describes the message body; a plain dict gets the whole message
                body = payload["Body"]
                if isinstance(body, (str, bytes)):
                    return self.adapter.validate_json(body)
                return self.adapter.validate_python(body)
            if isinstance(payload, (bytes, bytearray, str)) and not delivery.decoded:
                return self.adapter.validate_json(payload)
            return self.adapter.validate_python(payload)
        except ValidationError as exc:
            details = exc.errors(include_url=False, include_context=False)
            expected = getattr(self.annotation, "__name__", self.annotation)
            raise InvalidPayloadError(
                f"{self.where}: event does not match {expected}: "
                f"{exc.error_count()} validation error(s): {_summary(details)}",
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
