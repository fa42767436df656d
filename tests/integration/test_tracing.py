"""One trace from a broker message to the messages its saga publishes (``sagaz[otel]``).

A producer's ``traceparent`` header on a Kafka record → the admission and saga spans (children
of the producer's span) → the step spans → the outbox message the second step emits, whose
``traceparent`` names that step, in the store and on the Kafka record the relay publishes.
RabbitMQ headers and SQS message attributes carry the context in just the same way. The spans
are read from the OpenTelemetry SDK's in-memory exporter (``spans`` fixture).
"""

from __future__ import annotations

import json
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sagaz
from sagaz import Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz.outbox import KafkaPublisher, OutboxRelay
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import eventually
from tests.fixtures_kafka import MakeTopic, take_records
from tests.fixtures_rabbitmq import Rabbit
from tests.fixtures_sqs import send_messages, sqs_source_options
from tests.fixtures_tracing import named, one, span_id_of, trace_id_of
from tests.services import unique_name

# the producer's span, as an instrumented producer (or another service) writes it
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
FAST: dict[str, Any] = {
    "session_timeout_ms": 1500,
    "heartbeat_interval_ms": 300,
    "poll_timeout_ms": 100,
    "commit_interval_ms": 200,
}


def ids(span: ReadableSpan) -> tuple[int, int, int | None]:
    """(trace id, span id, parent span id) of a finished span."""
    context = span.get_span_context()
    assert context is not None
    return context.trace_id, context.span_id, span.parent.span_id if span.parent else None


async def test_one_trace_from_a_kafka_traceparent_through_the_steps_to_the_outbox(
    spans: InMemorySpanExporter, kafka_bootstrap: str, make_kafka_topic: MakeTopic
) -> None:
    orders = await make_kafka_topic("traced-orders", partitions=1)
    shipments = await make_kafka_topic("traced-shipments", partitions=1)
    group = unique_name("traced")
    store = MemorySagaStore()

    class Shipping(Saga):
        saga_name = unique_name("shipping")

        @trigger(
            source="kafka",
            topic=orders,
            group_id=group,
            bootstrap_servers=kafka_bootstrap,
            **FAST,
        )
        def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"order": event["id"]}

        @action("reserve")
        async def reserve(self, ctx: SagaContext) -> dict[str, Any]:
            return {"reserved": True}

        @action("ship")
        async def ship(self, ctx: SagaContext) -> None:
            ctx.emit(shipments, {"order": ctx["order"]})

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            orders,
            json.dumps({"id": 42}).encode(),
            headers=[("traceparent", TRACEPARENT.encode())],
        )
    finally:
        await producer.stop()

    async def completed() -> bool:
        return len(await store.list_sagas(status=SagaStatus.COMPLETED)) == 1

    await sagaz.start_triggers(TriggerConfig(), store)
    try:
        await eventually(completed, within=30, what="the saga of the message to complete")
    finally:
        await sagaz.stop_triggers()

    remote_trace, remote_span = trace_id_of(TRACEPARENT), span_id_of(TRACEPARENT)
    admit = one(named(spans, "sagaz.admit"))
    saga = one(named(spans, "sagaz.saga"))
    reserve, ship = named(spans, "sagaz.step")
    # one trace: the producer's
    assert {ids(s)[0] for s in spans.get_finished_spans()} == {remote_trace}
    # admission and the saga continue the message's context; the steps are the saga's
    assert ids(admit)[2] == ids(saga)[2] == remote_span
    assert saga.parent is not None and saga.parent.is_remote
    assert ids(reserve)[2] == ids(ship)[2] == ids(saga)[1]
    assert saga.attributes is not None
    assert saga.attributes["sagaz.saga.status"] == "completed"
    assert saga.attributes["messaging.message.id"] == f"{orders}:0:0"
    assert saga.attributes["sagaz.source"] == "kafka"

    # the stored outbox message carries the step's context...
    [emitted] = await store.fetch_outbox()
    assert trace_id_of(emitted.headers["traceparent"]) == remote_trace
    assert span_id_of(emitted.headers["traceparent"]) == ids(ship)[1]

    # ...and so does the record the relay publishes
    async with KafkaPublisher(kafka_bootstrap, linger_ms=0) as publisher:
        relay = OutboxRelay(store, publisher)
        assert await relay.relay_once() == 1
        await relay.stop()
    reader = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await reader.start()
    try:
        reader.assign([TopicPartition(shipments, 0)])
        [record] = await take_records(reader, 1, within=10)
    finally:
        await reader.stop()
    headers = {name: value.decode() for name, value in record.headers}
    assert headers["traceparent"] == emitted.headers["traceparent"]
    assert json.loads(record.value) == {"order": 42}


# -- the other carriers: RabbitMQ headers, SQS message attributes -----------------------------
def define_continued(**source: Any) -> str:
    """A one-step saga triggered by ``source``; its name."""
    name = unique_name("continued")

    class Continued(Saga):
        saga_name = name

        @trigger(**source)
        def on_message(self, event: Any) -> dict[str, Any]:
            return {"received": True}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            return None

    return name


async def run_until_completed(config: TriggerConfig, store: MemorySagaStore) -> None:
    async def completed() -> bool:
        return len(await store.list_sagas(status=SagaStatus.COMPLETED)) == 1

    await sagaz.start_triggers(config, store)
    try:
        await eventually(completed, within=30, what="the saga of the message to complete")
    finally:
        await sagaz.stop_triggers()


def assert_continued(spans: InMemorySpanExporter, source: str) -> None:
    """Admission and the saga are children of the message's span, the step of the saga."""
    remote_trace, remote_span = trace_id_of(TRACEPARENT), span_id_of(TRACEPARENT)
    admit, saga = one(named(spans, "sagaz.admit")), one(named(spans, "sagaz.saga"))
    step = one(named(spans, "sagaz.step"))
    assert {ids(s)[0] for s in (admit, saga, step)} == {remote_trace}
    assert ids(admit)[2] == ids(saga)[2] == remote_span
    assert ids(step)[2] == ids(saga)[1]
    assert saga.attributes is not None and saga.attributes["sagaz.source"] == source


async def test_a_rabbitmq_traceparent_header_is_continued(
    spans: InMemorySpanExporter, rabbit: Rabbit
) -> None:
    import aio_pika

    queue = rabbit.queue_name()
    await rabbit.declare(queue)
    define_continued(source="rabbitmq", queue=queue)
    message = aio_pika.Message(b'{"n": 1}', headers={"traceparent": TRACEPARENT})
    await rabbit.channel.default_exchange.publish(message, routing_key=queue)

    await run_until_completed(TriggerConfig(rabbitmq_url=rabbit.url), MemorySagaStore())

    assert_continued(spans, "rabbitmq")


async def test_an_sqs_traceparent_message_attribute_is_continued(
    spans: InMemorySpanExporter, sqs_client: Any, sqs_queue_url: str, sqs_endpoint: str
) -> None:
    define_continued(
        source="sqs", queue_url=sqs_queue_url, wait_time=1, **sqs_source_options(sqs_endpoint)
    )
    await send_messages(sqs_client, sqs_queue_url, ['{"n": 1}'], traceparent=TRACEPARENT)

    await run_until_completed(TriggerConfig(), MemorySagaStore())

    assert_continued(spans, "sqs")
