"""Putting the chaos events on Kafka and reading the consumer group's commits back."""

from __future__ import annotations

import json

__all__ = ["event", "kafka_committed", "produce_kafka"]


def event(n: int) -> bytes:
    """The body of event ``n``."""
    return json.dumps({"n": n}).encode()


async def produce_kafka(bootstrap: str, topic: str, total: int, partitions: int) -> list[int]:
    """Send events ``0..total-1``, event ``n`` to partition ``n % partitions``; return how many
    each partition got."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, event(n), partition=n % partitions) for n in range(total)
        ]
        for future in sent:
            await future
    finally:
        await producer.stop()
    return [len(range(p, total, partitions)) for p in range(partitions)]


async def kafka_committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offset of each partition (``committed()``: no group join); 0 for
    a partition the group has not committed yet (aiokafka says ``None``)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await reader.start()
    try:
        return [await reader.committed(TopicPartition(topic, p)) or 0 for p in range(partitions)]
    finally:
        await reader.stop()
