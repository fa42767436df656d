"""Turn a pydantic ``ValidationError`` of an option model into messages a user can act on.

One message per problem, each naming the option, the value given and what is expected:

>>> from sagaz.triggers.options.kafka import KafkaOptions
>>> try:
...     KafkaOptions.model_validate({"topic": "t", "max_poll_records": 0})
... except ValidationError as exc:
...     explain(exc, {"topic": "t", "max_poll_records": 0}, KafkaOptions)
['option max_poll_records=0 must be an integer >= 1 (most records one poll returns)']
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

__all__ = ["explain"]


def explain(
    error: ValidationError,
    given: Mapping[str, Any],
    model: type[BaseModel],
    *,
    accepted: Iterable[str] = (),
) -> list[str]:
    """The problems in ``error``: unknown options first, then missing ones, then bad values.

    ``given`` is what was passed to the model (the values are quoted from it); ``accepted``
    lists the names accepted besides the model's fields (for the unknown-option hint).
    """
    unknown: list[str] = []
    missing: list[str] = []
    problems: dict[str, str] = {}  # one message per option, in the order of the errors
    for detail in error.errors():
        loc = detail["loc"]
        name = str(loc[0]) if loc else ""
        kind = detail["type"]
        if kind == "extra_forbidden":
            unknown.append(name)
        elif kind == "missing":
            missing.append(name)
        elif kind in ("value_error", "assertion_error"):
            # our validators write the whole message, naming the option and the fix
            message = str(detail.get("ctx", {}).get("error", detail["msg"]))
            problems.setdefault(name or message, message)
        elif name not in problems:
            field = model.model_fields.get(name)
            expected = _expected(field.annotation, field.metadata) if field else None
            value = given.get(name, detail.get("input"))
            purpose = (
                f" ({_lower(field.description).rstrip('.')})" if field and field.description else ""
            )
            problems[name] = (
                f"option {name}={value!r} must be {expected or _lower(detail['msg'])}{purpose}"
            )
    messages: list[str] = []
    if unknown:
        messages.append(_unknown(unknown, [*model.model_fields, *accepted]))
    if missing:
        messages.append(_missing(missing, model))
    messages.extend(problems.values())
    return messages


def _unknown(unknown: Iterable[str], accepted: Iterable[str]) -> str:
    """``unknown option(s) [...]``, with a close match when there is one, and the accepted list."""
    names, allowed = sorted(unknown), sorted(set(accepted))
    hints = [
        f"{close[0]!r} instead of {name!r}"
        for name in names
        if (close := difflib.get_close_matches(name, allowed, n=1))
    ]
    did_you_mean = f" (did you mean {', '.join(hints)}?)" if hints else ""
    return f"unknown option(s) {names}{did_you_mean}; accepted options: {allowed}"


def _missing(names: list[str], model: type[BaseModel]) -> str:
    hints = []
    for name in sorted(names):
        field = model.model_fields.get(name)
        if field is not None and field.examples:
            hints.append(f"e.g. {name}={field.examples[0]!r}")
        elif field is not None and field.description:
            hints.append(f"{name}: {_lower(field.description).rstrip('.')}")
    hint = f" ({'; '.join(hints)})" if hints else ""
    return f"missing required option(s) {sorted(names)}{hint}"


def _lower(text: str) -> str:
    """``"Most records"`` → ``"most records"``, but ``"HTTP method"`` stays."""
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def _expected(annotation: Any, metadata: Iterable[Any] = ()) -> str | None:
    """What a field accepts, in words (``None`` when its type is too unusual to say)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        return _expected(base, [*metadata, *_flatten(extra)])
    if origin in (typing.Union, types.UnionType):
        parts = [_expected(arg, metadata) for arg in get_args(annotation) if arg is not type(None)]
        return None if None in parts else " or ".join(p for p in parts if p)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(annotation))
    if annotation is bool:
        return "True or False"
    if annotation is int:
        return "an integer" + _bounds(metadata)
    if annotation is float:
        return "a number" + _bounds(metadata)
    if annotation is str:
        return "a non-empty string" if _min_length(metadata) else "a string"
    if annotation is bytes:
        return "non-empty bytes" if _min_length(metadata) else "bytes"
    if origin is dict or annotation is dict:
        return "a dict"
    if origin in (tuple, list):
        items = [a for a in get_args(annotation) if a is not Ellipsis]
        described = _expected(items[0]) if len(items) == 1 else None
        return f"a list of {_plural(described)}" if described else "a list"
    if origin is Callable or annotation is Callable:
        return "a callable taking the event, e.g. lambda e: e['id']"
    return None


def _flatten(extra: Iterable[Any]) -> list[Any]:
    """The constraints of ``Annotated`` extras (``Field(...)`` holds them in ``.metadata``)."""
    out: list[Any] = []
    for item in extra:
        out.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return out


def _bounds(metadata: Iterable[Any]) -> str:
    low: Any = None
    high: Any = None
    low_text = high_text = ""
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            low, low_text = item.ge, f">= {item.ge}"
        elif isinstance(item, annotated_types.Gt):
            low, low_text = item.gt, f"> {item.gt}"
        elif isinstance(item, annotated_types.Le):
            high, high_text = item.le, f"<= {item.le}"
        elif isinstance(item, annotated_types.Lt):
            high, high_text = item.lt, f"< {item.lt}"
    if low_text.startswith(">=") and high_text.startswith("<="):
        return f" in {low}..{high}"
    parts = [text for text in (low_text, high_text) if text]
    return " " + " and ".join(parts) if parts else ""


def _min_length(metadata: Iterable[Any]) -> bool:
    return any(isinstance(m, annotated_types.MinLen) and m.min_length > 0 for m in metadata)


def _plural(described: str) -> str:
    """``"a number >= 0"`` → ``"numbers >= 0"`` (good enough for the types we have)."""
    for single, many in (
        ("an integer", "integers"),
        ("a number", "numbers"),
        ("a non-empty string", "non-empty strings"),
        ("a string", "strings"),
    ):
        if described.startswith(single):
            return many + described[len(single) :]
    return described
