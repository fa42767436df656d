"""The event a drift monitor publishes."""

from __future__ import annotations

from pydantic import BaseModel, Field


class DriftEvent(BaseModel):
    """A model's input data drifted from its training data by ``score`` (0: none, 1: total).

    The Kafka trigger is annotated with it: sagaz validates each message into it, and a
    message that is not a drift event is dead-lettered without starting a saga.
    """

    model_id: str = Field(min_length=1)
    score: float = Field(ge=0, le=1)
    feature: str | None = Field(default=None, description="the feature that drifted most")
