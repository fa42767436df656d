"""The Kafka source (aiokafka): :class:`KafkaSource` and its partition bookkeeping."""

from sagaz.sources.kafka.source import KafkaSource, create

__all__ = ["KafkaSource", "create"]
