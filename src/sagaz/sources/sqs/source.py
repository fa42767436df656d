"""``source="sqs"``: consume an Amazon SQS queue with aiobotocore, at least once.

>>> @trigger(source="sqs", queue_url="https://sqs.eu-west-1.amazonaws.com/123456789012/orders",
...          visibility_timeout=60)  # doctest: +SKIP
... def on_order(self, event: dict) -> dict:
...     return {"order_id": event["Body"]["id"], "message_id": event["MessageId"]}

Messages are received by long polling, in batches of up to ``max_messages``; the next batch is
only asked for once the previous one was emitted, so under ``block`` backpressure the source
stops receiving and holds at most one batch that was not emitted yet.

The event is the SQS message dict with ``Body`` parsed as JSON when it is JSON (a plain string
otherwise). ``delivery.ack()`` queues a delete: deletes go out as ``DeleteMessageBatch`` every
``flush_interval`` seconds or as soon as 10 are waiting, and ``stop()`` flushes them. While a
message is neither acked nor nacked, a heartbeat extends its visibility whenever half of
``visibility_timeout`` has passed, so a saga may run longer than the timeout without the
message being redelivered meanwhile. ``nack(requeue=True)`` makes it visible again at once;
``nack(requeue=False)`` deletes it (SQS cannot park a message; the dead letter is stored).

``pause()`` (a paused trigger) stops receiving: new messages stay in the queue; messages in
flight keep their visibility extended and are deleted as usual; a batch received but not yet
emitted when the pause came is made visible again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import Any, ClassVar

from sagaz._imports import require_extra
from sagaz.abc import Emit, Source, SourceContext
from sagaz.backoff import Backoff
from sagaz.clock import Clock
from sagaz.events import Delivery, EventMeta
from sagaz.exceptions import ConfigurationError, SagazError
from sagaz.records import DeadLetterRecord
from sagaz.sources.sqs.settlement import ReceivedMessage, Settle, SQSSettlement
from sagaz.triggers.options.sqs import (
    MAX_MESSAGE_ATTRIBUTES,
    MAX_RECEIVE_MESSAGES,
    SQSOptions,
    is_url,
)

__all__ = ["SQSSource", "create"]

logger = logging.getLogger(__name__)

#: longest ``x-sagaz-error`` attribute published with a dead letter
MAX_ERROR_ATTRIBUTE = 4096
_MISSING_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


class SQSSource(Source):
    """Consumes one SQS queue; deletes a message once its saga reached a terminal state.

    Identity (the dedup key when the trigger has no ``idempotency_key``): the ``MessageId``.
    ``queue_url`` and ``dead_letter_topic`` take a queue URL or a queue name (resolved with
    ``GetQueueUrl``). Credentials not given here come from the usual AWS chain (environment,
    ``~/.aws``, instance role). API errors are logged, reported and retried with backoff.
    """

    kind: ClassVar[str] = "sqs"
    redeliverable: ClassVar[bool] = True

    def __init__(
        self,
        options: SQSOptions,
        ctx: SourceContext,
        *,
        flush_interval: float = 0.1,
        stop_timeout: float = 10.0,
    ) -> None:
        config, trigger_id = ctx.config, ctx.trigger_id
        self.options = options
        self.queue_url = queue_url = options.queue_url
        self.visibility_timeout = options.visibility_timeout
        self.wait_time = options.wait_time
        self.max_messages = options.max_messages or min(MAX_RECEIVE_MESSAGES, config.queue_size)
        self.endpoint_url = options.endpoint_url or config.sqs_endpoint_url
        self.region = options.region or config.sqs_region
        self.dead_letter_topic = ctx.dead_letter_topic
        self.trigger_id = trigger_id
        self.flush_interval = flush_interval
        self.stop_timeout = stop_timeout
        self._credentials = {
            "aws_access_key_id": options.aws_access_key_id,
            "aws_secret_access_key": options.aws_secret_access_key,
            "aws_session_token": options.aws_session_token,
        }
        self._ctx = ctx
        self._clock: Clock = ctx.clock
        self._log = {"source": self.kind, "trigger": trigger_id, "queue": queue_url}
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._resolved_queue_url: str | None = queue_url if is_url(queue_url) else None
        self._dead_letter_url: str | None = None
        self._dead_letter_lock = asyncio.Lock()
        self._settlement: SQSSettlement | None = None
        self._stopping = False
        self._poll: asyncio.Task[list[ReceivedMessage]] | None = None
        self._reachable = False  # the last receive answered
        self._intake = asyncio.Event()  # cleared while the trigger is paused
        self._intake.set()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the client and the flush and heartbeat tasks; makes no API call."""
        if self._started:
            return
        session = require_extra("sqs", "aiobotocore.session")
        aio_config = require_extra("sqs", "aiobotocore.config")
        config = aio_config.AioConfig(
            connect_timeout=5,
            read_timeout=self.wait_time + 30,
            retries={"mode": "standard", "max_attempts": 3},
            max_pool_connections=16,
        )
        self._stack = contextlib.AsyncExitStack()
        self._client = await self._stack.enter_async_context(
            session.get_session().create_client(
                "sqs",
                region_name=self.region,
                endpoint_url=self.endpoint_url,
                config=config,
                **{k: v for k, v in self._credentials.items() if v is not None},
            )
        )
        self._settlement = SQSSettlement(
            self._client,
            self._queue_url,
            visibility_timeout=self.visibility_timeout,
            flush_interval=self.flush_interval,
            report=self._report,
            log=self._log,
            clock=self._clock,
        )
        self._started = True
        logger.info("sqs source started", extra=self._log)

    async def stop(self) -> None:
        """Stop receiving, hand back unsettled messages, flush pending deletes (shielded
        from cancellation, bounded by ``stop_timeout``) and close the client. Idempotent."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        try:
            teardown = asyncio.create_task(self._teardown())
            try:
                await asyncio.shield(teardown)
            except asyncio.CancelledError:
                await asyncio.wait({teardown})
                raise
        finally:
            self._started = False
            self._stopping = False
        logger.info("sqs source stopped", extra=self._log)

    async def _teardown(self) -> None:
        try:
            await self._finish_poll()
            if self._settlement is not None:
                await self._settlement.close(self.stop_timeout)
        finally:
            self._settlement = None
            self._client = None
            await self._stack.aclose()

    async def _finish_poll(self) -> None:
        """Let a long poll in flight answer, so the messages SQS hands it are released at once
        instead of staying invisible for ``visibility_timeout`` (it answers within
        ``wait_time``; bounded by ``stop_timeout``)."""
        poll, self._poll = self._poll, None
        if poll is None:
            return
        patience = min(self.wait_time + 5, self.stop_timeout) if self._reachable else 0
        done, _ = await asyncio.wait({poll}, timeout=patience)
        if not done:
            poll.cancel()
            await asyncio.wait({poll})

    # -- receiving -------------------------------------------------------------------------
    async def run(self, emit: Emit) -> None:
        """Receive until cancelled (or stopped), calling ``emit`` for every message in order.

        Cancelling ``run`` leaves a long poll in flight to ``stop()``, which waits for its
        answer and hands the messages back (a poll cut short may still take messages)."""
        await self.start()
        while self._started and not self._stopping:
            if not self._intake.is_set():
                await self._intake.wait()
                continue
            if self._poll is None:
                self._poll = asyncio.create_task(self._receive())
            poll = self._poll
            try:
                batch = await asyncio.shield(poll)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if self._stopping and not (current and current.cancelling()):
                    return  # stop() cut the long poll short
                raise
            if self._poll is not poll or self._stopping:
                return  # stop() took it over: it hands the batch back
            self._poll = None
            for index, message in enumerate(batch):
                if message.settled:  # stop() handed it back meanwhile
                    continue
                if not self._intake.is_set():  # paused: hand the rest back at once
                    for rest in batch[index:]:
                        self._settle(rest, "release")
                    break
                try:
                    await emit(self._delivery(message))
                except asyncio.CancelledError:
                    # the one being emitted is the engine's to settle; the rest never left us
                    for rest in batch[index + 1 :]:
                        self._settle(rest, "release")
                    raise
                except BaseException:
                    for rest in batch[index:]:
                        self._settle(rest, "release")
                    raise

    async def pause(self) -> None:
        """Receive nothing more until :meth:`resume` (a long poll under way answers, and what
        it brings is made visible again); messages in flight are left alone."""
        self._intake.clear()
        logger.info("sqs intake paused", extra=self._log)

    async def resume(self) -> None:
        """Receive again."""
        self._intake.set()
        logger.info("sqs intake resumed", extra=self._log)

    async def _receive(self) -> list[ReceivedMessage]:
        """One long poll (an empty answer is an empty batch); API errors are logged,
        reported and retried with backoff."""
        backoff = Backoff(self._clock, initial=0.5, maximum=30.0)
        while True:
            try:
                queue_url = await self._queue_url()
                response = await self._client.receive_message(
                    QueueUrl=queue_url,
                    MaxNumberOfMessages=self.max_messages,
                    WaitTimeSeconds=self.wait_time,
                    VisibilityTimeout=self.visibility_timeout,
                    MessageAttributeNames=["All"],
                    MessageSystemAttributeNames=["All"],
                )
            except Exception as exc:
                self._reachable = False
                if self._stopping:
                    return []
                await self._retry_later("receive", self._explained(exc), backoff)
                continue
            self._reachable = True
            received_at = time.monotonic()
            batch = [
                ReceivedMessage(
                    message_id=raw["MessageId"],
                    receipt_handle=raw["ReceiptHandle"],
                    raw=raw,
                    expires_at=received_at + self.visibility_timeout,
                )
                for raw in response.get("Messages", [])
            ]
            self._settlement_or_fail().track(batch)
            return batch

    async def _queue_url(self) -> str:
        if self._resolved_queue_url is None:
            self._resolved_queue_url = await self._get_queue_url(self.queue_url, "queue_url")
            self._log["queue"] = self._resolved_queue_url
        return self._resolved_queue_url

    async def _get_queue_url(self, name: str, option: str) -> str:
        try:
            response = await self._client.get_queue_url(QueueName=name)
        except Exception as exc:
            raise self._explained(exc, option=option, name=name) from exc
        url: str = response["QueueUrl"]
        return url

    def _explained(self, exc: Exception, *, option: str = "queue_url", name: str = "") -> Exception:
        """The error itself, or one that says how to fix it when it is configuration."""
        botocore_exceptions = require_extra("sqs", "botocore.exceptions")
        if isinstance(exc, botocore_exceptions.NoCredentialsError):
            return ConfigurationError(
                f"trigger {self.trigger_id!r}: no AWS credentials for SQS; pass "
                "aws_access_key_id=/aws_secret_access_key= or configure the usual AWS chain "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, instance role)"
            )
        if isinstance(exc, botocore_exceptions.ClientError) and (
            exc.response.get("Error", {}).get("Code") in _MISSING_QUEUE_CODES
        ):
            where = self.endpoint_url or f"region {self.region or 'default'}"
            return ConfigurationError(
                f"trigger {self.trigger_id!r}: {option}={name or self.queue_url!r} names no SQS "
                f"queue at {where}; create the queue or fix the option ({exc})"
            )
        return exc

    async def _retry_later(self, what: str, exc: BaseException, backoff: Backoff) -> None:
        delay = backoff.next()
        logger.warning(
            "sqs %s failed: %s; retrying in %.1fs",
            what,
            exc,
            delay,
            extra={**self._log, "error": repr(exc)},
        )
        if self._ctx is not None:
            await self._ctx.report_error(exc)
        await backoff.sleep(delay)

    def _delivery(self, message: ReceivedMessage) -> Delivery:
        raw = message.raw
        payload = dict(raw)
        payload["Body"] = _parse_body(raw.get("Body", ""))
        attributes = raw.get("Attributes", {})
        meta = EventMeta(
            source=self.kind,
            trigger=self.trigger_id,
            message_id=message.message_id,
            topic=self._resolved_queue_url,
            headers=_headers(raw.get("MessageAttributes", {})),
            attempt=_int(attributes.get("ApproximateReceiveCount"), 1),
        )
        logger.debug(
            "sqs message received",
            extra={**self._log, "message_id": message.message_id, "attempt": meta.attempt},
        )
        return Delivery(
            payload=payload,
            meta=meta,
            identity=message.message_id,
            ack=partial(self._ack, message),
            nack=partial(self._nack, message),
            decoded=True,
            body=raw.get("Body", ""),  # an envelope: a typed trigger method gets the body
        )

    # -- settling --------------------------------------------------------------------------
    def _settlement_or_fail(self) -> SQSSettlement:
        if self._settlement is None:
            raise SagazError(
                f"sqs source of trigger {self.trigger_id!r} is not started: "
                "call `await source.start()` (or use `async with source:`) first"
            )
        return self._settlement

    async def _ack(self, message: ReceivedMessage) -> None:
        self._settle(message, "delete")

    async def _nack(self, message: ReceivedMessage, requeue: bool) -> None:
        self._settle(message, "release" if requeue else "delete")

    def _settle(self, message: ReceivedMessage, how: Settle) -> None:
        if self._settlement is not None:
            self._settlement.settle(message, how)
        elif not message.settled:
            message.settled = True
            logger.warning(
                "sqs %s of message %s after stop(): it comes back after its visibility "
                "timeout (the inbox dedups it)",
                how,
                message.message_id,
                extra={**self._log, "message_id": message.message_id},
            )

    async def _report(self, what: str, exc: Exception) -> None:
        logger.warning("sqs %s failed: %r", what, exc, extra={**self._log, "error": repr(exc)})
        if self._ctx is not None:
            await self._ctx.report_error(exc)

    # -- dead letters ----------------------------------------------------------------------
    async def publish_dead_letter(self, delivery: Delivery, record: DeadLetterRecord) -> None:
        """Send the original ``Body`` to the ``dead_letter_topic`` queue (a URL or a name),
        with ``x-sagaz-error``/``-reason``/``-attempts``/``-trigger`` message attributes."""
        if not self.dead_letter_topic:
            return
        self._settlement_or_fail()
        url = await self._dead_letter_queue_url()
        attributes: dict[str, dict[str, str]] = {
            "x-sagaz-error": _string(record.error[:MAX_ERROR_ATTRIBUTE] or "-"),
            "x-sagaz-reason": _string(record.reason or "-"),
            "x-sagaz-attempts": {"DataType": "Number", "StringValue": str(record.attempts)},
            "x-sagaz-trigger": _string(record.trigger_id or self.trigger_id or "-"),
            "x-sagaz-queue": _string(self._resolved_queue_url or self.queue_url),
        }
        if record.saga_id:
            attributes["x-sagaz-saga-id"] = _string(record.saga_id)
        for name, value in delivery.meta.headers.items():  # the original ones, while room
            if len(attributes) < MAX_MESSAGE_ATTRIBUTES and name not in attributes and value:
                attributes[name] = _string(value)
        params: dict[str, Any] = {
            "QueueUrl": url,
            "MessageBody": self._original_body(delivery),
            "MessageAttributes": attributes,
        }
        if url.endswith(".fifo"):
            params["MessageGroupId"] = record.trigger_id or self.trigger_id or "sagaz"
            params["MessageDeduplicationId"] = hashlib.sha256(
                f"{delivery.identity}:{record.attempts}".encode()
            ).hexdigest()
        await self._client.send_message(**params)
        logger.debug(
            "sqs dead letter published",
            extra={**self._log, "message_id": delivery.meta.message_id, "dead_letter_queue": url},
        )

    async def _dead_letter_queue_url(self) -> str:
        async with self._dead_letter_lock:
            if self._dead_letter_url is None:
                assert self.dead_letter_topic is not None
                topic = self.dead_letter_topic
                self._dead_letter_url = (
                    topic
                    if is_url(topic)
                    else await self._get_queue_url(topic, "dead_letter_topic")
                )
            return self._dead_letter_url

    def _original_body(self, delivery: Delivery) -> str:
        payload = delivery.payload
        if not isinstance(payload, dict):
            return payload if isinstance(payload, str) else json.dumps(payload, default=str)
        receipt_handle = str(payload.get("ReceiptHandle"))
        message = self._settlement.get(receipt_handle) if self._settlement else None
        if message is not None and isinstance(message.raw.get("Body"), str):
            return str(message.raw["Body"])
        body = payload.get("Body")
        return body if isinstance(body, str) else json.dumps(body, default=str)

    def describe(self) -> dict[str, Any]:
        """Kind, queue and receive settings (never credentials)."""
        return {
            "kind": self.kind,
            "queue_url": self._resolved_queue_url or self.queue_url,
            "visibility_timeout": self.visibility_timeout,
            "wait_time": self.wait_time,
            "max_messages": self.max_messages,
            "endpoint_url": self.endpoint_url,
            "dead_letter_topic": self.dead_letter_topic,
        }


def _parse_body(body: str) -> Any:
    """The body parsed as JSON when it is JSON, else the string itself."""
    try:
        return json.loads(body)
    except ValueError:
        return body


def _headers(attributes: Mapping[str, Any]) -> dict[str, str]:
    """String (and Number) message attributes; binary ones are left out."""
    return {
        name: str(value["StringValue"])
        for name, value in attributes.items()
        if isinstance(value, Mapping) and "StringValue" in value
    }


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def create(options: SQSOptions, ctx: SourceContext) -> SQSSource:
    """Build the source of one ``source="sqs"`` trigger (checks that aiobotocore is installed).

    ``endpoint_url`` and ``region`` default to ``TriggerConfig.sqs_endpoint_url`` and
    ``sqs_region``; ``max_messages`` to 10, or ``TriggerConfig.queue_size`` when that is
    smaller; the dead-letter queue is ``ctx.dead_letter_topic``.
    """
    require_extra("sqs")
    return SQSSource(options, ctx)
