"""``@trigger``: turn an external event into a saga's starting context."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["TRIGGER_ATTR", "TriggerSpec", "trigger"]

F = TypeVar("F", bound=Callable[..., Any])

TRIGGER_ATTR = "__sagaz_triggers__"


@dataclass(frozen=True, slots=True)
class TriggerSpec:
    """What ``@trigger`` records on a method; validated when the class is created."""

    source: str
    options: dict[str, Any]


def trigger(source: str, **options: Any) -> Callable[[F], F]:
    """Mark a saga method as a trigger of ``source``.

    The method (sync or ``async``) receives the event — validated into the annotation of its
    first parameter — and returns the saga's starting context, or ``None`` to skip the event.
    Options are validated when the class is created, so a typo fails at import.

    >>> class OrderSaga(Saga):  # doctest: +SKIP
    ...     @trigger(source="kafka", topic="orders", group_id="svc",
    ...              idempotency_key=lambda e: e["id"])
    ...     def on_order(self, event: dict) -> dict | None:
    ...         return {"order_id": event["id"]}

    A method may carry several ``@trigger`` decorators (one trigger id each: the second and
    later get a ``#2``... suffix).
    """
    if not isinstance(source, str):
        raise TypeError(f"@trigger(source=...) takes a source name string, got {source!r}")

    def decorate(fn: F) -> F:
        if not callable(fn) or inspect.isclass(fn):
            raise TypeError(f"@trigger decorates a method, got {fn!r}")
        specs: list[TriggerSpec] = list(getattr(fn, TRIGGER_ATTR, ()))
        specs.insert(0, TriggerSpec(source, dict(options)))
        setattr(fn, TRIGGER_ATTR, tuple(specs))
        return fn

    return decorate
