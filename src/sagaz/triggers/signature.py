"""What a trigger method's signature declares: the event's type and whether it wants the
:class:`~sagaz.events.EventMeta`.

Checked when the saga class is defined (:func:`check_trigger_method`), so an event type that
events cannot be validated into fails at import, not at ``start_triggers()``; the engine's
decoder resolves the same signature again (:func:`event_annotation`, :func:`event_adapter`)
when it starts.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter

from sagaz.events import EventData, EventMeta
from sagaz.exceptions import TriggerDefinitionError

__all__ = ["SUPPORTED_EVENT_TYPES", "check_trigger_method", "event_adapter", "event_annotation"]

SUPPORTED_EVENT_TYPES = (
    "a pydantic model, a dataclass or a TypedDict (the event is validated into it), "
    "dict[str, Any], the source's own event type (CronTick, WebhookRequest, FileEvent), or "
    "no annotation (a JSON object arrives as sagaz.EventData: event['id'] and event.id)"
)


def _parameters(fn: Callable[..., Any], *, bound: bool) -> list[inspect.Parameter]:
    params = list(inspect.signature(fn).parameters.values())
    return params if bound else params[1:]  # a function in a class body: drop self


def event_annotation(fn: Callable[..., Any], *, bound: bool = True) -> Any:
    """The annotation of ``fn``'s event parameter, resolved; ``None`` when it has none (or
    ``Any``, or :class:`~sagaz.events.EventData`: the decoded payload as it is).

    Raises what :func:`typing.get_type_hints` raises for a name it cannot resolve
    (``NameError`` for a forward reference to a type not defined yet)."""
    params = _parameters(fn, bound=bound)
    return _event_type(typing.get_type_hints(fn), params)


def _event_type(hints: dict[str, Any], params: list[inspect.Parameter]) -> Any:
    annotation = hints.get(params[0].name) if params else None
    return None if annotation in (Any, EventData) else annotation


def event_adapter(annotation: Any, *, where: str) -> TypeAdapter[Any]:
    """The pydantic ``TypeAdapter`` that validates events into ``annotation``;
    :class:`TriggerDefinitionError` (naming ``where`` and what is supported) for a type
    pydantic cannot validate, such as a plain class."""
    try:
        return TypeAdapter(annotation)
    except Exception as exc:
        name = getattr(annotation, "__qualname__", None) or repr(annotation)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TriggerDefinitionError(
            f"{where}: events cannot be validated into the event annotation {name} "
            f"(pydantic: {reason}). Annotate the event with {SUPPORTED_EVENT_TYPES}"
        ) from exc


def check_trigger_method(saga_cls: type, method: str, fn: Callable[..., Any]) -> None:
    """Check the signature of a ``@trigger`` method at class definition.

    A string annotation that does not resolve yet (a forward reference to a type defined
    further down the module) is left to the engine, which resolves it when it starts and
    fails ``start()`` with a :class:`TriggerDefinitionError` if it still cannot."""
    where = f"{saga_cls.__qualname__}.{method}"
    params = _parameters(fn, bound=False)
    if not params:
        raise TriggerDefinitionError(
            f"{where}: a trigger method takes the event: def {method}(self, event) -> dict | None"
        )
    if len(params) > 2:
        raise TriggerDefinitionError(
            f"{where}: a trigger method takes (self, event) or (self, event, meta: EventMeta), "
            f"got {len(params)} parameters"
        )
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return  # a forward reference: resolved (or refused) when the engine starts
    if len(params) == 2 and hints.get(params[1].name) not in (EventMeta, None):
        raise TriggerDefinitionError(
            f"{where}: the second parameter {params[1].name!r} must be annotated EventMeta"
        )
    annotation = _event_type(hints, params)
    if annotation is not None:
        event_adapter(annotation, where=f"{where} (parameter {params[0].name!r})")
