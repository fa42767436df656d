"""Kafka records → :class:`~sagaz.events.Delivery`: what a partition's emit loop hands to the
pipeline, one batch at a time. No aiokafka import: a record is read by its attributes
(``offset``, ``key``, ``value``, ``headers``), as aiokafka's ``ConsumerRecord`` has them.

Per record this is the source's own share of the pipeline's cost, so the batch's constant
parts (the ids' prefixes, the trigger) are computed once per batch and the metadata is built
positionally.
"""

from __future__ import annotations

from sagaz.events import Delivery, EventMeta
from sagaz.sources.kafka.commits import OffsetCommits, RecordSettler
from sagaz.sources.kafka.partitions import PartitionState

__all__ = ["take_deliveries"]


def take_deliveries(
    source: OffsetCommits, trigger_id: str, partition: PartitionState, count: int
) -> list[Delivery]:
    """The next ``count`` buffered records of ``partition`` as deliveries, in offset order.

    A delivery's ``message_id`` is ``topic:partition:offset``, its identity (the inbox key of
    a trigger without ``idempotency_key``) ``topic/partition/offset``; its ``ack``/``nack``
    settle the offset (:class:`RecordSettler`). A ``bytes`` key is decoded when it is UTF-8.
    """
    deliveries: list[Delivery] = []
    if not count:
        return deliveries
    buffer, arrivals, tp = partition.buffer, partition.arrivals, partition.tp
    topic, number = tp.topic, tp.partition
    message_prefix, identity_prefix = f"{topic}:{number}:", f"{topic}/{number}/"
    append = deliveries.append
    received_at, fetched_until = arrivals[0]
    for _ in range(count):
        record = buffer.popleft()
        offset, key, value, headers = record.offset, record.key, record.value, record.headers
        while offset > fetched_until:  # the first record of a later fetch
            arrivals.popleft()
            received_at, fetched_until = arrivals[0]
        if type(key) is bytes:
            try:  # noqa: SIM105 (no context manager per record)
                key = key.decode()
            except UnicodeDecodeError:
                pass  # not text: the key stays bytes
        number_text = str(offset)
        meta = EventMeta(
            "kafka",
            trigger_id,
            message_prefix + number_text,
            topic,
            number,
            offset,
            key,
            {k: (v or b"").decode("utf-8", "replace") for k, v in headers} if headers else {},
            received_at,
        )
        settle = RecordSettler(source, partition, offset)
        payload = value if value is not None else b""
        append(Delivery(payload, meta, identity_prefix + number_text, settle, settle))
    return deliveries
