"""Publishers of the outbox relay: :class:`Publisher` and one per broker.

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
:mod:`sagaz.storage.codec`); a payload that is itself ``bytes`` is published as is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sagaz._imports import require_extra
from sagaz.abc import _Lifecycle
from sagaz.exceptions import ConfigurationError, SagazError
from sagaz.records import OutboxMessage
from sagaz.storage.codec import dumps
from sagaz.triggers.kafka import start_producer

if TYPE_CHECKING:
    from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection
    from redis.asyncio import Redis

__all__ = [
    "OUTBOX_ID_HEADER",
    "SAGA_ID_HEADER",
    "KafkaPublisher",
    "Publisher",
    "RabbitMQPublisher",
    "RedisStreamPublisher",
    "dedup_id",
    "encode_payload",
]

logger = logging.getLogger(__name__)

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


def _sagaz_headers(message: OutboxMessage) -> dict[str, str]:
    """The message's own headers plus the saga id and outbox id (which win on a clash)."""
    return {
        **message.headers,
        SAGA_ID_HEADER: message.saga_id,
        OUTBOX_ID_HEADER: str(message.id),
    }


class Publisher(_Lifecycle, ABC):
    """Publishes outbox messages to a broker; used by :class:`sagaz.outbox.OutboxRelay`.

    ``publish`` returns once the broker has the message and **raises** when it could not be
    published (the relay then retries it later, and publishes nothing after it meanwhile).
    ``start()``/``stop()`` (or ``async with``) acquire and release the connection; a relay
    starts and stops a publisher that was not started when the relay needed it. A subclass
    that overrides them must call ``super().start()``/``super().stop()`` (they keep
    :attr:`started`, which the relay reads).

    >>> class Printer(Publisher):
    ...     async def publish(self, message: OutboxMessage) -> None:
    ...         print(message.topic, message.payload)
    """

    @property
    def started(self) -> bool:
        """Whether ``start()`` was called (and ``stop()`` not since)."""
        return self._started

    @abstractmethod
    async def publish(self, message: OutboxMessage) -> None:
        """Publish one message; raise if the broker did not take it."""

    def _require_started(self) -> None:
        if not self._started:
            raise SagazError(
                f"{type(self).__name__} is not started: use `async with publisher:` or "
                "`await publisher.start()` first (an OutboxRelay starts it in its own start())"
            )


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
            headers=[(name, value.encode()) for name, value in _sagaz_headers(message).items()],
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
            headers=_sagaz_headers(message),
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


class RedisStreamPublisher(Publisher):
    """Appends each message to the Redis Stream ``message.topic`` with ``XADD``.

    Fields: ``data`` (the JSON payload), ``saga_id``, ``outbox_id``, and one ``h:<name>``
    field per header. With ``maxlen``, the stream is trimmed to about that many entries
    (``MAXLEN ~``).

    >>> publisher = RedisStreamPublisher("redis://localhost", maxlen=100_000)  # doctest: +SKIP
    """

    def __init__(self, url: str, *, maxlen: int | None = None) -> None:
        if maxlen is not None and (isinstance(maxlen, bool) or maxlen < 1):
            raise ConfigurationError(f"maxlen={maxlen!r} must be None or a positive integer")
        self.url = url
        self.maxlen = maxlen
        self._client: Redis | None = None

    async def start(self) -> None:
        """Check that redis-py is installed and make the client (it connects on first use)."""
        if self._started:
            return
        redis_asyncio = require_extra("redis", "redis.asyncio")
        self._client = redis_asyncio.Redis.from_url(self.url, client_name="sagaz:outbox")
        await super().start()

    async def stop(self) -> None:
        """Close the client. Idempotent."""
        client, self._client = self._client, None
        try:
            if client is not None:
                await client.aclose()
        finally:
            await super().stop()

    async def publish(self, message: OutboxMessage) -> None:
        """``XADD <topic> [MAXLEN ~ n] * data <json> saga_id <id> outbox_id <id> h:<k> <v>...``"""
        self._require_started()
        assert self._client is not None
        fields: dict[str, bytes | str] = {
            "data": encode_payload(message.payload),
            "saga_id": message.saga_id,
            "outbox_id": str(message.id),
        }
        fields.update({f"h:{name}": value for name, value in message.headers.items()})
        await self._client.xadd(
            message.topic,
            fields,  # type: ignore[arg-type]
            maxlen=self.maxlen,
            approximate=True,
        )
