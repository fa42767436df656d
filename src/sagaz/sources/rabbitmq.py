"""``source="rabbitmq"``: consume a RabbitMQ queue with aio-pika.

At-least-once: a message is acked only when the engine calls ``delivery.ack()``, after its
saga reached a terminal state in the store; ``nack(requeue=True)`` (shutdown, cancellation)
hands it back to the broker. The connection is *robust* (``aio_pika.connect_robust``): after a
broker restart or a dropped connection it reconnects, re-declares the queue, exchange and
binding, and consumption resumes by itself. Messages that were in flight on the lost channel
are requeued by the broker and come back with ``redelivered`` set; the inbox deduplicates them.

``pause()`` (a paused trigger) cancels the consumer and hands back what was received but never
emitted: new messages stay in the queue; the ones in flight finish and are acked as usual.
``resume()`` consumes again.

>>> @trigger(source="rabbitmq", queue="ml.retraining", exchange="model-events",
...          routing_key="drift.*")  # doctest: +SKIP
... def on_drift(self, event: dict) -> dict: ...
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from sagaz._imports import require_extra
from sagaz.abc import Emit, Source, SourceContext
from sagaz.backoff import Backoff
from sagaz.clock import Clock
from sagaz.events import Delivery, EventMeta
from sagaz.exceptions import ConfigurationError, SagazError
from sagaz.triggers.options.rabbitmq import RabbitMQOptions

if TYPE_CHECKING:
    from aio_pika.abc import (
        AbstractExchange,
        AbstractIncomingMessage,
        AbstractQueue,
        AbstractRobustChannel,
        AbstractRobustConnection,
    )

    from sagaz.records import DeadLetterRecord

__all__ = ["RabbitMQSource", "create"]

logger = logging.getLogger(__name__)

#: longest ``x-sagaz-error`` header published with a dead letter
MAX_ERROR_HEADER = 4096


def _header_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _attempt(message: AbstractIncomingMessage) -> int:
    """1 for a first delivery; quorum queues count deliveries in ``x-delivery-count``,
    classic queues only say ``redelivered`` (then at least the second attempt)."""
    count = (message.headers or {}).get("x-delivery-count")
    if isinstance(count, int) and not isinstance(count, bool):
        return count + 1
    return 2 if message.redelivered else 1


class RabbitMQSource(Source):
    """Consumes one queue, optionally bound to an exchange; acks after the saga is done.

    Identity (the dedup key when the trigger has no ``idempotency_key``): the AMQP
    ``message_id`` when the publisher set one, else the SHA-256 hex digest of the body, so
    two messages with identical bodies and no ``message_id`` count as the same event.
    (aio-pika publishers always set a random ``message_id``: there, a publisher that sends
    the same event twice gets two events unless the trigger has an ``idempotency_key``.)

    ``prefetch`` bounds the un-acked messages the broker hands us; under ``block``
    backpressure it stays full and the broker stops delivering.
    """

    kind: ClassVar[str] = "rabbitmq"
    redeliverable: ClassVar[bool] = True

    def __init__(
        self,
        options: RabbitMQOptions,
        ctx: SourceContext,
        *,
        connection_name: str | None = None,
        reconnect_interval: float = 5.0,
    ) -> None:
        config, trigger_id = ctx.config, ctx.trigger_id
        self.options = options
        self.queue = options.queue
        self.url = options.url or config.rabbitmq_url
        self.exchange = options.exchange
        self.exchange_type = options.exchange_type
        self.routing_keys = options.routing_keys
        self.prefetch = options.prefetch or min(config.queue_size, 1000)
        self.durable = options.durable
        self.dead_letter_topic = ctx.dead_letter_topic
        self.trigger_id = trigger_id
        self.connection_name = connection_name or (
            f"sagaz {trigger_id} {socket.gethostname()}-{os.getpid()}"
        )
        self.reconnect_interval = reconnect_interval
        self._ctx = ctx
        self._clock: Clock = ctx.clock
        self._log = {"source": self.kind, "trigger": trigger_id, "queue": self.queue}
        self._connection: AbstractRobustConnection | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._dead_letter_exchange: AbstractExchange | None = None
        self._dead_letter_lock = asyncio.Lock()
        self._stopping = False
        self._paused = False
        self._consuming = False  # run() reads the buffer
        self._intake_lock = asyncio.Lock()  # consume/cancel, one at a time

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect (robustly) and declare the queue, the exchange and the binding."""
        if self._started:
            return
        aio_pika = require_extra("rabbitmq")
        self._stopping = False
        connection: AbstractRobustConnection = await aio_pika.connect_robust(
            self.url,
            client_properties={"connection_name": self.connection_name},
            reconnect_interval=self.reconnect_interval,
        )
        try:
            connection.close_callbacks.add(self._on_connection_lost)
            connection.reconnect_callbacks.add(self._on_reconnected)
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=self.prefetch)
            queue = await self._declare(aio_pika, channel)
        except BaseException:
            await connection.close()
            raise
        self._connection, self._queue = connection, queue
        self._started = True
        logger.info("rabbitmq source connected", extra=self._log)

    async def _declare(self, aio_pika: Any, channel: AbstractRobustChannel) -> AbstractQueue:
        try:
            queue = await channel.declare_queue(self.queue, durable=self.durable)
            if self.exchange:
                exchange = await channel.declare_exchange(
                    self.exchange, type=self.exchange_type, durable=self.durable
                )
                for key in self.routing_keys:
                    await queue.bind(exchange, routing_key=key)
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"trigger {self.trigger_id!r}: queue {self.queue!r} or exchange "
                f"{self.exchange!r} already exists with other settings ({exc}); set "
                "durable=/exchange_type= to match it, or delete it on the broker"
            ) from exc
        return queue

    async def stop(self) -> None:
        """Cancel the consumer and close the connection. Un-acked messages go back to the
        broker (closing the channel requeues them). Idempotent."""
        if not self._started:
            return
        self._stopping = True
        self._started = False
        await self._stop_intake()
        connection, self._connection = self._connection, None
        self._queue = self._dead_letter_exchange = None
        if connection is not None:
            await connection.close()
        logger.info("rabbitmq source stopped", extra=self._log)

    async def _on_connection_lost(self, _sender: Any, exc: BaseException | None) -> None:
        if self._stopping or exc is None or isinstance(exc, asyncio.CancelledError):
            return
        logger.warning(
            "rabbitmq connection lost; reconnecting",
            extra={**self._log, "error": repr(exc)},
        )
        if self._ctx is not None:
            await self._ctx.report_error(exc)

    def _on_reconnected(self, _sender: Any) -> None:
        logger.info("rabbitmq connection restored; consuming again", extra=self._log)

    # -- consuming -------------------------------------------------------------------------
    async def run(self, emit: Emit) -> None:
        """Consume until cancelled, handing every message to ``emit`` in arrival order."""
        await self._start_with_retry()
        assert self._queue is not None
        self._buffer = asyncio.Queue()
        async with self._intake_lock:
            self._consuming = True
            if not self._paused:
                self._consumer_tag = await self._queue.consume(self._buffer.put)
        try:
            while True:
                message = await self._buffer.get()
                if not _channel_open(message):
                    # delivered on a channel that has since been lost: the broker requeued it
                    logger.debug("skipping stale message", extra=self._log)
                    continue
                await emit(self._delivery(message))
        finally:
            self._consuming = False
            await self._stop_intake()

    async def pause(self) -> None:
        """Cancel the consumer and hand back the messages received but not emitted; the
        queue keeps the new ones until :meth:`resume`. Messages in flight are left alone."""
        async with self._intake_lock:
            if not self._paused:
                self._paused = True
                await self._stop_intake()
                logger.info("rabbitmq intake paused", extra=self._log)

    async def resume(self) -> None:
        """Consume again (raises if the broker cannot be reached: the engine retries)."""
        async with self._intake_lock:
            if not self._paused:
                return
            if self._consuming and self._queue is not None and self._consumer_tag is None:
                self._consumer_tag = await self._queue.consume(self._buffer.put)
            self._paused = False
            logger.info("rabbitmq intake resumed", extra=self._log)

    async def _start_with_retry(self) -> None:
        """Start, waiting out a broker that is not reachable yet (reported, with backoff)."""
        aio_pika = require_extra("rabbitmq")
        backoff = Backoff(self._clock, initial=0.5, maximum=30.0)
        while not self._started:
            try:
                await self.start()
            except (
                aio_pika.exceptions.AuthenticationError,
                aio_pika.exceptions.ProbableAuthenticationError,
            ) as exc:
                raise ConfigurationError(
                    f"trigger {self.trigger_id!r}: RabbitMQ at {_redacted(self.url)} refused "
                    f"the login ({exc}); fix the credentials in the url option or "
                    "TriggerConfig.rabbitmq_url (SAGAZ_RABBITMQ_URL)"
                ) from exc
            except aio_pika.exceptions.CONNECTION_EXCEPTIONS as exc:
                delay = backoff.next()
                logger.warning(
                    "cannot reach rabbitmq at %s; retrying in %.1fs",
                    _redacted(self.url),
                    delay,
                    extra={**self._log, "error": repr(exc)},
                )
                if self._ctx is not None:
                    await self._ctx.report_error(exc)
                await backoff.sleep(delay)

    async def _stop_intake(self) -> None:
        """Cancel the consumer and hand back what was received but never emitted."""
        tag, self._consumer_tag = self._consumer_tag, None
        if tag is not None and self._queue is not None:
            try:
                async with asyncio.timeout(5):
                    await self._queue.cancel(tag)
            except Exception as exc:  # the channel may be gone: closing requeues anyway
                logger.debug("consumer cancel failed: %r", exc, extra=self._log)
        while not self._buffer.empty():
            await self._settle(self._buffer.get_nowait(), ack=False, requeue=True)

    def _delivery(self, message: AbstractIncomingMessage) -> Delivery:
        body = message.body
        meta = EventMeta(
            source=self.kind,
            trigger=self.trigger_id,
            message_id=message.message_id,
            topic=self.queue,
            key=message.routing_key,
            headers={k: _header_text(v) for k, v in (message.headers or {}).items()},
            attempt=_attempt(message),
        )
        logger.debug(
            "rabbitmq message received",
            extra={**self._log, "message_id": message.message_id, "attempt": meta.attempt},
        )
        return Delivery(
            payload=body,
            meta=meta,
            identity=message.message_id or hashlib.sha256(body).hexdigest(),
            ack=partial(self._settle, message, ack=True, requeue=False),
            nack=lambda requeue: self._settle(message, ack=False, requeue=requeue),
        )

    async def _settle(self, message: AbstractIncomingMessage, *, ack: bool, requeue: bool) -> None:
        if message.processed:
            return
        try:
            if ack:
                await message.ack()
            else:
                await message.nack(requeue=requeue)
        except (ConnectionError, RuntimeError, _amqp_error()) as exc:
            # The channel is gone: the broker redelivers the message; the inbox dedups it.
            logger.debug(
                "rabbitmq %s lost with its channel: %r",
                "ack" if ack else "nack",
                exc,
                extra={**self._log, "message_id": message.message_id},
            )

    # -- dead letters ----------------------------------------------------------------------
    async def publish_dead_letter(self, delivery: Delivery, record: DeadLetterRecord) -> None:
        """Publish the original body to the durable fanout exchange ``dead_letter_topic``
        (bound to a durable queue of the same name), with ``x-sagaz-*`` headers."""
        if not self.dead_letter_topic:
            return
        aio_pika = require_extra("rabbitmq")
        exchange = await self._dead_letter_target(aio_pika)
        headers: dict[str, Any] = dict(delivery.meta.headers)
        headers.update(
            {
                "x-sagaz-error": record.error[:MAX_ERROR_HEADER],
                "x-sagaz-reason": record.reason,
                "x-sagaz-attempts": record.attempts,
                "x-sagaz-trigger": record.trigger_id or self.trigger_id,
                "x-sagaz-queue": self.queue,
            }
        )
        if record.saga_id:
            headers["x-sagaz-saga-id"] = record.saga_id
        message = aio_pika.Message(
            _body(delivery, record),
            headers=headers,
            message_id=delivery.meta.message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await exchange.publish(message, routing_key=self.queue)
        logger.debug(
            "dead letter published",
            extra={**self._log, "dead_letter_topic": self.dead_letter_topic},
        )

    async def _dead_letter_target(self, aio_pika: Any) -> AbstractExchange:
        async with self._dead_letter_lock:
            if self._dead_letter_exchange is not None:
                return self._dead_letter_exchange
            if self._connection is None:
                raise SagazError(
                    f"rabbitmq source of trigger {self.trigger_id!r} is not started: "
                    "call `await source.start()` before publishing dead letters"
                )
            assert self.dead_letter_topic is not None
            channel = await self._connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(
                self.dead_letter_topic, type=aio_pika.ExchangeType.FANOUT, durable=True
            )
            # a bound queue so a dead letter is kept even when nobody listens yet
            queue = await channel.declare_queue(self.dead_letter_topic, durable=True)
            await queue.bind(exchange, routing_key="")
            self._dead_letter_exchange = exchange
            return exchange

    def describe(self) -> dict[str, Any]:
        """Kind, queue, exchange and binding keys."""
        return {
            "kind": self.kind,
            "queue": self.queue,
            "exchange": self.exchange,
            "routing_keys": list(self.routing_keys),
            "prefetch": self.prefetch,
        }


def _amqp_error() -> type[Exception]:
    error: type[Exception] = require_extra("rabbitmq").exceptions.AMQPError
    return error


def _redacted(url: str) -> str:
    """The url without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _channel_open(message: AbstractIncomingMessage) -> bool:
    try:
        message.channel  # noqa: B018  (raises once the delivering channel is closed)
    except Exception:
        return False
    return True


def _body(delivery: Delivery, record: DeadLetterRecord) -> bytes:
    payload = delivery.payload
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(record.payload, default=str).encode()


def create(options: RabbitMQOptions, ctx: SourceContext) -> RabbitMQSource:
    """Build the source of one ``source="rabbitmq"`` trigger (checks that aio-pika is installed).

    ``url`` defaults to ``TriggerConfig.rabbitmq_url``, ``prefetch`` to
    ``min(TriggerConfig.queue_size, 1000)``; the dead-letter exchange is
    ``ctx.dead_letter_topic``.
    """
    require_extra("rabbitmq")
    return RabbitMQSource(options, ctx)
