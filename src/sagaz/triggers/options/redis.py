"""``RedisOptions``: the options of ``@trigger(source="redis", ...)`` (no redis-py import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sagaz.triggers.options.base import NonEmptyStr, PositiveInt, SourceOptions

__all__ = ["RedisOptions"]


class RedisOptions(SourceOptions):
    """One consumer of a consumer group reading one Redis Stream."""

    stream: NonEmptyStr = Field(
        description="The stream key to read (created with the group if missing).",
        examples=["orders"],
    )
    consumer_group: NonEmptyStr | None = Field(
        default=None, description="Consumer group; default: the trigger id."
    )
    consumer: NonEmptyStr | None = Field(
        default=None,
        description="Consumer name within the group; default: unique per process "
        "(hostname-pid-random). Set it to a stable name to re-read this consumer's own "
        "pending entries at once after a restart.",
    )
    url: str | None = Field(
        default=None,
        description="redis://, rediss:// or unix:// URL; default: TriggerConfig.redis_url.",
    )
    batch_size: PositiveInt | None = Field(
        default=None,
        description="Most entries one XREADGROUP returns; default: "
        "min(TriggerConfig.queue_size, 100).",
    )
    block_ms: PositiveInt = Field(
        default=1000, description="Longest wait of one XREADGROUP for new entries."
    )
    claim_idle_ms: PositiveInt = Field(
        default=60_000,
        description="Take over (XAUTOCLAIM) pending entries idle for this long, e.g. those of "
        "a consumer that died.",
    )
    start_id: Literal["$", "0"] = Field(
        default="0",
        description='Where a new consumer group starts: "0" (the beginning of the stream, '
        "so entries added before the first start are consumed, like Kafka's "
        'auto_offset_reset="earliest") or "$" (only entries added after the group is '
        "created). An existing group keeps its position.",
    )

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("option url must be a redis://, rediss:// or unix:// URL")
        return value
