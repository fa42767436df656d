"""The transactional outbox: :class:`OutboxRelay` and one publisher per broker.

>>> from sagaz.outbox import KafkaPublisher, OutboxRelay
>>> async with OutboxRelay(store, KafkaPublisher("localhost:9092")):  # doctest: +SKIP
...     await serve_forever()

Each name is imported on first use, so importing one publisher imports neither the relay nor
the other publishers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sagaz.abc import Publisher
    from sagaz.outbox.kafka import KafkaPublisher
    from sagaz.outbox.messages import OUTBOX_ID_HEADER, SAGA_ID_HEADER, dedup_id, encode_payload
    from sagaz.outbox.rabbitmq import RabbitMQPublisher
    from sagaz.outbox.redis import RedisStreamPublisher
    from sagaz.outbox.relay import OutboxRelay

__all__ = [
    "OUTBOX_ID_HEADER",
    "SAGA_ID_HEADER",
    "KafkaPublisher",
    "OutboxRelay",
    "Publisher",
    "RabbitMQPublisher",
    "RedisStreamPublisher",
    "dedup_id",
    "encode_payload",
]

_HOMES = {
    "OUTBOX_ID_HEADER": "sagaz.outbox.messages",
    "SAGA_ID_HEADER": "sagaz.outbox.messages",
    "dedup_id": "sagaz.outbox.messages",
    "encode_payload": "sagaz.outbox.messages",
    "KafkaPublisher": "sagaz.outbox.kafka",
    "RabbitMQPublisher": "sagaz.outbox.rabbitmq",
    "RedisStreamPublisher": "sagaz.outbox.redis",
    "OutboxRelay": "sagaz.outbox.relay",
    "Publisher": "sagaz.abc",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'sagaz.outbox' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
