"""``source="memory"``: in-process events sent with ``sagaz.fire_event(channel, event)``.

There is no consumer task: :meth:`sagaz.engine.engine.TriggerEngine.fire` admits the
event into the pipeline directly."""

from __future__ import annotations

from sagaz.abc import Source, SourceContext
from sagaz.triggers.options.memory import MemoryOptions

__all__ = ["create"]


def create(options: MemoryOptions, ctx: SourceContext) -> Source:
    """Not used: the engine admits memory events itself, in :meth:`TriggerEngine.fire`."""
    raise NotImplementedError("memory triggers receive events from sagaz.fire_event()")
