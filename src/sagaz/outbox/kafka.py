"""The outbox's Kafka publisher, and the producer helper the Kafka source's dead letters share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from sagaz._imports import require_extra
from sagaz.abc import Publisher
from sagaz.exceptions import ConfigurationError
from sagaz.outbox.messages import encode_payload, sagaz_headers
from sagaz.records import OutboxMessage

__all__ = ["KafkaPublisher", "start_producer"]

logger = logging.getLogger(__name__)


async def start_producer(aiokafka: Any, **options: Any) -> Any:
    """An ``AIOKafkaProducer(**options)``, started; closed again if it cannot start."""
    producer = aiokafka.AIOKafkaProducer(**options)
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


class KafkaPublisher(Publisher):
    """Publishes with an aiokafka ``AIOKafkaProducer`` (``send_and_wait``, one at a time).

    The record goes to ``message.topic``; its key is the saga id, so all the messages of a
    saga land on one partition, in order; its value is the JSON payload; its headers are the
    message's headers plus ``sagaz-saga-id`` and ``sagaz-outbox-id``.

    >>> publisher = KafkaPublisher("localhost:9092", linger_ms=5)  # doctest: +SKIP

    ``producer_options`` go to ``AIOKafkaProducer`` (``client_id``, ``security_protocol``,
    ``enable_idempotence``...). Topics are not created: create them, or let the broker do it.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        acks: int | str = "all",
        **producer_options: Any,
    ) -> None:
        if acks not in (0, 1, -1, "all"):
            raise ConfigurationError(f"acks={acks!r} must be 0, 1 or 'all' (the default)")
        self.bootstrap_servers = bootstrap_servers
        self.acks = acks
        self.producer_options = producer_options
        self._aiokafka: Any = None
        self._producer: Any = None
        self._connect_lock = asyncio.Lock()

    async def start(self) -> None:
        """Check that aiokafka is installed; the producer connects on the first publish."""
        self._aiokafka = require_extra("kafka")
        await super().start()

    async def stop(self) -> None:
        """Flush and close the producer. Idempotent."""
        producer, self._producer = self._producer, None
        try:
            if producer is not None:
                await producer.stop()
        finally:
            await super().stop()

    async def publish(self, message: OutboxMessage) -> None:
        """``send_and_wait`` the message; raises aiokafka's error when the broker refuses it."""
        producer = await self._connected()
        await producer.send_and_wait(
            message.topic,
            encode_payload(message.payload),
            key=message.saga_id.encode(),
            headers=[(name, value.encode()) for name, value in sagaz_headers(message).items()],
        )

    async def _connected(self) -> Any:
        self._require_started()
        async with self._connect_lock:
            if self._producer is None:
                self._producer = await start_producer(
                    self._aiokafka,
                    bootstrap_servers=self.bootstrap_servers,
                    acks=self.acks,
                    **self.producer_options,
                )
                logger.info(
                    "kafka outbox publisher connected",
                    extra={"bootstrap_servers": self.bootstrap_servers},
                )
            return self._producer
