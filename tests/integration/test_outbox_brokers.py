"""``OutboxRelay`` with the real publishers: a saga emits, the relay publishes, the broker's own
client reads the messages back (payload, order, dedup id)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.exceptions import RedisError

from sagaz import Saga, SagaContext, action
from sagaz.abc import SagaStore
from sagaz.outbox import (
    KafkaPublisher,
    OutboxRelay,
    RabbitMQPublisher,
    RedisStreamPublisher,
)
from sagaz.records import OutboxMessage
from sagaz.storage.memory import MemorySagaStore
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.testing import eventually
from tests.fixtures_kafka import MakeTopic, take_records
from tests.services import unique_name


class Checkout(Saga):
    """One step that emits two messages to ``ctx["topic"]``."""

    @action("announce")
    async def announce(self, ctx: SagaContext) -> None:
        order = ctx["order"]
        ctx.emit(ctx["topic"], {"order": order, "event": "reserved"}, {"tenant": "acme"})
        ctx.emit(ctx["topic"], {"order": order, "event": "charged"})


async def checkout(store: SagaStore, topic: str, order: int = 1) -> str:
    """Run the saga; return its id."""
    result = await Checkout().run({"topic": topic, "order": order}, store=store)
    assert result.succeeded, result.error
    return result.saga_id


def expected_payloads(order: int = 1) -> list[dict[str, Any]]:
    return [{"order": order, "event": "reserved"}, {"order": order, "event": "charged"}]


# -- Kafka ------------------------------------------------------------------------------------
async def read_kafka(bootstrap: str, topic: str, count: int, partitions: int = 3) -> list[Any]:
    """The first ``count`` records of ``topic`` (every partition, from the start)."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await reader.start()
    try:
        reader.assign([TopicPartition(topic, p) for p in range(partitions)])
        return await take_records(reader, count, within=10)
    finally:
        await reader.stop()


async def test_kafka_publisher_keys_by_saga_and_carries_the_dedup_headers(
    kafka_bootstrap: str, make_kafka_topic: MakeTopic
) -> None:
    topic = await make_kafka_topic("sagaz-outbox", partitions=3)
    store = MemorySagaStore()
    saga_id = await checkout(store, topic)
    async with KafkaPublisher(kafka_bootstrap, linger_ms=0) as publisher:
        relay = OutboxRelay(store, publisher)
        assert await relay.relay_once() == 2
        await relay.stop()
        assert publisher.started  # the caller's publisher: the relay leaves it running
    assert await store.fetch_outbox() == []

    records = await read_kafka(kafka_bootstrap, topic, 2)
    assert [json.loads(r.value) for r in records] == expected_payloads()
    assert {r.partition for r in records} == {records[0].partition}  # one saga, one partition
    assert records[0].offset < records[1].offset
    assert all(r.key == saga_id.encode() for r in records)
    headers = [{k: v.decode() for k, v in r.headers} for r in records]
    assert headers == [
        {"tenant": "acme", "sagaz-saga-id": saga_id, "sagaz-outbox-id": "1"},
        {"sagaz-saga-id": saga_id, "sagaz-outbox-id": "2"},
    ]


async def test_kafka_unreachable_broker_keeps_the_messages_for_later() -> None:
    store = MemorySagaStore()
    await checkout(store, "orders")
    errors: list[BaseException] = []
    relay = OutboxRelay(
        store,
        KafkaPublisher("127.0.0.1:1"),  # nothing listens on port 1
        on_error=lambda exc, _: errors.append(exc),
    )
    try:
        assert await relay.relay_once() == 0
    finally:
        await relay.stop()
    assert len(errors) == 1
    assert len(await store.fetch_outbox()) == 2


# -- RabbitMQ ---------------------------------------------------------------------------------
@pytest.fixture
async def amqp(rabbitmq_url: str) -> AsyncIterator[tuple[aio_pika.abc.AbstractChannel, list[str]]]:
    """A raw channel and a list of queue names, deleted after the test."""
    connection = await aio_pika.connect(rabbitmq_url)
    queues: list[str] = []
    try:
        yield await connection.channel(), queues
    finally:
        cleanup = await connection.channel()
        for queue in queues:
            await cleanup.queue_delete(queue)
        await connection.close()


async def test_rabbitmq_publisher_sets_the_dedup_message_id(
    rabbitmq_url: str, amqp: tuple[aio_pika.abc.AbstractChannel, list[str]]
) -> None:
    channel, queues = amqp
    queue_name = unique_name("sagaz-outbox")
    queues.append(queue_name)
    queue = await channel.declare_queue(queue_name, durable=True)
    store = MemorySagaStore()
    saga_id = await checkout(store, queue_name)  # default exchange: the topic is the queue

    relay = OutboxRelay(store, RabbitMQPublisher(rabbitmq_url))
    try:
        assert await relay.relay_once() == 2
    finally:
        await relay.stop()

    messages = [await queue.get(no_ack=True, timeout=5) for _ in range(2)]
    assert [json.loads(m.body) for m in messages] == expected_payloads()
    assert [m.message_id for m in messages] == [f"{saga_id}:1", f"{saga_id}:2"]
    assert messages[0].headers == {
        "tenant": "acme",
        "sagaz-saga-id": saga_id,
        "sagaz-outbox-id": "1",
    }
    assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in messages)
    assert all(m.content_type == "application/json" for m in messages)
    assert await queue.get(fail=False) is None


async def test_rabbitmq_unroutable_messages_stay_until_the_queue_exists(
    rabbitmq_url: str, amqp: tuple[aio_pika.abc.AbstractChannel, list[str]]
) -> None:
    channel, queues = amqp
    queue_name = unique_name("sagaz-outbox")
    store = MemorySagaStore()
    await checkout(store, queue_name)
    errors: list[tuple[BaseException, OutboxMessage | None]] = []
    relay = OutboxRelay(
        store, RabbitMQPublisher(rabbitmq_url), on_error=lambda e, m: errors.append((e, m))
    )
    try:
        assert await relay.relay_once() == 0  # no such queue: the broker returns it
        ((error, message),) = errors
        assert isinstance(error, aio_pika.exceptions.PublishError), error
        assert message is not None and message.id == 1
        assert len(await store.fetch_outbox()) == 2

        queues.append(queue_name)
        queue = await channel.declare_queue(queue_name, durable=True)
        assert await relay.relay_once() == 2
    finally:
        await relay.stop()
    messages = [await queue.get(no_ack=True, timeout=5) for _ in range(2)]
    assert [json.loads(m.body) for m in messages] == expected_payloads()


async def test_rabbitmq_publisher_recovers_from_a_missing_exchange(
    rabbitmq_url: str, amqp: tuple[aio_pika.abc.AbstractChannel, list[str]]
) -> None:
    channel, queues = amqp
    exchange_name, queue_name = unique_name("sagaz-outbox-x"), unique_name("sagaz-outbox")
    store = MemorySagaStore()
    await checkout(store, "order.events")
    errors: list[BaseException] = []
    publisher = RabbitMQPublisher(rabbitmq_url, exchange=exchange_name)
    relay = OutboxRelay(store, publisher, on_error=lambda e, _: errors.append(e))
    try:
        assert await relay.relay_once() == 0  # the broker closes the channel: 404
        assert isinstance(errors[0], aio_pika.exceptions.ChannelNotFoundEntity), errors

        exchange = await channel.declare_exchange(exchange_name, type="topic")
        queues.append(queue_name)
        queue = await channel.declare_queue(queue_name, durable=True)
        await queue.bind(exchange, routing_key="order.*")
        assert await relay.relay_once() == 2  # on a new channel
    finally:
        await relay.stop()
        await channel.exchange_delete(exchange_name)
    messages = [await queue.get(no_ack=True, timeout=5) for _ in range(2)]
    assert [json.loads(m.body) for m in messages] == expected_payloads()


# -- Redis ------------------------------------------------------------------------------------
@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[tuple[Any, list[str]]]:
    """A raw client and a list of stream names, deleted after the test."""
    client: Any = aioredis.Redis.from_url(redis_url)
    streams: list[str] = []
    try:
        yield client, streams
    finally:
        if streams:
            await client.delete(*streams)
        await client.aclose()


def entry_fields(entry: tuple[bytes, dict[bytes, bytes]]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in entry[1].items()}


async def test_redis_publisher_appends_entries_with_the_dedup_fields(
    redis_url: str, redis_client: tuple[Any, list[str]]
) -> None:
    client, streams = redis_client
    stream = unique_name("sagaz-outbox")
    streams.append(stream)
    store = MemorySagaStore()
    saga_id = await checkout(store, stream)

    relay = OutboxRelay(store, RedisStreamPublisher(redis_url, maxlen=1000))
    try:
        assert await relay.relay_once() == 2
    finally:
        await relay.stop()

    entries = [entry_fields(e) for e in await client.xrange(stream)]
    assert [json.loads(e.pop("data")) for e in entries] == expected_payloads()
    assert entries == [
        {"saga_id": saga_id, "outbox_id": "1", "h:tenant": "acme"},
        {"saga_id": saga_id, "outbox_id": "2"},
    ]


async def test_running_relay_on_sqlite_publishes_to_redis_in_saga_order(
    tmp_path: Path, redis_url: str, redis_client: tuple[Any, list[str]]
) -> None:
    client, streams = redis_client
    stream = unique_name("sagaz-outbox")
    streams.append(stream)
    async with SQLiteSagaStore(tmp_path / "s.db") as store:
        relay = OutboxRelay(store, RedisStreamPublisher(redis_url), poll_interval=0.02)
        async with relay:
            saga_ids = [await checkout(store, stream, order) for order in (1, 2, 3)]

            async def all_sent() -> bool:
                # the 6th entry can be in the stream before the relay has read Redis's reply
                # and marked it sent: stopped then, it stays in the outbox (at least once)
                return int(await client.xlen(stream)) == 6 and await store.fetch_outbox() == []

            await eventually(all_sent, what="6 stream entries, all marked sent")

    entries = [entry_fields(e) for e in await client.xrange(stream)]
    assert [(e["saga_id"], json.loads(e["data"])) for e in entries] == [
        (saga_id, payload)
        for order, saga_id in enumerate(saga_ids, 1)
        for payload in expected_payloads(order)
    ]
    assert [int(e["outbox_id"]) for e in entries] == sorted(int(e["outbox_id"]) for e in entries)
    # reopened, the durable store has nothing left to send
    async with SQLiteSagaStore(tmp_path / "s.db") as reopened:
        assert await reopened.fetch_outbox() == []


async def test_redis_publisher_waits_for_a_free_connection_instead_of_failing(
    redis_url: str, redis_client: tuple[Any, list[str]]
) -> None:
    """More publishes at once than connections: they queue for one (a plain pool failed
    those beyond its cap at once, ``MaxConnectionsError``)."""
    client, streams = redis_client
    stream = unique_name("sagaz-outbox")
    streams.append(stream)
    publisher = RedisStreamPublisher(redis_url, max_connections=2)
    async with publisher:
        await asyncio.gather(
            *(publisher.publish(OutboxMessage("s", stream, {"n": n}, id=n)) for n in range(200))
        )
    assert await client.xlen(stream) == 200


async def test_redis_publisher_says_which_pool_ran_dry_and_what_to_change(
    redis_url: str,
) -> None:
    publisher = RedisStreamPublisher(redis_url, max_connections=1, pool_timeout=0.05)
    async with publisher:
        pool: Any = publisher._client.connection_pool  # type: ignore[union-attr]
        held = await pool.get_connection()  # the only connection, busy elsewhere
        try:
            message = OutboxMessage("s", unique_name("sagaz-outbox"), {}, id=1)
            with pytest.raises(RedisError, match=r"RedisStreamPublisher: .* max_connections="):
                await publisher.publish(message)
        finally:
            await pool.release(held)
