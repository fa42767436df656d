"""Method calls on an unannotated event that no event of the trigger's source can answer.

An unannotated trigger method receives what its source delivers, decoded: from a broker
(Kafka, RabbitMQ, Redis Streams, SQS) a JSON object as :class:`~sagaz.events.EventData` (data:
its fields, and ``dict``'s methods), other JSON as a list, string or number, anything else as
``bytes``; from the webhook, cron and file sources their own event types. A call such as
ADR-025's ``event.is_valid()`` on such an event fails for every event, each one dead-lettered
with ``AttributeError``, so it is refused when the saga class is defined
(:func:`check_event_calls`), with the fix: annotate the event with a model that defines the
method, or read the data.

The check reads the method's source; it says nothing when it cannot (no source, the parameter
rebound in the method), and it leaves alone the sources whose events can be any object
(``memory``'s ``fire_event``, ``custom``).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing
from collections.abc import Callable, Iterator
from typing import Any

from sagaz.events import CronTick, EventData, FileEvent, WebhookRequest
from sagaz.exceptions import TriggerDefinitionError

__all__ = ["check_event_calls"]

#: what a JSON or raw message decodes to for an unannotated method
_MESSAGE_TYPES: tuple[type, ...] = (EventData, list, str, int, float, bool, type(None), bytes)
_MESSAGE = (
    "the decoded message: a JSON object arrives as sagaz.EventData, read-only data (its "
    "fields, event['field'] or event.field, and dict's methods such as event.get('field')), "
    "other JSON as a list, str or number, anything else as bytes"
)

#: source kind -> (the types its unannotated events can have, how to say so)
_EVENT_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "kafka": (_MESSAGE_TYPES, _MESSAGE),
    "rabbitmq": (_MESSAGE_TYPES, _MESSAGE),
    "redis": (_MESSAGE_TYPES, _MESSAGE),
    "sqs": ((EventData,), "the SQS message as sagaz.EventData (MessageId, Body, ...)"),
    "webhook": ((WebhookRequest,), "the request as a sagaz.events.WebhookRequest"),
    "cron": ((CronTick,), "the tick as a sagaz.events.CronTick"),
    "file": ((FileEvent,), "the file event as a sagaz.events.FileEvent"),
}


def check_event_calls(saga_cls: type, method: str, fn: Callable[..., Any], source: str) -> None:
    """Refuse, with :class:`TriggerDefinitionError`, a trigger method that calls a method its
    unannotated event cannot have (see the module); return quietly otherwise."""
    known = _EVENT_TYPES.get(source)
    if known is None:
        return
    types, delivered = known
    param = _unannotated_event_parameter(fn)
    if param is None:
        return
    function = _parsed(fn)
    if function is None:
        return
    for name, line in _calls_on(function, param):
        if any(hasattr(kind, name) for kind in types):
            continue
        where = f"{saga_cls.__qualname__}.{method} @trigger(source={source!r})"
        code = inspect.unwrap(fn).__code__
        at = f"{code.co_filename}:{code.co_firstlineno + line - 1}"
        raise TriggerDefinitionError(
            f"{where}: the method calls {param}.{name}() ({at}), but "
            f"{param!r} has no type annotation, so it receives {delivered}; none of them has "
            f"a method {name!r}, and every event would be dead-lettered with AttributeError. "
            f"Annotate the parameter with a pydantic model (or dataclass) that defines "
            f"{name}(), e.g. `def {method}(self, {param}: MyEvent)`: events are validated into "
            f"it. Or read the event's data instead, e.g. {param}.get('field')"
        )


def _unannotated_event_parameter(fn: Callable[..., Any]) -> str | None:
    """The name of ``fn``'s event parameter when it has no annotation (or ``Any``,
    ``EventData``: the same decoded payload), else ``None``."""
    params = list(inspect.signature(fn).parameters.values())[1:]  # a function in a class body
    if not params:
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return None  # a forward reference: annotated, resolved when the engine starts
    return params[0].name if hints.get(params[0].name) in (None, Any, EventData) else None


def _parsed(fn: Callable[..., Any]) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    try:
        source = textwrap.dedent(inspect.getsource(inspect.unwrap(fn)))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return None  # no source to read (an interactive session, generated code)
    node = tree.body[0] if tree.body else None
    return node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None


def _calls_on(
    function: ast.FunctionDef | ast.AsyncFunctionDef, param: str
) -> Iterator[tuple[str, int]]:
    """``(method, line)`` of each ``param.method(...)`` in ``function``'s body (line 1: the
    first line of its source); nothing when the body rebinds ``param`` (it may then be
    another object)."""
    body = ast.Module(body=function.body, type_ignores=[])
    if _rebinds(body, param):
        return
    for node in ast.walk(body):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == param
        ):
            yield node.func.attr, node.lineno


def _rebinds(tree: ast.AST, name: str) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == name and not isinstance(node.ctx, ast.Load):
            return True
        if isinstance(node, ast.arg) and node.arg == name:
            return True  # a nested function or lambda with a parameter of that name
        if isinstance(node, (ast.Global, ast.Nonlocal)) and name in node.names:
            return True
        if isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name == name:
            return True
        if isinstance(node, ast.MatchMapping) and node.rest == name:
            return True
    return False
