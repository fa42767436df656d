"""``RabbitMQOptions``: the options of ``@trigger(source="rabbitmq", ...)`` (no aio-pika import).

>>> RabbitMQOptions(queue="jobs", exchange="events", routing_key="job.*").routing_keys
('job.*',)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sagaz.triggers.options.base import NonEmptyStr, SourceOptions

__all__ = ["MAX_PREFETCH", "RabbitMQOptions"]

#: AMQP's prefetch-count is an unsigned short
MAX_PREFETCH = 65535


class RabbitMQOptions(SourceOptions):
    """One queue, declared (durable by default) and optionally bound to an exchange."""

    queue: NonEmptyStr = Field(
        description="The queue to consume (declared if it does not exist).", examples=["orders"]
    )
    exchange: NonEmptyStr | None = Field(
        default=None,
        description="An exchange to declare and bind the queue to; default: none (the queue "
        "only receives messages published to it directly).",
    )
    exchange_type: Literal["topic", "direct", "fanout", "headers"] = Field(
        default="topic", description="Type of the declared exchange (needs exchange=)."
    )
    routing_key: str | tuple[str, ...] | None = Field(
        default=None,
        description='Binding key(s) (needs exchange=); default: "#" on a topic exchange, the '
        'queue name on a direct one, "" on fanout/headers.',
    )
    prefetch: int | None = Field(
        default=None,
        ge=1,
        le=MAX_PREFETCH,
        description="Most unacknowledged messages the broker hands over; default: "
        "min(TriggerConfig.queue_size, 1000).",
    )
    url: str | None = Field(
        default=None,
        description="amqp:// or amqps:// URL of the broker; default: TriggerConfig.rabbitmq_url.",
    )
    durable: bool = Field(default=True, description="Declare the queue (and the exchange) durable.")

    @field_validator("routing_key", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if (
            isinstance(value, Sequence)
            and not isinstance(value, bytes)
            and value
            and all(isinstance(key, str) for key in value)
        ):
            return tuple(value)
        raise ValueError(
            f"option routing_key={value!r} must be a string or a non-empty list of strings"
        )

    @field_validator("url")
    @classmethod
    def _amqp_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("amqp://", "amqps://")):
            raise ValueError("option url must be an amqp:// or amqps:// URL")
        return value

    @model_validator(mode="after")
    def _binding_needs_exchange(self) -> RabbitMQOptions:
        for name in ("exchange_type", "routing_key"):
            if name in self.model_fields_set and self.exchange is None:
                raise ValueError(
                    f"option {name} needs exchange=...: without an exchange the queue only "
                    "receives messages published to it directly"
                )
        return self

    @property
    def routing_keys(self) -> tuple[str, ...]:
        """One binding per key (none without an exchange); see ``routing_key``."""
        if self.exchange is None:
            return ()
        if self.routing_key is None:
            return {"topic": ("#",), "direct": (self.queue,)}.get(self.exchange_type, ("",))
        if isinstance(self.routing_key, str):
            return (self.routing_key,)
        return self.routing_key
