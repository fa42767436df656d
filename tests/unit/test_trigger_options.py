"""The ``@trigger`` option models: validated at class definition, driver-free, handed to sources."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from sagaz import Saga, trigger
from sagaz.abc import Source, SourceContext
from sagaz.engine.loading import SOURCE_MODULES, load_source_module
from sagaz.exceptions import TriggerDefinitionError
from sagaz.sources.cron import CronSource
from sagaz.sources.file import FileSource
from sagaz.sources.kafka.source import KafkaSource
from sagaz.sources.rabbitmq import RabbitMQSource
from sagaz.sources.redis import RedisStreamSource
from sagaz.sources.sqs.source import SQSSource
from sagaz.sources.webhook.source import WebhookSource
from sagaz.triggers import registry
from sagaz.triggers.options import (
    OPTION_MODELS,
    CronOptions,
    FileOptions,
    KafkaOptions,
    MemoryOptions,
    PipelineOptions,
    RabbitMQOptions,
    RedisOptions,
    SourceOptions,
    SQSOptions,
    WebhookOptions,
)
from tests.recording_emit import source_context

DRIVERS = (
    "aiokafka",
    "aio_pika",
    "aiormq",
    "redis",
    "aiobotocore",
    "botocore",
    "starlette",
    "uvicorn",
    "watchfiles",
)

ACCEPTANCE = f"""
import sys
from sagaz import Saga, trigger

class Everything(Saga):
    @trigger(source="kafka", topic="orders", group_id="svc", dead_letter_topic="orders.dlq")
    @trigger(source="rabbitmq", queue="jobs", exchange="events", routing_key="job.*")
    @trigger(source="redis", stream="events", consumer_group="workers")
    @trigger(source="sqs", queue_url="https://sqs.eu-west-1.amazonaws.com/1/q", wait_time=5)
    @trigger(source="webhook", path="/orders/{{order_id}}", auth="hmac", secret="s")
    @trigger(source="file", path="/data/inbox", pattern="*.csv")
    @trigger(source="cron", schedule="*/5 * * * *", timezone="Europe/Berlin")
    def on_event(self, event):
        return {{}}

from sagaz.triggers import registry
assert len(registry.for_saga(Everything)) == 7, registry.triggers()
loaded = sorted(
    name for name in sys.modules
    if name.startswith(("sagaz.sources", "sagaz.engine"))
    or name.split(".")[0] in {DRIVERS!r}
)
assert not loaded, loaded
"""


def test_defining_a_saga_imports_no_source_engine_or_driver() -> None:
    subprocess.run([sys.executable, "-c", ACCEPTANCE], check=True, timeout=60)


# -- errors at class definition -------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"source": "kafka", "topic": "t", "max_poll_records": 0},
            r"option max_poll_records=0 must be an integer >= 1",
        ),
        (
            {"source": "kafka", "topic": "t", "max_poll_record": 10},
            r"unknown option\(s\) \['max_poll_record'\] \(did you mean 'max_poll_records' "
            r"instead of 'max_poll_record'\?\); accepted options: \[.*'dead_letter_topic'.*\]",
        ),
        (
            {"source": "kafka", "group_id": "svc"},
            r"missing required option\(s\) \['topic'\] \(e\.g\. topic='orders'\)",
        ),
        (
            {"source": "kafka", "topic": "t", "session_timeout_ms": 900},
            r"heartbeat_interval_ms=3000 must be lower than session_timeout_ms=900",
        ),
        (
            {"source": "rabbitmq", "queue": "q", "routing_key": "a.*"},
            r"option routing_key needs exchange=",
        ),
        ({"source": "redis", "stream": "s", "start_id": ">"}, r"start_id='>' must be one of"),
        ({"source": "sqs", "queue_url": "q", "wait_time": 21}, r"wait_time=21 must be"),
        ({"source": "webhook", "path": "orders"}, r"path='orders' must start with '/'"),
        ({"source": "file", "path": "/x", "settle_ms": -1}, r"settle_ms=-1 must be an integer"),
        ({"source": "cron", "schedule": "61 * * * *"}, r"schedule='61 \* \* \* \*'"),
        ({"source": "memory", "channel": ""}, r"channel='' must be a non-empty string"),
        ({"source": "custom", "trigger": object()}, r"trigger= must be an instance of"),
        (
            {"source": "memory", "channel": "c", "retry_backoff_seconds": [1, -5]},
            r"retry_backoff_seconds=\[1, -5\] must be a list of numbers >= 0",
        ),
        (
            {"source": "memory", "channel": "c", "max_concurrent_sagas": True},
            r"max_concurrent_sagas=True must be an integer >= 1",
        ),
    ],
)
def test_a_bad_option_fails_at_class_definition_naming_class_method_and_option(
    options: dict[str, Any], message: str
) -> None:
    source = options["source"]
    with pytest.raises(TriggerDefinitionError) as info:

        class Orders(Saga):
            @trigger(**options)
            def on_order(self, event: Any) -> None: ...

    text = str(info.value)
    assert re.search(rf"Orders\.on_order @trigger\(source='{source}'\): ", text), text
    assert re.search(message, text), text
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, TypeError)


def test_every_problem_of_a_trigger_is_reported_at_once() -> None:
    with pytest.raises(TriggerDefinitionError) as info:

        class Orders(Saga):
            @trigger(source="kafka", topic="t", commit_every=0, max_retries=-1, colour="red")
            def on_order(self, event: Any) -> None: ...

    text = str(info.value)
    for part in ("unknown option(s) ['colour']", "commit_every=0", "max_retries=-1"):
        assert part in text, text


def test_the_dead_letter_topic_is_a_pipeline_option_of_every_source() -> None:
    class Orders(Saga):
        @trigger(source="kafka", topic="orders", dead_letter_topic="orders.dlq")
        def on_order(self, event: Any) -> None: ...

    (definition,) = registry.for_saga(Orders)
    assert definition.dead_letter_topic == "orders.dlq"
    assert isinstance(definition.source_options, KafkaOptions)
    for model in OPTION_MODELS.values():
        assert "dead_letter_topic" not in model.model_fields
    assert "dead_letter_topic" in PipelineOptions.model_fields


def test_the_definition_carries_the_validated_model() -> None:
    class Orders(Saga):
        @trigger(source="memory", channel="orders", max_retries=2, retry_backoff_seconds=(1, 2))
        def on_order(self, event: Any) -> None: ...

    (definition,) = registry.for_saga(Orders)
    assert definition.source_options == MemoryOptions(channel="orders")
    assert definition.channel == "orders"
    assert (definition.max_retries, definition.retry_backoff_seconds) == (2, [1.0, 2.0])


# -- the models -------------------------------------------------------------------------------


def test_there_is_one_model_per_source_kind() -> None:
    assert set(OPTION_MODELS) == set(SOURCE_MODULES)


@pytest.mark.parametrize("model", [*OPTION_MODELS.values(), PipelineOptions], ids=repr)
def test_every_option_is_documented_typed_and_closed(model: type[BaseModel]) -> None:
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no description"
        assert field.annotation is not None
        if field.is_required() and model is not OPTION_MODELS["custom"]:
            assert field.examples, f"{model.__name__}.{name} is required but has no example"
    assert model.model_config.get("extra") == "forbid"
    assert model.model_config.get("frozen") is True


def test_models_are_frozen_and_strict() -> None:
    options = KafkaOptions(topic="t")
    with pytest.raises(ValidationError):
        options.group_id = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        KafkaOptions(topic="t", max_poll_records="500")


def test_secrets_stay_out_of_repr_and_describe() -> None:
    sqs = SQSOptions(queue_url="q", aws_access_key_id="id", aws_secret_access_key="hunter2")
    webhook = WebhookOptions(path="/x", auth="hmac", secret="hunter2")
    for options in (sqs, webhook):
        assert "hunter2" not in repr(options)
        assert "hunter2" not in str(options.describe())
    assert sqs.describe() == {"queue_url": "q", "aws_access_key_id": "id"}


# -- the defaults the sources use come from the models --------------------------------------


def default(model: type[SourceOptions], name: str) -> Any:
    return model.model_fields[name].default


def context(**config: Any) -> SourceContext:
    return source_context("orders.on_order", **config)


def build(options: SourceOptions, ctx: SourceContext) -> Source:
    """Build a source as the engine does: its kind's module, ``create(model, ctx)``."""
    kind = next(kind for kind, model in OPTION_MODELS.items() if isinstance(options, model))
    return load_source_module(kind).create(options, ctx)


def test_kafka_source_uses_the_model_and_the_config() -> None:
    source = build(KafkaOptions(topic="orders"), context(kafka_bootstrap_servers="k:9092"))
    assert isinstance(source, KafkaSource)
    assert source.options == KafkaOptions(topic="orders")
    assert source.topics == ["orders"]
    assert (source.group_id, source.bootstrap_servers) == ("sagaz-orders.on_order", "k:9092")
    assert source._limits == (
        default(KafkaOptions, "max_buffered_per_partition"),
        default(KafkaOptions, "max_unsettled_per_partition"),
    )
    assert source.dead_letter_topic is None


def test_rabbitmq_source_uses_the_model_defaults() -> None:
    source = build(RabbitMQOptions(queue="jobs"), context(queue_size=5000))
    assert isinstance(source, RabbitMQSource)
    assert source.exchange_type == default(RabbitMQOptions, "exchange_type")
    assert source.durable is default(RabbitMQOptions, "durable")
    assert source.routing_keys == ()  # no exchange, no binding
    assert source.prefetch == 1000  # min(queue_size, 1000)
    assert source.url == source_context().config.rabbitmq_url


def test_redis_source_uses_the_model_defaults() -> None:
    source = build(RedisOptions(stream="events"), context())
    assert isinstance(source, RedisStreamSource)
    for name in ("block_ms", "claim_idle_ms", "start_id"):
        assert getattr(source, name) == default(RedisOptions, name), name
    assert source.consumer_group == "orders.on_order"


def test_a_new_redis_group_starts_at_the_beginning_like_kafka_earliest() -> None:
    # entries added before the first start are consumed, as Kafka's auto_offset_reset
    # "earliest" consumes the messages sent before its group existed
    assert default(RedisOptions, "start_id") == "0"
    assert default(KafkaOptions, "auto_offset_reset") == "earliest"
    assert "beginning" in (RedisOptions.model_fields["start_id"].description or "")


def test_sqs_source_uses_the_model_defaults() -> None:
    source = build(SQSOptions(queue_url="orders"), context())
    assert isinstance(source, SQSSource)
    for name in ("visibility_timeout", "wait_time"):
        assert getattr(source, name) == default(SQSOptions, name), name
    assert source.max_messages == 10


def test_cron_source_uses_the_model_defaults() -> None:
    source = build(CronOptions(schedule="@daily"), context())
    assert isinstance(source, CronSource)
    described = source.describe()
    for name in ("timezone", "catchup", "max_catchup"):
        assert described[name] == default(CronOptions, name), name


def test_file_source_uses_the_model_defaults(tmp_path: Path) -> None:
    source = build(FileOptions(path=tmp_path), context())
    assert isinstance(source, FileSource)
    described = source.describe()
    for name in ("pattern", "event_type", "recursive"):
        assert described[name] == default(FileOptions, name), name
    assert source.root == str(tmp_path)


def test_webhook_route_uses_the_model_defaults() -> None:
    source = build(WebhookOptions(path="/orders/{order_id}"), context())
    assert isinstance(source, WebhookSource)
    route = source.route
    for name in ("method", "max_body_bytes", "retry_after"):
        assert getattr(route, name) == default(WebhookOptions, name), name
    assert route.pattern.fullmatch("/orders/7") is not None


def test_broker_sources_get_the_dead_letter_topic_from_the_context() -> None:
    ctx = context()
    ctx.dead_letter_topic = "failed"
    for options in (
        KafkaOptions(topic="t"),
        RabbitMQOptions(queue="q"),
        RedisOptions(stream="s"),
        SQSOptions(queue_url="q"),
    ):
        source = build(options, ctx)
        assert getattr(source, "dead_letter_topic", None) == "failed", type(source).__name__
