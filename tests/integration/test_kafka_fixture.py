"""The Kafka test broker answers the calls the Kafka source relies on."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.fixtures_kafka import take_records
from tests.services import unique_name

# Tansu holds a group join for about session_timeout_ms / 2: keep it small.
FAST_GROUP = {"session_timeout_ms": 1500, "heartbeat_interval_ms": 300}


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
        values = [record.value for record in await take_records(consumer, 6)]
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
        assert sorted(r.value for r in await take_records(again, 3)) == [b"m2", b"m4", b"m5"]
    finally:
        await again.stop()
