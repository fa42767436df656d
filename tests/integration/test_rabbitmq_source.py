"""``source="rabbitmq"`` against the real local RabbitMQ (no engine: a recording ``emit``)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import aio_pika
import pytest

from sagaz.exceptions import MissingExtraError
from sagaz.records import DeadLetterRecord
from sagaz.sources import rabbitmq
from sagaz.sources.rabbitmq import RabbitMQSource
from sagaz.testing import eventually
from sagaz.triggers.options import RabbitMQOptions, parse_trigger_options
from tests.fixtures_rabbitmq import Rabbit, close_connections_named
from tests.recording_emit import RecordingEmit, consuming, source_context, stop_intake
from tests.services import unique_name


def make_source(
    rabbit: Rabbit, queue: str, dead_letter_topic: str | None = None, **options: Any
) -> RabbitMQSource:
    ctx = source_context(
        unique_name("saga") + ".on_event",
        rabbitmq_url=rabbit.url,
        dead_letter_topic=dead_letter_topic,
    )
    return rabbitmq.create(RabbitMQOptions(queue=queue, **options), ctx)


def bodies(count: int, prefix: str = "m") -> list[bytes]:
    return [json.dumps({"n": f"{prefix}{i}"}).encode() for i in range(count)]


async def expect_nothing_more(rabbit: Rabbit, queue: str, emit: RecordingEmit) -> None:
    """Publish a sentinel; requeued messages sit before it, so once it arrives anything
    still owed has arrived too. Asserts the sentinel is the only delivery."""
    before = len(emit.deliveries)
    await rabbit.publish(queue, [b"sentinel"])
    await emit.wait_for(before + 1)
    assert emit.payloads[before:] == [b"sentinel"]


async def test_raw_client_round_trip(rabbit: Rabbit) -> None:
    queue = rabbit.queue_name()
    await rabbit.declare(queue)
    await rabbit.publish(queue, [b"hello"], message_ids=["id-1"])

    declared = await rabbit.channel.declare_queue(queue, passive=True)
    message = await declared.get(timeout=5)
    assert message is not None
    assert (message.body, message.message_id) == (b"hello", "id-1")
    await message.ack()
    assert await rabbit.ready(queue) == 0


async def test_thousand_messages_acked_are_not_redelivered(rabbit: Rabbit) -> None:
    queue = rabbit.queue_name()
    await rabbit.declare(queue)
    sent = bodies(1000)
    await rabbit.publish(queue, sent)

    emit = RecordingEmit(auto_ack=True)
    source = make_source(rabbit, queue)
    assert source.prefetch == 1000  # min(queue_size, 1000) with the default queue_size
    async with consuming(source, emit):
        await emit.wait_for(1000)
    assert sorted(emit.payloads) == sorted(sent)
    assert len(set(emit.identities)) == 1000  # aio-pika publishers set a random message_id
    assert {d.meta.attempt for d in emit.deliveries} == {1}
    assert await rabbit.ready(queue) == 0

    again = RecordingEmit(auto_ack=True)
    async with consuming(make_source(rabbit, queue), again):
        await expect_nothing_more(rabbit, queue, again)


async def test_unacked_and_nacked_messages_come_back_after_restart(rabbit: Rabbit) -> None:
    queue = rabbit.queue_name()
    await rabbit.declare(queue)
    ids = [f"msg-{i}" for i in range(10)]
    await rabbit.publish(queue, bodies(10), message_ids=ids)

    emit = RecordingEmit()
    source = make_source(rabbit, queue)
    async with consuming(source, emit) as task:
        deliveries = await emit.wait_for(10)
        assert [d.identity for d in deliveries] == ids
        assert deliveries[0].meta.message_id == "msg-0"
        assert deliveries[0].meta.topic == queue
        for delivery in deliveries[:6]:
            await delivery.ack()
        # the engine's shutdown: stop intake, nack the interrupted, leave the rest un-acked
        await stop_intake(task)
        for delivery in deliveries[6:8]:
            await delivery.nack(True)
    await deliveries[9].ack()  # after stop: a no-op that must not raise

    again = RecordingEmit(auto_ack=True)
    async with consuming(make_source(rabbit, queue), again):
        redelivered = await again.wait_for(4)
        assert sorted(d.identity for d in redelivered) == ids[6:]
        assert {d.meta.attempt for d in redelivered} == {2}
        await expect_nothing_more(rabbit, queue, again)


async def test_block_backpressure_keeps_prefetch_full(rabbit: Rabbit) -> None:
    queue = rabbit.queue_name()
    await rabbit.declare(queue)
    await rabbit.publish(queue, bodies(20))
    gate = asyncio.Event()

    class BlockingEmit(RecordingEmit):
        async def __call__(self, delivery: Any) -> Any:
            result = await super().__call__(delivery)
            await gate.wait()  # the queue is full: the source waits here
            return result

    emit = BlockingEmit()
    source = make_source(rabbit, queue, prefetch=5)
    async with consuming(source, emit) as task:
        await emit.wait_for(1)
        await rabbit.wait_ready(queue, 15)  # the broker holds back everything beyond prefetch
        assert len(emit.deliveries) == 1
        await stop_intake(task)
        await rabbit.wait_ready(queue, 19)  # the 4 buffered, never emitted, go back at once

    again = RecordingEmit(auto_ack=True)
    async with consuming(make_source(rabbit, queue), again):
        await again.wait_for(20)
        assert sorted(again.payloads) == sorted(bodies(20))


async def test_exchange_binding_delivers_only_matching_keys(rabbit: Rabbit) -> None:
    queue, exchange_name = rabbit.queue_name(), rabbit.exchange_name()
    emit = RecordingEmit(auto_ack=True)
    source = make_source(rabbit, queue, exchange=exchange_name, routing_key="drift.*")
    await source.start()  # declares the queue, the exchange and the binding
    async with consuming(source, emit):
        exchange = await rabbit.channel.get_exchange(exchange_name)
        for key in ("drift.a", "other.b", "drift.c", "drift.end"):
            await exchange.publish(aio_pika.Message(key.encode()), routing_key=key)
        await emit.wait_for(3)
        await eventually(lambda: b"drift.end" in emit.payloads, what="the last matching key")
        assert emit.payloads == [b"drift.a", b"drift.c", b"drift.end"]
        assert emit.deliveries[0].meta.key == "drift.a"


async def test_dead_letter_lands_on_the_broker_with_headers(rabbit: Rabbit) -> None:
    queue, dead_letters = rabbit.queue_name(), rabbit.queue_name()
    rabbit.exchanges.append(dead_letters)
    await rabbit.declare(queue)
    await rabbit.publish(queue, [b'{"bad": true}'], message_ids=["poison-1"])

    emit = RecordingEmit()
    source = make_source(rabbit, queue, dead_letter_topic=dead_letters)
    async with consuming(source, emit):
        (delivery,) = await emit.wait_for(1)
        record = DeadLetterRecord(
            trigger_id=source.trigger_id,
            saga_name="test-saga",
            payload={"bad": True},
            error="ValueError: bad event",
            reason="invalid",
            attempts=3,
        )
        await source.publish_dead_letter(delivery, record)
        await delivery.ack()

    declared = await rabbit.channel.declare_queue(dead_letters, passive=True)
    message = await declared.get(timeout=5)
    assert message is not None
    await message.ack()
    assert message.body == b'{"bad": true}'
    assert message.message_id == "poison-1"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    headers = message.headers
    assert headers["x-sagaz-error"] == "ValueError: bad event"
    assert headers["x-sagaz-reason"] == "invalid"
    assert headers["x-sagaz-attempts"] == 3
    assert headers["x-sagaz-trigger"] == source.trigger_id
    assert await rabbit.ready(queue) == 0


async def test_reconnects_after_the_broker_drops_the_connection(rabbit: Rabbit) -> None:
    queue = rabbit.queue_name()
    await rabbit.declare(queue)
    first = bodies(50, "a")
    await rabbit.publish(queue, first)

    emit = RecordingEmit()
    errors: list[BaseException] = []
    ctx = source_context(unique_name("saga") + ".on_event", errors, rabbitmq_url=rabbit.url)
    # aio-pika's reconnect loop naps reconnect_interval (default 5 s) after each connect
    source = RabbitMQSource(RabbitMQOptions(queue=queue), ctx, reconnect_interval=0.2)
    async with consuming(source, emit):
        deliveries = await emit.wait_for(50)
        for delivery in deliveries[:40]:
            await delivery.ack()
        assert await close_connections_named(source.connection_name) == 1
        await eventually(lambda: len(errors) == 1, what="the connection loss to be reported")
        for delivery in deliveries[40:]:
            await delivery.ack()  # its channel is gone: a no-op, the broker redelivers it

        redelivered = await emit.wait_for(60)
        assert sorted(d.payload for d in redelivered[50:]) == sorted(first[40:])
        assert {d.meta.attempt for d in redelivered[50:]} == {2}
        second = bodies(50, "b")
        await rabbit.publish(queue, second)
        await emit.wait_for(110)
        for delivery in emit.deliveries[50:]:
            await delivery.ack()
        assert len(emit.deliveries) == 110
        assert set(emit.payloads) == set(first + second)

    again = RecordingEmit(auto_ack=True)
    async with consuming(make_source(rabbit, queue), again):
        await expect_nothing_more(rabbit, queue, again)


def test_identity_is_the_body_hash_without_a_message_id() -> None:
    # aio-pika/aiormq always set a message_id when publishing, so this needs a stand-in
    source = RabbitMQSource(RabbitMQOptions(queue="orders"), source_context("t.on_order"))
    message = SimpleNamespace(
        body=b'{"id": 1}',
        message_id=None,
        routing_key="orders",
        headers={"x-delivery-count": 2, "tenant": b"acme"},
        redelivered=True,
    )
    delivery = source._delivery(message)  # type: ignore[arg-type]
    assert delivery.identity == hashlib.sha256(b'{"id": 1}').hexdigest()
    assert delivery.meta.attempt == 3  # quorum queues count deliveries
    assert delivery.meta.headers == {"x-delivery-count": "2", "tenant": "acme"}
    assert (delivery.meta.source, delivery.meta.trigger) == ("rabbitmq", "t.on_order")


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aio_pika", None)
    with pytest.raises(MissingExtraError, match=r'pip install "sagaz\[rabbitmq\]"'):
        rabbitmq.create(RabbitMQOptions(queue="q"), source_context())


def test_importing_the_module_does_not_import_the_driver() -> None:
    code = "import sys, sagaz.sources.rabbitmq; assert 'aio_pika' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue": ""}, "queue='' must be a non-empty string"),
        ({"queue": "q", "routing_key": "a.*"}, "routing_key needs exchange"),
        ({"queue": "q", "exchange": "x", "exchange_type": "fan"}, "exchange_type='fan' must be"),
        ({"queue": "q", "exchange": "x", "routing_key": []}, "routing_key=\\[\\] must be"),
        ({"queue": "q", "prefetch": 0}, "prefetch=0 must be an integer in 1..65535"),
        ({"queue": "q", "url": "http://x"}, "amqp://"),
        ({"queue": "q", "durable": "yes"}, "durable='yes' must be True or False"),
    ],
)
def test_bad_options_are_explained(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_trigger_options("rabbitmq", options)


def test_create_takes_defaults_from_options_and_config() -> None:
    ctx = source_context(
        rabbitmq_url="amqp://u:p@broker:5672/", queue_size=10, dead_letter_topic="dlq"
    )
    source = rabbitmq.create(RabbitMQOptions(queue="q", exchange="x"), ctx)
    assert (source.url, source.prefetch, source.dead_letter_topic) == (
        "amqp://u:p@broker:5672/",
        10,
        "dlq",
    )
    assert (source.exchange_type, source.routing_keys, source.durable) == ("topic", ("#",), True)
