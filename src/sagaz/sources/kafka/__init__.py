"""The Kafka source (aiokafka): :class:`KafkaSource` and its partition bookkeeping."""

from sagaz.sources.kafka.source import OPTIONS, REQUIRED, KafkaSource, create, validate

__all__ = ["OPTIONS", "REQUIRED", "KafkaSource", "create", "validate"]
