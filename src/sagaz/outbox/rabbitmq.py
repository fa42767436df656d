"""The outbox's RabbitMQ publisher (aio-pika, publisher confirms, mandatory)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from sagaz._imports import require_extra
from sagaz.abc import Publisher
from sagaz.exceptions import ConfigurationError
from sagaz.outbox.messages import dedup_id, encode_payload, sagaz_headers
from sagaz.records import OutboxMessage

if TYPE_CHECKING:
    from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection

__all__ = ["RabbitMQPublisher"]

logger = logging.getLogger(__name__)


class RabbitMQPublisher(Publisher):
    """Publishes with aio-pika on a robust connection, with publisher confirms.

    The routing key is ``message.topic``: with the default exchange ``""`` it is the name of
    the queue that gets the message; with ``exchange="orders"`` (an exchange that must exist)
    the exchange routes it. Messages are persistent; ``message_id`` is
    ``"<saga id>:<outbox id>"`` (sagaz's RabbitMQ source deduplicates on it); headers are the
    message's plus ``sagaz-saga-id`` and ``sagaz-outbox-id``.

    With ``mandatory=True`` (the default) a message the broker cannot route (no such queue, no
    binding) makes ``publish`` raise, so the relay keeps it and retries: declare the queues
    first. ``mandatory=False`` lets the broker drop such messages.

    >>> publisher = RabbitMQPublisher("amqp://guest:guest@localhost/")  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        *,
        exchange: str = "",
        mandatory: bool = True,
        publish_timeout: float = 30.0,
        connection_name: str | None = None,
        reconnect_interval: float = 5.0,
    ) -> None:
        if not url.startswith(("amqp://", "amqps://")):
            raise ConfigurationError(f"url={url!r} must be an amqp:// or amqps:// URL")
        if publish_timeout <= 0:
            raise ConfigurationError(f"publish_timeout={publish_timeout!r} must be > 0 seconds")
        self.url = url
        self.exchange = exchange
        self.mandatory = mandatory
        self.publish_timeout = publish_timeout
        self.connection_name = connection_name or (
            f"sagaz outbox {socket.gethostname()}-{os.getpid()}"
        )
        self.reconnect_interval = reconnect_interval
        self._aio_pika: Any = None
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._connect_lock = asyncio.Lock()

    async def start(self) -> None:
        """Check that aio-pika is installed; the connection opens on the first publish."""
        self._aio_pika = require_extra("rabbitmq")
        await super().start()

    async def stop(self) -> None:
        """Close the connection. Idempotent."""
        connection, self._connection = self._connection, None
        self._channel = self._exchange = None
        try:
            if connection is not None:
                await connection.close()
        finally:
            await super().stop()

    async def publish(self, message: OutboxMessage) -> None:
        """Publish and wait for the broker's confirm; raises on a nack, an unroutable
        message (with ``mandatory``), a lost connection or ``publish_timeout``."""
        exchange = await self._connected()
        aio_pika = self._aio_pika
        body = encode_payload(message.payload)
        raw = isinstance(message.payload, bytes | bytearray | memoryview)
        amqp_message = aio_pika.Message(
            body,
            headers=sagaz_headers(message),
            message_id=dedup_id(message),
            content_type="application/octet-stream" if raw else "application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await exchange.publish(
                amqp_message,
                routing_key=message.topic,
                mandatory=self.mandatory,
                timeout=self.publish_timeout,
            )
        except BaseException:
            channel = self._channel
            if channel is not None and channel.is_closed:  # e.g. the exchange does not exist
                self._channel = self._exchange = None
            raise

    async def _connected(self) -> AbstractExchange:
        self._require_started()
        async with self._connect_lock:
            if self._connection is None:
                self._connection = await self._aio_pika.connect_robust(
                    self.url,
                    client_properties={"connection_name": self.connection_name},
                    reconnect_interval=self.reconnect_interval,
                )
                logger.info(
                    "rabbitmq outbox publisher connected", extra={"exchange": self.exchange}
                )
            if self._exchange is None:
                channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=self.mandatory
                )
                self._channel = channel
                self._exchange = (
                    channel.default_exchange
                    if not self.exchange
                    else await channel.get_exchange(self.exchange, ensure=False)
                )
            return self._exchange
