"""``KafkaOptions``: the options of ``@trigger(source="kafka", ...)``.

Free of aiokafka, so a typo in a trigger fails at import even where the driver is not installed.

>>> KafkaOptions(topic="orders").topics
['orders']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sagaz.triggers.options.base import NonEmptyStr, PositiveInt, SourceOptions

__all__ = ["KafkaOptions"]


class KafkaOptions(SourceOptions):
    """One consumer-group member reading one or more topics (aiokafka)."""

    topic: tuple[str, ...] = Field(
        description='A topic name or a list of topic names, e.g. "orders" or '
        '["orders", "refunds"].',
        examples=["orders", ["orders", "refunds"]],
    )
    group_id: NonEmptyStr | None = Field(
        default=None, description='Consumer group; default: "sagaz-" + the trigger id.'
    )
    bootstrap_servers: NonEmptyStr | None = Field(
        default=None,
        description="Broker addresses (host:port,...); default: "
        "TriggerConfig.kafka_bootstrap_servers.",
    )
    auto_offset_reset: Literal["earliest", "latest", "none"] = Field(
        default="earliest",
        description="Where a group without a committed offset starts reading.",
    )
    client_id: NonEmptyStr | None = Field(
        default=None, description='Kafka client id; default: "sagaz-" + the worker id.'
    )
    session_timeout_ms: PositiveInt = Field(
        default=10_000,
        description="Milliseconds without heartbeat after which the broker evicts the member.",
    )
    heartbeat_interval_ms: PositiveInt = Field(
        default=3_000,
        description="Milliseconds between heartbeats; lower than session_timeout_ms (about 1/3).",
    )
    max_poll_interval_ms: PositiveInt = Field(
        default=300_000,
        description="Longest pause between polls before the member leaves the group.",
    )
    max_poll_records: PositiveInt = Field(default=500, description="Most records one poll returns.")
    poll_timeout_ms: PositiveInt = Field(
        default=250,
        description="Longest wait of one poll; bounds how fast stop() is noticed.",
    )
    commit_interval_ms: PositiveInt = Field(
        default=1_000,
        description="Commit settled offsets at least this often (or after commit_every events).",
    )
    commit_every: PositiveInt = Field(
        default=500,
        description="Commit as soon as this many events were settled since the last commit.",
    )
    max_buffered_per_partition: PositiveInt = Field(
        default=1_000,
        description="Pause a partition above this many fetched but not yet emitted records.",
    )
    max_unsettled_per_partition: PositiveInt = Field(
        default=10_000,
        description="Pause a partition above this many emitted but unsettled events.",
    )
    commit_timeout_ms: PositiveInt = Field(
        default=15_000, description="Bound of one commit (the final one in stop() too)."
    )
    reconnect_backoff_max_ms: PositiveInt = Field(
        default=30_000, description="Longest pause between reconnection attempts."
    )
    health_check_interval_ms: PositiveInt = Field(
        default=10_000,
        description="Probe the broker after this long without records (reports an outage).",
    )
    consumer_options: dict[str, Any] | None = Field(
        default=None,
        strict=False,  # any mapping
        description="Extra AIOKafkaConsumer keyword arguments (security_protocol, sasl_*...).",
    )
    producer_options: dict[str, Any] | None = Field(
        default=None,
        strict=False,
        description="Extra AIOKafkaProducer keyword arguments (for dead letters).",
    )

    @field_validator("topic", mode="before")
    @classmethod
    def _topics(cls, value: Any) -> tuple[str, ...]:
        topics = [value] if isinstance(value, str) else value
        if not (
            isinstance(topics, Sequence)
            and not isinstance(topics, str | bytes)
            and topics
            and all(isinstance(t, str) and t for t in topics)
        ):
            raise ValueError(
                f"option topic={value!r} must be a topic name or a non-empty list of topic "
                'names, e.g. topic="orders" or topic=["orders", "refunds"]'
            )
        return tuple(topics)

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> KafkaOptions:
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(
                f"option heartbeat_interval_ms={self.heartbeat_interval_ms} must be lower than "
                f"session_timeout_ms={self.session_timeout_ms} (typically a third of it)"
            )
        return self

    @property
    def topics(self) -> list[str]:
        """The topics to subscribe to."""
        return list(self.topic)
