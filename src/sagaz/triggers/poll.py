"""Custom poll-based triggers, as in Cloacina: ``Trigger`` with ``poll() -> Fire(ctx) | Skip``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["Fire", "Skip", "Trigger"]


@dataclass(frozen=True, slots=True)
class Fire:
    """Fire the saga with ``context`` (the trigger method receives it)."""

    context: dict[str, Any] = field(default_factory=dict)


class _SkipType:
    __slots__ = ()

    def __repr__(self) -> str:
        return "Skip"

    def __call__(self) -> _SkipType:
        return self


Skip: Final = _SkipType()
"""Do not fire this time; keep polling. ``Skip`` and ``Skip()`` are the same."""


class Trigger(ABC):
    """A condition polled every ``poll_interval`` seconds.

    >>> class QueueDepth(Trigger):
    ...     name = "queue_monitor"
    ...     poll_interval = 3.0
    ...     allow_concurrent = True
    ...
    ...     async def poll(self):
    ...         depth = await read_depth()
    ...         return Fire({"depth": depth}) if depth > 10 else Skip

    With ``allow_concurrent = False`` a ``Fire`` whose context hash matches a still-running
    execution of this trigger is skipped (reason ``overlap_skipped``).
    """

    name: str = ""
    poll_interval: float = 1.0
    allow_concurrent: bool = True

    @abstractmethod
    async def poll(self) -> Fire | _SkipType:
        """Check the condition; return ``Fire(context)`` or ``Skip``."""
