"""One adapter per broker for the source contract suite (``test_source_contract.py``).

An adapter publishes with the broker's raw client, builds the source the way the engine does
(``module.create(options, ctx)``), says what the broker still holds for the source (messages
neither acknowledged nor dropped), and reads back the dead letters. It owns uniquely named
topics/queues/streams and deletes them afterwards.

>>> async with open_backend("redis", "redis://127.0.0.1:6379/0") as backend:  # doctest: +SKIP
...     await backend.publish([b'{"i": 1}'])
...     source = backend.make_source()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from sagaz.abc import Source
from sagaz.engine.loading import load_source_module
from sagaz.events import Delivery
from sagaz.testing import eventually
from sagaz.triggers.options import parse_trigger_options
from tests.recording_emit import source_context
from tests.services import unique_name

__all__ = ["DRIVERS", "Backend", "Driver", "open_backend"]


@dataclass(frozen=True)
class Driver:
    """What a broker source needs installed, and options that build it without a broker."""

    module: str  # the sagaz source module
    imports: tuple[str, ...]  # driver modules that importing ``module`` must not import
    extra: str  # pip install "sagaz[<extra>]"
    offline_options: dict[str, Any]


DRIVERS: dict[str, Driver] = {
    "kafka": Driver("sagaz.sources.kafka", ("aiokafka",), "kafka", {"topic": "t"}),
    "rabbitmq": Driver(
        "sagaz.sources.rabbitmq", ("aio_pika", "aiormq"), "rabbitmq", {"queue": "q"}
    ),
    "redis": Driver("sagaz.sources.redis", ("redis",), "redis", {"stream": "s"}),
    "sqs": Driver("sagaz.sources.sqs", ("aiobotocore", "botocore"), "sqs", {"queue_url": "q"}),
}


class Backend(ABC):
    """A broker as the contract tests see it."""

    kind: ClassVar[str]

    def __init__(self) -> None:
        self.trigger_id = unique_name("contract") + ".on_event"
        self.dead_letter_topic = ""
        self.errors: list[BaseException] = []  # what sources report (``ctx.report_error``)

    @abstractmethod
    async def publish(self, bodies: Sequence[bytes]) -> None:
        """Publish one message per body with the broker's own client."""

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """The ``@trigger`` options of the source under test (the same across restarts)."""

    def config(self) -> dict[str, Any]:
        """``TriggerConfig`` fields (broker address)."""
        return {}

    def make_source(self, **options: Any) -> Source:
        """A new source on the same queue/topic/stream, built as the engine builds it: from
        the validated ``@trigger`` options, with the dead-letter topic in the context."""
        pipeline, source_options = parse_trigger_options(self.kind, {**self.options(), **options})
        ctx = source_context(self.trigger_id, self.errors, **self.config())
        ctx.dead_letter_topic = pipeline.dead_letter_topic or ctx.config.dead_letter_topic
        return load_source_module(self.kind).create(source_options, ctx)

    @abstractmethod
    async def outstanding(self) -> int:
        """Messages the broker still holds for this source (neither acked nor dropped)."""

    @abstractmethod
    async def dead_letters(self) -> list[bytes]:
        """Bodies that landed on the dead-letter topic/queue/stream, in order."""

    def event(self, delivery: Delivery) -> Any:
        """The JSON the publisher sent, from a delivery."""
        return json.loads(delivery.payload)

    @abstractmethod
    async def close(self) -> None:
        """Delete what this adapter created and close its clients."""


class KafkaBackend(Backend):
    """One single-partition topic (arrival order = offset order) and a dead-letter topic."""

    kind = "kafka"
    # Tansu answers a group join after about session_timeout_ms / 2: keep it small
    FAST: ClassVar[dict[str, int]] = {
        "session_timeout_ms": 1500,
        "heartbeat_interval_ms": 300,
        "poll_timeout_ms": 100,
        "commit_interval_ms": 200,
    }

    def __init__(self, bootstrap: str) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.topic = unique_name("contract")
        self.dead_letter_topic = unique_name("contract-dlq")
        self.group = unique_name("contract-group")
        self.producer: Any = None
        self.published = 0

    async def open(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            topics = [NewTopic(name, 1, 1) for name in (self.topic, self.dead_letter_topic)]
            response = await admin.create_topics(topics)
            assert all(error[1] == 0 for error in response.topic_errors), response
        finally:
            await admin.close()
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await self.producer.start()

    async def publish(self, bodies: Sequence[bytes]) -> None:
        futures = [await self.producer.send(self.topic, body, partition=0) for body in bodies]
        await asyncio.gather(*futures)
        self.published += len(bodies)

    def options(self) -> dict[str, Any]:
        return {"topic": self.topic, "group_id": self.group, **self.FAST}

    def config(self) -> dict[str, Any]:
        return {"kafka_bootstrap_servers": self.bootstrap}

    async def outstanding(self) -> int:
        # the end offset is what this adapter published: Tansu's ListOffsets answers the
        # number of record batches, not of records
        from aiokafka import AIOKafkaConsumer, TopicPartition

        tp = TopicPartition(self.topic, 0)
        reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group)
        await reader.start()
        try:
            committed = await reader.committed(tp) or 0
        finally:
            await reader.stop()
        return self.published - int(committed)

    async def dead_letters(self) -> list[bytes]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        tp = TopicPartition(self.dead_letter_topic, 0)
        reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await reader.start()
        try:
            reader.assign([tp])
            await reader.seek_to_beginning(tp)
            # Tansu's end offset counts record batches (at most the records): read past it
            # until a fetch comes back empty
            end = (await reader.end_offsets([tp]))[tp]
            bodies: list[bytes] = []

            async def read_to_the_end() -> bool:
                records = (await reader.getmany(tp, timeout_ms=200)).get(tp, [])
                bodies.extend(record.value for record in records)
                return not records and await reader.position(tp) >= end

            await eventually(read_to_the_end, within=10, interval=0, what="the dead letters")
            return bodies
        finally:
            await reader.stop()

    async def close(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        if self.producer is not None:
            await self.producer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            with contextlib.suppress(Exception):
                await admin.delete_topics([self.topic, self.dead_letter_topic])
        finally:
            await admin.close()


class RabbitMQBackend(Backend):
    """One durable queue (declared up front, as the source declares it) and a DLQ."""

    kind = "rabbitmq"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.queue = unique_name("contract")
        self.dead_letter_topic = unique_name("contract-dlq")
        self.connection: Any = None
        self.channel: Any = None

    async def open(self) -> None:
        import aio_pika

        self.connection = await aio_pika.connect(self.url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        await self.channel.declare_queue(self.queue, durable=True)

    async def publish(self, bodies: Sequence[bytes]) -> None:
        import aio_pika

        exchange = self.channel.default_exchange
        for body in bodies:  # one by one: arrival order = publish order
            await exchange.publish(aio_pika.Message(body), routing_key=self.queue)

    def options(self) -> dict[str, Any]:
        return {"queue": self.queue}

    def config(self) -> dict[str, Any]:
        return {"rabbitmq_url": self.url}

    async def outstanding(self) -> int:
        # ready messages; un-acked ones are counted once their consumer's connection closed
        declared = await self.channel.declare_queue(self.queue, passive=True)
        return int(declared.declaration_result.message_count)

    async def dead_letters(self) -> list[bytes]:
        queue = await self.channel.declare_queue(self.dead_letter_topic, passive=True)
        bodies = []
        while (message := await queue.get(fail=False, timeout=5)) is not None:
            await message.ack()
            bodies.append(message.body)
        return bodies

    async def close(self) -> None:
        if self.connection is None:
            return
        cleanup = await self.connection.channel()
        for name in (self.queue, self.dead_letter_topic):
            await cleanup.queue_delete(name)
        await cleanup.exchange_delete(self.dead_letter_topic)
        await self.connection.close()


class RedisBackend(Backend):
    """One stream read by one named consumer of a group (a restart keeps the name)."""

    kind = "redis"
    GROUP = "contract"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.stream = unique_name("contract")
        self.dead_letter_topic = unique_name("contract-dlq")
        self.client: Any = None

    async def open(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(self.url)

    async def publish(self, bodies: Sequence[bytes]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for body in bodies:
            pipe.xadd(self.stream, {"data": body})
        await pipe.execute()

    def options(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "consumer_group": self.GROUP,
            "consumer": "contract-consumer",
            "start_id": "0",
            "block_ms": 200,
        }

    def config(self) -> dict[str, Any]:
        return {"redis_url": self.url}

    async def outstanding(self) -> int:
        # pending (delivered, not acked) plus lag (not delivered yet)
        groups = await self.client.xinfo_groups(self.stream)
        (group,) = [g for g in groups if g["name"] == self.GROUP.encode()]
        return int(group["pending"]) + int(group["lag"])

    async def dead_letters(self) -> list[bytes]:
        return [
            fields[b"payload"] for _, fields in await self.client.xrange(self.dead_letter_topic)
        ]

    async def close(self) -> None:
        if self.client is not None:
            await self.client.delete(self.stream, self.dead_letter_topic)
            await self.client.aclose()


class SQSBackend(Backend):
    """One standard queue and a dead-letter queue on the test endpoint (moto)."""

    kind = "sqs"

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.stack = contextlib.AsyncExitStack()
        self.client: Any = None
        self.queue_url = ""
        self.dead_letter_url = ""

    async def open(self) -> None:
        from aiobotocore.session import get_session

        from tests.fixtures_sqs import sqs_client_options

        self.client = await self.stack.enter_async_context(
            get_session().create_client("sqs", **sqs_client_options(self.endpoint))
        )
        self.queue_url = await self._create(unique_name("contract"))
        self.dead_letter_topic = unique_name("contract-dlq")
        self.dead_letter_url = await self._create(self.dead_letter_topic)

    async def _create(self, name: str) -> str:
        response = await self.client.create_queue(QueueName=name)
        url: str = response["QueueUrl"]
        return url

    async def publish(self, bodies: Sequence[bytes]) -> None:
        for start in range(0, len(bodies), 10):
            entries = [
                {"Id": str(i), "MessageBody": body.decode()}
                for i, body in enumerate(bodies[start : start + 10])
            ]
            response = await self.client.send_message_batch(
                QueueUrl=self.queue_url, Entries=entries
            )
            assert not response.get("Failed"), response

    def options(self) -> dict[str, Any]:
        from tests.fixtures_sqs import sqs_source_options

        return {"queue_url": self.queue_url, "wait_time": 1, **sqs_source_options(self.endpoint)}

    def event(self, delivery: Delivery) -> Any:
        return delivery.payload["Body"]  # the message dict, ``Body`` parsed as JSON

    async def outstanding(self) -> int:
        response = await self.client.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
        attributes = response["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    async def dead_letters(self) -> list[bytes]:
        response = await self.client.receive_message(
            QueueUrl=self.dead_letter_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        return [message["Body"].encode() for message in response.get("Messages", [])]

    async def close(self) -> None:
        try:
            for url in (self.queue_url, self.dead_letter_url):
                if url:
                    with contextlib.suppress(Exception):
                        await self.client.delete_queue(QueueUrl=url)
        finally:
            await self.stack.aclose()


BACKENDS: dict[str, type[KafkaBackend | RabbitMQBackend | RedisBackend | SQSBackend]] = {
    "kafka": KafkaBackend,
    "rabbitmq": RabbitMQBackend,
    "redis": RedisBackend,
    "sqs": SQSBackend,
}


@contextlib.asynccontextmanager
async def open_backend(kind: str, address: str) -> AsyncIterator[Backend]:
    """The adapter of ``kind`` on the service at ``address`` (bootstrap, URL or endpoint)."""
    backend = BACKENDS[kind](address)
    try:
        await backend.open()
        yield backend
    finally:
        await backend.close()
