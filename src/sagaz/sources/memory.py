"""``source="memory"``: in-process events sent with ``sagaz.fire_event(channel, event)``.

There is no consumer task: :meth:`sagaz.engine.engine.TriggerEngine.fire` admits the
event into the pipeline directly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sagaz.abc import Source, SourceContext

__all__ = ["OPTIONS", "REQUIRED", "create", "validate"]

OPTIONS = frozenset({"channel"})
REQUIRED = frozenset({"channel"})


def validate(options: Mapping[str, Any]) -> None:
    """``channel`` must be a non-empty string."""
    channel = options.get("channel")
    if not isinstance(channel, str) or not channel:
        raise ValueError(f"option channel={channel!r} must be a non-empty string")


def create(options: Mapping[str, Any], ctx: SourceContext) -> Source:
    """Not used: the engine admits memory events itself, in :meth:`TriggerEngine.fire`."""
    raise NotImplementedError("memory triggers receive events from sagaz.fire_event()")
