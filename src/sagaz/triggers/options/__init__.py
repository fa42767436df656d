"""The options of ``@trigger(source=...)``: one pydantic model per source kind, driver-free.

A ``@trigger``'s keyword arguments are the :class:`PipelineOptions` every source accepts plus
the options of its source's model (``OPTION_MODELS[source]``). They are validated when the saga
class is defined; the source gets its validated model instance when the engine builds it, so
each default is written once, in the model.

>>> pipeline, options = parse_trigger_options("kafka", {"topic": "orders", "max_retries": 3})
>>> (pipeline.max_retries, options.topics, options.auto_offset_reset)
(3, ['orders'], 'earliest')
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from sagaz.triggers.options.base import SourceOptions
from sagaz.triggers.options.cron import CronOptions
from sagaz.triggers.options.custom import CustomOptions
from sagaz.triggers.options.errors import explain
from sagaz.triggers.options.file import FileOptions
from sagaz.triggers.options.kafka import KafkaOptions
from sagaz.triggers.options.memory import MemoryOptions
from sagaz.triggers.options.pipeline import PipelineOptions
from sagaz.triggers.options.rabbitmq import RabbitMQOptions
from sagaz.triggers.options.redis import RedisOptions
from sagaz.triggers.options.sqs import SQSOptions
from sagaz.triggers.options.webhook import WebhookOptions

__all__ = [
    "OPTION_MODELS",
    "CronOptions",
    "CustomOptions",
    "FileOptions",
    "KafkaOptions",
    "MemoryOptions",
    "PipelineOptions",
    "RabbitMQOptions",
    "RedisOptions",
    "SQSOptions",
    "SourceOptions",
    "WebhookOptions",
    "parse_trigger_options",
]

#: the option model of each source kind
OPTION_MODELS: Mapping[str, type[SourceOptions]] = MappingProxyType(
    {
        "kafka": KafkaOptions,
        "rabbitmq": RabbitMQOptions,
        "redis": RedisOptions,
        "sqs": SQSOptions,
        "cron": CronOptions,
        "webhook": WebhookOptions,
        "file": FileOptions,
        "memory": MemoryOptions,
        "custom": CustomOptions,
    }
)


def parse_trigger_options(
    source: str, options: Mapping[str, Any]
) -> tuple[PipelineOptions, SourceOptions]:
    """Validate the keyword arguments of ``@trigger(source=source, **options)``.

    Returns the pipeline options and the source's option model. Raises ``ValueError`` naming
    every unknown, missing or bad option and what to write instead.
    """
    model = OPTION_MODELS.get(source) if isinstance(source, str) else None
    if model is None:
        raise ValueError(
            f"unknown source {source!r}; choose one of {sorted(OPTION_MODELS)} "
            "(or source='custom' with trigger=YourTrigger())"
        )
    pipeline_given = {k: v for k, v in options.items() if k in PipelineOptions.model_fields}
    source_given = {k: v for k, v in options.items() if k not in PipelineOptions.model_fields}
    problems: list[str] = []
    try:
        source_options = model.model_validate(source_given)
    except ValidationError as exc:
        problems += explain(exc, source_given, model, accepted=PipelineOptions.model_fields)
    try:
        pipeline = PipelineOptions.model_validate(pipeline_given)
    except ValidationError as exc:
        problems += explain(exc, pipeline_given, PipelineOptions)
    if problems:
        raise ValueError("; ".join(problems))
    return pipeline, source_options
