"""What the outbox relay publishes: the body and the dedup id every message carries.

Import them from :mod:`sagaz.outbox`. Each broker driver is an extra, imported when the
publisher starts: without it, ``start()`` raises :class:`~sagaz.exceptions.MissingExtraError`
with the ``pip install`` to run. A publisher connects on its first ``publish`` (and again
after a failed connection attempt), so a broker that is down when the service boots only makes
publishing fail, and the relay retries.

Every message carries its *dedup id*, the pair (saga id, outbox id), which is unique and
stays the same when the relay publishes a message again (delivery is at least once):

=========  =======================================================================
Kafka      headers ``sagaz-saga-id`` and ``sagaz-outbox-id``; key = saga id
RabbitMQ   ``message_id = "<saga id>:<outbox id>"``; headers as for Kafka
Redis      fields ``saga_id`` and ``outbox_id`` of the stream entry
=========  =======================================================================

The body is the payload as JSON (UTF-8; bytes and datetimes nested in it use the envelopes of
"""

from __future__ import annotations

from typing import Any

from sagaz.records import OutboxMessage
from sagaz.storage.codec import dumps

__all__ = ["OUTBOX_ID_HEADER", "SAGA_ID_HEADER", "dedup_id", "encode_payload", "sagaz_headers"]

SAGA_ID_HEADER = "sagaz-saga-id"
"""Header (Kafka, RabbitMQ) naming the saga that emitted the message."""
OUTBOX_ID_HEADER = "sagaz-outbox-id"
"""Header (Kafka, RabbitMQ) with the message's outbox id: with the saga id, its dedup key."""


def encode_payload(payload: Any) -> bytes:
    """The body published for ``payload``: ``bytes`` as they are, anything else as JSON."""
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    return dumps(payload).encode()


def dedup_id(message: OutboxMessage) -> str:
    """``"<saga id>:<outbox id>"``: the same every time the message is published again."""
    return f"{message.saga_id}:{message.id}"


def sagaz_headers(message: OutboxMessage) -> dict[str, str]:
    """The message's own headers plus the saga id and outbox id (which win on a clash)."""
    return {
        **message.headers,
        SAGA_ID_HEADER: message.saga_id,
        OUTBOX_ID_HEADER: str(message.id),
    }
