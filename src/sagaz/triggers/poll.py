"""Custom poll-based triggers, as in Cloacina: ``Trigger`` with ``poll() -> Fire(ctx) | Skip``.

Mistakes fail where they are made, not at every poll: a ``Trigger`` subclass is checked when
the class is defined (``poll`` must be ``async def``; ``poll_interval``, ``name`` and
``allow_concurrent`` are attributes, not the methods of Cloacina's Rust trait), and the instance
given to ``@trigger(source="custom", trigger=...)`` when the saga class is defined (its values,
properties and instance attributes included). At run time a ``poll()`` that returns anything
but ``Fire``/``Skip`` is reported (log, ``on_trigger_error``, ``sagaz_source_errors``), never
taken for a ``Skip``.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any, Final

from sagaz.exceptions import TriggerDefinitionError

__all__ = ["Fire", "Skip", "Trigger", "check_trigger", "interval_seconds"]


@dataclass(frozen=True, slots=True)
class Fire:
    """Fire the saga with ``context`` (the trigger method receives it).

    ``Fire()`` and ``Fire(None)`` fire with an empty context (Cloacina's ``Fire(None)``).
    """

    context: dict[str, Any] | None = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.context is None:
            object.__setattr__(self, "context", {})
        elif not isinstance(self.context, Mapping):
            raise TypeError(
                f"Fire(context) takes a dict (what the trigger method receives), got "
                f"{type(self.context).__name__}: e.g. Fire({{'filename': name}})"
            )


class _SkipType:
    __slots__ = ()

    def __repr__(self) -> str:
        return "Skip"

    def __call__(self) -> _SkipType:
        return self


Skip: Final = _SkipType()
"""Do not fire this time; keep polling. ``Skip`` and ``Skip()`` are the same."""

_ATTRIBUTES: Final = {
    "name": '`name = "queue_monitor"`',
    "poll_interval": "`poll_interval = 3.0` (seconds) or `poll_interval = timedelta(seconds=3)`",
    "allow_concurrent": "`allow_concurrent = False`",
}


class Trigger(ABC):
    """A condition polled every ``poll_interval`` (seconds, or a ``timedelta``).

    >>> class QueueDepth(Trigger):
    ...     name = "queue_monitor"
    ...     poll_interval = 3.0            # or timedelta(seconds=3)
    ...     allow_concurrent = True
    ...
    ...     async def poll(self):
    ...         depth = await read_depth()
    ...         return Fire({"depth": depth}) if depth > 10 else Skip

    With ``allow_concurrent = False`` a ``Fire`` whose context hash matches a still-running
    execution of this trigger is skipped (reason ``overlap_skipped``).

    The class is checked when it is defined: ``poll`` must be ``async def`` (run blocking
    code with ``await asyncio.to_thread(...)`` inside it), and ``name``, ``poll_interval``,
    ``allow_concurrent`` are attributes (or properties), not methods as in Cloacina's trait.
    """

    name: str = ""
    poll_interval: float | timedelta = 1.0
    allow_concurrent: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        problems = [*_attribute_problems(partial(_class_value, cls)), *_poll_problems(cls)]
        if problems:
            raise TriggerDefinitionError(f"poll trigger {cls.__qualname__}: " + "; ".join(problems))

    @abstractmethod
    async def poll(self) -> Fire | _SkipType:
        """Check the condition; return ``Fire(context)`` or ``Skip``."""


def interval_seconds(value: float | timedelta) -> float:
    """``poll_interval`` in seconds (it may be a number of seconds or a ``timedelta``)."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def check_trigger(trigger: Trigger) -> None:
    """Check a poll trigger instance as the engine will use it (instance attributes and
    properties included); raises ``ValueError`` naming every problem and its fix."""
    problems = [
        *_attribute_problems(lambda name: (True, getattr(trigger, name, _NOT_GIVEN))),
        *_poll_problems(type(trigger), getattr(trigger, "poll", None)),
    ]
    if problems:
        raise ValueError(f"poll trigger {type(trigger).__qualname__}: " + "; ".join(problems))


_NOT_GIVEN: Final = object()


def _class_value(cls: type, name: str) -> tuple[bool, Any]:
    """(known now?, value) of a class attribute; a property is only known on an instance."""
    for klass in cls.__mro__:
        if name in vars(klass):
            raw = vars(klass)[name]
            if isinstance(raw, property):
                return False, None
            return True, raw
    return True, _NOT_GIVEN


def _attribute_problems(value_of: Callable[[str], tuple[bool, Any]]) -> list[str]:
    problems = []
    for name, fix in _ATTRIBUTES.items():
        known, value = value_of(name)
        if not known or value is _NOT_GIVEN:
            continue
        if inspect.isfunction(value) or inspect.ismethod(value):
            problems.append(
                f"{name} is a method (the style of Cloacina's Rust trait, "
                f"`fn {name}(&self)`); in sagaz it is an attribute: {fix}"
            )
            continue
        problem = _value_problem(name, value)
        if problem:
            problems.append(f"{problem}; e.g. {fix}")
    return problems


def _value_problem(name: str, value: Any) -> str | None:
    if name == "name":
        return None if isinstance(value, str) else f"name={value!r} must be a string"
    if name == "allow_concurrent":
        return None if isinstance(value, bool) else f"allow_concurrent={value!r} must be a bool"
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        return (
            f"poll_interval={value!r} must be a number of seconds or a timedelta, "
            f"not {type(value).__name__}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        return f"poll_interval={value!r} must be more than 0 seconds"
    return None


def _poll_problems(cls: type, bound: Any = None) -> list[str]:
    poll = bound if bound is not None else getattr(cls, "poll", None)
    if poll is None or getattr(poll, "__isabstractmethod__", False):
        return []  # an abstract base: its subclasses define poll
    if inspect.iscoroutinefunction(poll):
        return []
    if inspect.isasyncgenfunction(poll):
        kind = "an async generator"
    elif callable(poll):
        kind = "a plain (sync) function"
    else:
        return [f"poll must be an async method, got {poll!r}"]
    return [
        f"poll is {kind}; write `async def poll(self) -> Fire | Skip` and return once per "
        "poll (blocking code inside it: `await asyncio.to_thread(check)`)"
    ]
