"""``CustomOptions``: ``@trigger(source="custom", trigger=...)`` with your own poll or push source.

>>> @trigger(source="custom", trigger=QueueDepth())  # doctest: +SKIP
... def on_depth(self, ctx: dict) -> dict: ...
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, field_validator

from sagaz.abc import Source
from sagaz.triggers.options.base import SourceOptions
from sagaz.triggers.poll import Trigger, check_trigger

__all__ = ["CustomOptions"]


class CustomOptions(SourceOptions):
    """A :class:`sagaz.Trigger` polled by the engine, or a :class:`sagaz.abc.Source` that pushes."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    trigger: Trigger | Source = Field(
        description="An instance of a sagaz.Trigger subclass (poll: name, poll_interval in "
        "seconds or a timedelta, allow_concurrent, async poll() -> Fire | Skip) or of a "
        "sagaz.abc.Source subclass (push: async run(emit)).",
    )

    @field_validator("trigger", mode="before")
    @classmethod
    def _instance(cls, value: Any) -> Any:
        if not isinstance(value, Trigger | Source):
            raise ValueError(
                "option trigger= must be an instance of a sagaz.Trigger subclass (poll) or of "
                f"a sagaz.abc.Source subclass (push), got {value!r}"
            )
        if isinstance(value, Trigger):
            check_trigger(value)  # its values as the engine will read them, properties included
        return value
