"""``MemoryOptions``: the options of ``@trigger(source="memory", channel=...)``."""

from __future__ import annotations

from pydantic import Field

from sagaz.triggers.options.base import NonEmptyStr, SourceOptions

__all__ = ["MemoryOptions"]


class MemoryOptions(SourceOptions):
    """In-process events sent with ``sagaz.fire_event(channel, event)``."""

    channel: NonEmptyStr = Field(
        description="The channel name fire_event() sends to.", examples=["orders"]
    )
