"""``PipelineOptions``: the ``@trigger`` options every source accepts, handled by the pipeline.

>>> @trigger(source="kafka", topic="orders", idempotency_key=lambda e: e["id"],
...          max_concurrent_sagas=10, dead_letter_topic="orders.dlq")  # doctest: +SKIP
... def on_order(self, event: dict) -> dict: ...

``None`` means "the engine-wide value of :class:`~sagaz.config.TriggerConfig`".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sagaz.triggers.options.base import NonEmptyStr, PositiveInt

__all__ = ["PipelineOptions"]


class PipelineOptions(BaseModel):
    """Deduplication, limits, retries and dead letters of one trigger, whatever its source."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    idempotency_key: Callable[[Any], Any] | None = Field(
        default=None,
        description=(
            "Function of the event returning its deduplication key (e.g. lambda e: e['id']); "
            "default: the source's message identity."
        ),
    )
    dedup: Literal["content"] | None = Field(
        default=None,
        description=(
            "'content': events with the same content are one event (memory, webhook and "
            "custom push sources, whose deliveries may carry no identity). Default: each "
            "delivery without an identity is its own event."
        ),
    )
    concurrency_key: Callable[[Any], Any] | None = Field(
        default=None,
        description=(
            "Function of the event returning a key; sagas with the same key run one at a "
            "time, in arrival order (e.g. lambda e: e['user_id'])."
        ),
    )
    max_concurrent_sagas: PositiveInt | None = Field(
        default=None,
        description=(
            "Most sagas of this trigger running at once; default: only the engine-wide "
            "TriggerConfig.max_concurrent_sagas applies."
        ),
    )
    rate_limit_per_second: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Most sagas this trigger starts per second (a token bucket); default: none.",
    )
    limit_scope: Literal["process", "cluster"] = Field(
        default="process",
        description=(
            "Where concurrency_key, max_concurrent_sagas and rate_limit_per_second hold: "
            "'process' (each engine on its own) or 'cluster' (every engine on the same "
            "store: key and slot leases and a token bucket in the store, a few store calls "
            "per event)."
        ),
    )
    max_retries: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Retries of a failed saga before its event is dead-lettered; default: "
            "TriggerConfig.max_retries."
        ),
    )
    retry_backoff_seconds: tuple[Annotated[float, Field(ge=0, allow_inf_nan=False)], ...] | None = (
        Field(
            default=None,
            strict=False,  # a list or a tuple; the numbers themselves stay strict
            description=(
                "Delays before retry 1, 2, ... (the last one repeats); default: "
                "TriggerConfig.retry_backoff_seconds."
            ),
        )
    )
    dead_letter_topic: NonEmptyStr | None = Field(
        default=None,
        description=(
            "Where the source publishes dead letters on its broker (a Kafka topic, a RabbitMQ "
            "exchange, a Redis stream, an SQS queue URL or name); default: "
            "TriggerConfig.dead_letter_topic. Dead letters are always stored in the store."
        ),
    )
    persist_events: bool | None = Field(
        default=None,
        description="Keep each accepted event in the store; default: TriggerConfig.persist_events.",
    )
    enabled: bool = Field(
        default=True,
        description="False: the trigger stays registered but the engine does not run it.",
    )

    @model_validator(mode="after")
    def _one_identity(self) -> PipelineOptions:
        if self.dedup is not None and self.idempotency_key is not None:
            raise ValueError(
                "options dedup and idempotency_key both say what identifies an event; keep one "
                "(idempotency_key wins over any content)"
            )
        return self

    @model_validator(mode="after")
    def _scoped_limits(self) -> PipelineOptions:
        if self.limit_scope == "cluster" and (
            self.concurrency_key is None
            and self.max_concurrent_sagas is None
            and self.rate_limit_per_second is None
        ):
            raise ValueError(
                "option limit_scope='cluster' shares this trigger's concurrency_key, "
                "max_concurrent_sagas or rate_limit_per_second through the store, and none is "
                "set: set one of them, or drop limit_scope"
            )
        return self
