"""The event that starts an order saga, whichever way it arrives."""

from __future__ import annotations

from pydantic import BaseModel, Field


class OrderPlaced(BaseModel):
    """A customer placed an order: a Kafka message, a RabbitMQ message or a ``POST`` body.

    The trigger methods are annotated with it, so sagaz validates every event into it: a
    message that is not an order is dead-lettered (an HTTP request answered 400) and no saga
    starts.
    """

    order_id: str = Field(min_length=1)
    customer_id: str = Field(min_length=1)
    amount: float = Field(gt=0)
    country: str = Field(min_length=2, max_length=2, description="ISO code to ship to")
