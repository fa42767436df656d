"""Options of ``@trigger(source="kafka", ...)``: defaults and class-definition-time checks.

Kept apart from :mod:`sagaz.sources.kafka.source` (which re-exports them) and free of aiokafka, so a
typo in a trigger fails at import even where the driver is not installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULTS", "OPTIONS", "REQUIRED", "topics_of", "validate"]

#: options of ``@trigger(source="kafka", ...)`` with their defaults
DEFAULTS: dict[str, Any] = {
    "topic": None,  # a topic name or a list of names (required)
    "group_id": None,  # default: "sagaz-" + the trigger id
    "bootstrap_servers": None,  # default: TriggerConfig.kafka_bootstrap_servers
    "auto_offset_reset": "earliest",
    "client_id": None,  # default: "sagaz-" + the worker id
    "session_timeout_ms": 10_000,
    "heartbeat_interval_ms": 3_000,
    "max_poll_interval_ms": 300_000,
    "max_poll_records": 500,
    "poll_timeout_ms": 250,  # longest wait of one poll; bounds how fast stop() is noticed
    "commit_interval_ms": 1_000,  # commit settled work at least this often...
    "commit_every": 500,  # ...or as soon as this many events were settled
    "max_buffered_per_partition": 1_000,  # pause a partition above this many un-emitted events
    "max_unsettled_per_partition": 10_000,  # ...or this many emitted but unsettled ones
    "commit_timeout_ms": 15_000,  # bound of one commit (the final one in stop() too)
    "reconnect_backoff_max_ms": 30_000,
    "health_check_interval_ms": 10_000,  # probe the broker after this long without records
    "consumer_options": None,  # extra AIOKafkaConsumer keyword arguments (security...)
    "producer_options": None,  # extra AIOKafkaProducer keyword arguments (dead letters)
}
OPTIONS = frozenset(DEFAULTS) | {"dead_letter_topic"}
REQUIRED = frozenset({"topic"})
_POSITIVE_INTS = tuple(name for name, value in DEFAULTS.items() if isinstance(value, int))
_OFFSET_RESETS = ("earliest", "latest", "none")


def topics_of(value: Any) -> list[str]:
    """The ``topic`` option as a list of names (``ValueError`` for anything else)."""
    topics = [value] if isinstance(value, str) else value
    if not (
        isinstance(topics, list | tuple)
        and topics
        and all(isinstance(t, str) and t for t in topics)
    ):
        raise ValueError(
            f"option topic={value!r} must be a topic name or a non-empty list of topic names, "
            'e.g. topic="orders" or topic=["orders", "refunds"]'
        )
    return list(topics)


def validate(options: Mapping[str, Any]) -> None:
    """Check option types and values at class-definition time (aiokafka is not imported)."""
    topics_of(options.get("topic"))
    for name in ("group_id", "bootstrap_servers", "client_id", "dead_letter_topic"):
        value = options.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"option {name}={value!r} must be a non-empty string")
    reset = options.get("auto_offset_reset", "earliest")
    if reset not in _OFFSET_RESETS:
        raise ValueError(f"option auto_offset_reset={reset!r} must be one of {_OFFSET_RESETS}")
    for name in _POSITIVE_INTS:
        value = options.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"option {name}={value!r} must be a positive integer")
    for name in ("consumer_options", "producer_options"):
        value = options.get(name)
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(f"option {name}={value!r} must be a dict of aiokafka arguments")
    session = options.get("session_timeout_ms", DEFAULTS["session_timeout_ms"])
    heartbeat = options.get("heartbeat_interval_ms", DEFAULTS["heartbeat_interval_ms"])
    if heartbeat >= session:
        raise ValueError(
            f"option heartbeat_interval_ms={heartbeat} must be lower than "
            f"session_timeout_ms={session} (typically a third of it)"
        )
