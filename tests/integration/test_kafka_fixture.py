"""The Kafka test broker answers the calls the Kafka source relies on."""

from __future__ import annotations

import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.services import unique_name

pytestmark = pytest.mark.integration

# Tansu holds a group join for about session_timeout_ms / 2: keep it small.
FAST_GROUP = {"session_timeout_ms": 1500, "heartbeat_interval_ms": 300}


async def _consume(consumer: AIOKafkaConsumer, count: int, deadline: float = 15.0) -> list[bytes]:
    values: list[bytes] = []
    end = time.monotonic() + deadline
    while len(values) < count and time.monotonic() < end:
        batches = await consumer.getmany(timeout_ms=200)
        for records in batches.values():
            values.extend(record.value for record in records)
    return values


async def test_produce_consume_commit_round_trip(kafka_bootstrap: str, kafka_topic: str) -> None:
    group = unique_name("group")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(6):
            await producer.send_and_wait(kafka_topic, f"m{i}".encode(), partition=i % 3)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        kafka_topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **FAST_GROUP,
    )
    await consumer.start()
    try:
        values = await _consume(consumer, 6)
        assert sorted(values) == [f"m{i}".encode() for i in range(6)]
        # commit partition 0 fully, partition 1 half way, partition 2 not at all
        await consumer.commit(
            {TopicPartition(kafka_topic, 0): 2, TopicPartition(kafka_topic, 1): 1}
        )
    finally:
        await consumer.stop()

    again = AIOKafkaConsumer(
        kafka_topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **FAST_GROUP,
    )
    await again.start()
    try:
        assert await again.committed(TopicPartition(kafka_topic, 0)) == 2
        assert await again.committed(TopicPartition(kafka_topic, 1)) == 1
        assert await again.committed(TopicPartition(kafka_topic, 2)) is None
        # the new member resumes from the committed offsets: m4 (p1, offset 1), m2 and m5 (p2)
        assert sorted(await _consume(again, 3)) == [b"m2", b"m4", b"m5"]
    finally:
        await again.stop()
