"""``source="sqs"`` against moto's SQS server (no engine: a recording ``emit``)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import pytest

from sagaz.events import AdmissionOutcome, AdmissionResult, Delivery
from sagaz.exceptions import MissingExtraError
from sagaz.records import DeadLetterRecord
from sagaz.sources.sqs import source as sqs
from sagaz.sources.sqs.source import SQSSource
from sagaz.testing import continually, eventually
from sagaz.triggers.options import SQSOptions, parse_trigger_options
from tests.fixtures_sqs import (
    MakeQueue,
    queue_counts,
    send_messages,
    sqs_source_options,
    wait_for_counts,
)
from tests.recording_emit import RecordingEmit, consuming, source_context, stop_intake
from tests.services import unique_name


def make_source(
    endpoint: str,
    queue_url: str,
    errors: list[BaseException] | None = None,
    dead_letter_topic: str | None = None,
    **options: Any,
) -> SQSSource:
    """A source on ``queue_url``; ``options`` are ``SQSOptions`` fields or ``SQSSource``
    keyword arguments (``flush_interval``...)."""
    fields = {"queue_url": queue_url, "wait_time": 1, **sqs_source_options(endpoint)}
    fields |= {k: v for k, v in options.items() if k in SQSOptions.model_fields}
    tuning = {k: v for k, v in options.items() if k not in SQSOptions.model_fields}
    ctx = source_context(errors=errors, dead_letter_topic=dead_letter_topic)
    return SQSSource(SQSOptions.model_validate(fields), ctx, **tuning)


class GatedEmit(RecordingEmit):
    """Records deliveries but blocks in ``emit`` until ``gate`` is set (``block`` backpressure)."""

    def __init__(self) -> None:
        super().__init__(auto_ack=True)
        self.gate = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> AdmissionResult:
        self.deliveries.append(delivery)
        await self.gate.wait()
        await delivery.ack()
        return AdmissionResult(AdmissionOutcome.ACCEPTED, saga_id=delivery.identity)


class _AnyUser:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and other.startswith("u")


ANY_USER = _AnyUser()


async def test_500_messages_delivered_parsed_then_acked_and_deleted(
    sqs_endpoint: str, sqs_client: Any, sqs_queue_url: str
) -> None:
    # moto's ReceiveMessage costs O(messages in the queue) per message, so the 500 go in
    # waves of 50 (each acked, out of order, once delivered) to keep the test fast
    emit = RecordingEmit()
    errors: list[BaseException] = []
    source = make_source(sqs_endpoint, sqs_queue_url, errors)
    sent: dict[str, int] = {}
    async with consuming(source, emit):
        for wave in range(10):
            numbers = range(wave * 50, (wave + 1) * 50)
            bodies = [json.dumps({"id": i, "user": f"u{i % 7}"}) for i in numbers]
            ids = await send_messages(sqs_client, sqs_queue_url, bodies, kind="order")
            sent.update(zip(ids, numbers, strict=True))
            arrived = (await emit.wait_for(len(sent), within=30))[wave * 50 :]
            # the engine acks out of order, from other tasks
            await asyncio.gather(*(d.ack() for d in reversed(arrived)))
    assert errors == []
    assert sorted(emit.identities) == sorted(sent)  # each exactly once
    for delivery in emit.deliveries:
        event = delivery.payload
        assert delivery.decoded is True
        assert event["MessageId"] == delivery.identity
        assert event["Body"] == {"id": sent[delivery.identity], "user": ANY_USER}
        meta = delivery.meta
        assert meta.source == "sqs"
        assert meta.topic == sqs_queue_url
        assert meta.message_id == delivery.identity
        assert meta.headers == {"kind": "order"}
        assert meta.attempt == int(event["Attributes"]["ApproximateReceiveCount"]) == 1

    # stop() flushed the batched deletes: nothing is left, visible or in flight
    assert await queue_counts(sqs_client, sqs_queue_url) == (0, 0)
    sentinel = (await send_messages(sqs_client, sqs_queue_url, ['{"id": "sentinel"}']))[0]
    fresh = RecordingEmit(auto_ack=True)
    async with consuming(make_source(sqs_endpoint, sqs_queue_url), fresh):
        await fresh.wait_for(1)
        assert fresh.identities == [sentinel]


async def test_non_json_body_stays_a_string(
    sqs_endpoint: str, sqs_client: Any, sqs_queue_url: str
) -> None:
    bodies = ["hello world", "not {json", '{"id": 1}', "[1, 2]"]
    ids = await send_messages(sqs_client, sqs_queue_url, bodies)
    emit = RecordingEmit(auto_ack=True)
    async with consuming(make_source(sqs_endpoint, sqs_queue_url), emit):
        await emit.wait_for(4)
    assert {d.meta.attempt for d in emit.deliveries} == {1}
    bodies_by_id = {d.identity: d.payload["Body"] for d in emit.deliveries}
    assert [bodies_by_id[i] for i in ids] == ["hello world", "not {json", {"id": 1}, [1, 2]]


async def test_nacked_messages_come_back(
    sqs_endpoint: str, sqs_client: Any, sqs_queue_url: str
) -> None:
    ids = await send_messages(sqs_client, sqs_queue_url, [json.dumps({"id": i}) for i in range(5)])
    emit = RecordingEmit()
    async with consuming(make_source(sqs_endpoint, sqs_queue_url), emit):
        first = await emit.wait_for(5)
        await asyncio.gather(*(d.nack(True) for d in first))
        # visible again at once (visibility 0), long before the 30 s visibility timeout
        again = (await emit.wait_for(10))[5:]
        assert sorted(d.identity for d in again) == sorted(ids)
        assert {d.meta.attempt for d in again} == {2}
        await asyncio.gather(*(d.ack() for d in again))
    assert await queue_counts(sqs_client, sqs_queue_url) == (0, 0)


async def test_stop_hands_back_unsettled_messages(
    sqs_endpoint: str, sqs_client: Any, sqs_queue_url: str
) -> None:
    await send_messages(sqs_client, sqs_queue_url, [str(i) for i in range(3)])
    emit = RecordingEmit()
    async with consuming(make_source(sqs_endpoint, sqs_queue_url), emit):
        await emit.wait_for(3)
        assert await queue_counts(sqs_client, sqs_queue_url) == (0, 3)
    # neither acked nor nacked: visible again right after stop(), not after 30 s
    assert await queue_counts(sqs_client, sqs_queue_url) == (3, 0)
    await emit.deliveries[0].ack()  # late ack after stop(): logged, harmless


async def test_moto_honours_visibility_timeout(sqs_client: Any, sqs_queue_url: str) -> None:
    """Guard for the extension test: an un-extended message does come back after 2 s."""
    await send_messages(sqs_client, sqs_queue_url, ["x"])
    received_at = time.monotonic()
    first = await sqs_client.receive_message(
        QueueUrl=sqs_queue_url, VisibilityTimeout=2, WaitTimeSeconds=1
    )
    assert len(first["Messages"]) == 1
    hidden = await sqs_client.receive_message(QueueUrl=sqs_queue_url, WaitTimeSeconds=0)
    assert hidden.get("Messages", []) == []

    async def visible_again() -> bool:
        reply = await sqs_client.receive_message(QueueUrl=sqs_queue_url, WaitTimeSeconds=1)
        return bool(reply.get("Messages"))

    await eventually(visible_again, within=10, what="moto to make the message visible again")
    assert time.monotonic() - received_at >= 1.5


async def test_visibility_is_extended_while_unacked(
    sqs_endpoint: str, sqs_client: Any, sqs_queue_url: str
) -> None:
    (message_id,) = await send_messages(sqs_client, sqs_queue_url, ['{"id": 1}'])
    emit = RecordingEmit()
    errors: list[BaseException] = []
    source = make_source(sqs_endpoint, sqs_queue_url, errors, visibility_timeout=2)
    async with consuming(source, emit):
        (delivery,) = await emit.wait_for(1)

        async def not_redelivered() -> bool:
            stolen = await sqs_client.receive_message(
                QueueUrl=sqs_queue_url, WaitTimeSeconds=1, VisibilityTimeout=30
            )
            return stolen.get("Messages", []) == []

        # a second consumer long-polls for 5 s (2.5 visibility timeouts) and gets nothing
        await continually(not_redelivered, during=5, what="the un-acked message stays hidden")
        assert emit.identities == [message_id]  # not redelivered to ourselves either
        await delivery.ack()
    assert errors == []
    assert await queue_counts(sqs_client, sqs_queue_url) == (0, 0)


async def test_block_backpressure_stops_receiving(
    sqs_endpoint: str, sqs_client: Any, sqs_queue_url: str
) -> None:
    await send_messages(sqs_client, sqs_queue_url, [str(i) for i in range(30)])
    emit = GatedEmit()
    async with consuming(make_source(sqs_endpoint, sqs_queue_url, max_messages=5), emit):
        await emit.wait_for(1)

        async def stalled() -> bool:
            _visible, in_flight = await queue_counts(sqs_client, sqs_queue_url)
            return in_flight <= 5 and len(emit.deliveries) == 1

        # > 2 long polls of wait_time=1
        await continually(stalled, during=2.5, interval=0.1, what="no receiving while blocked")
        emit.gate.set()
        await emit.wait_for(30)
    assert await queue_counts(sqs_client, sqs_queue_url) == (0, 0)


@pytest.mark.parametrize("fifo", [False, True], ids=["standard-dlq", "fifo-dlq"])
async def test_dead_letter_lands_in_the_dead_letter_queue(
    sqs_endpoint: str,
    sqs_client: Any,
    sqs_queue_url: str,
    make_sqs_queue: MakeQueue,
    fifo: bool,
) -> None:
    if fifo:
        name = f"{unique_name('sagaz-dlq')}.fifo"
        dlq_url = (await sqs_client.create_queue(QueueName=name, Attributes={"FifoQueue": "true"}))[
            "QueueUrl"
        ]
    else:
        dlq_url = await make_sqs_queue("sagaz-dlq")
    dlq_name = dlq_url.rsplit("/", 1)[1]
    body = '{"id": 7,   "odd":  "spacing"}'
    await send_messages(sqs_client, sqs_queue_url, [body], tenant="acme")
    emit = RecordingEmit()
    source = make_source(sqs_endpoint, sqs_queue_url, dead_letter_topic=dlq_name)
    async with consuming(source, emit):
        (delivery,) = await emit.wait_for(1)
        record = DeadLetterRecord(
            trigger_id="test-saga.on_event",
            saga_name="test-saga",
            payload=delivery.payload,
            error="ValueError: order 7 is invalid",
            reason="invalid",
            attempts=3,
            saga_id="saga-7",
        )
        await source.publish_dead_letter(delivery, record)
        await delivery.ack()

    response = await sqs_client.receive_message(
        QueueUrl=dlq_url, WaitTimeSeconds=2, MessageAttributeNames=["All"]
    )
    if fifo:
        await sqs_client.delete_queue(QueueUrl=dlq_url)
    (dead,) = response["Messages"]
    assert dead["Body"] == body  # the original text, not a re-serialisation
    attributes = {k: v["StringValue"] for k, v in dead["MessageAttributes"].items()}
    assert attributes["x-sagaz-error"] == "ValueError: order 7 is invalid"
    assert attributes["x-sagaz-reason"] == "invalid"
    assert attributes["x-sagaz-attempts"] == "3"
    assert attributes["x-sagaz-trigger"] == "test-saga.on_event"
    assert attributes["x-sagaz-saga-id"] == "saga-7"
    assert attributes["tenant"] == "acme"
    assert await queue_counts(sqs_client, sqs_queue_url) == (0, 0)


async def test_cancelled_stop_still_flushes_the_deletes(
    sqs_endpoint: str, sqs_client: Any, sqs_queue_url: str
) -> None:
    await send_messages(sqs_client, sqs_queue_url, [str(i) for i in range(20)])
    emit = RecordingEmit()
    source = make_source(sqs_endpoint, sqs_queue_url, flush_interval=60.0)
    task = asyncio.create_task(source.run(emit))
    deliveries = await emit.wait_for(20)
    await stop_intake(task)
    for delivery in deliveries[:15]:
        await delivery.ack()  # 10 go out at once (a full batch), 5 wait for the next flush
    stopper = asyncio.create_task(source.stop())
    await asyncio.sleep(0)  # let stop() begin
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    # the flush ran to the end anyway: 15 deleted, 5 unsettled handed back
    assert await queue_counts(sqs_client, sqs_queue_url) == (5, 0)


async def test_missing_dead_letter_queue_says_how_to_fix(
    sqs_endpoint: str, sqs_client: Any, sqs_queue_url: str
) -> None:
    await send_messages(sqs_client, sqs_queue_url, ["x"])
    emit = RecordingEmit()
    missing = unique_name("no-such-dlq")
    source = make_source(sqs_endpoint, sqs_queue_url, dead_letter_topic=missing)
    async with consuming(source, emit):
        (delivery,) = await emit.wait_for(1)
        record = DeadLetterRecord("t.m", "t", "x", error="boom", reason="invalid")
        with pytest.raises(ValueError, match=f"dead_letter_topic='{missing}'.*create the queue"):
            await source.publish_dead_letter(delivery, record)
        await delivery.ack()


async def test_queue_name_is_resolved(
    sqs_endpoint: str, sqs_client: Any, sqs_queue_url: str
) -> None:
    (message_id,) = await send_messages(sqs_client, sqs_queue_url, ["x"])
    emit = RecordingEmit(auto_ack=True)
    source = make_source(sqs_endpoint, sqs_queue_url.rsplit("/", 1)[1])
    async with consuming(source, emit):
        (delivery,) = await emit.wait_for(1)
    assert delivery.identity == message_id
    assert delivery.meta.topic == sqs_queue_url
    assert await queue_counts(sqs_client, sqs_queue_url) == (0, 0)


async def test_endpoint_down_is_reported_and_retried(unused_tcp_port: int) -> None:
    errors: list[BaseException] = []
    endpoint = f"http://127.0.0.1:{unused_tcp_port}"
    queue_url = f"{endpoint}/123456789012/nowhere"
    source = make_source(endpoint, queue_url, errors)
    emit = RecordingEmit()
    async with consuming(source, emit) as task:
        await eventually(lambda: len(errors) >= 2, within=20, what="two reported errors")
        assert not task.done(), "the source gave up instead of retrying"
    assert emit.deliveries == []
    assert "127.0.0.1" in str(errors[0]) or "connect" in str(errors[0]).lower()


async def test_stop_is_idempotent_and_async_with_works(
    sqs_endpoint: str, sqs_queue_url: str
) -> None:
    async with make_source(sqs_endpoint, sqs_queue_url) as source:
        assert source.describe()["queue_url"] == sqs_queue_url
    await source.stop()
    await source.stop()


def test_missing_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("aiobotocore", "aiobotocore.session", "aiobotocore.config"):
        monkeypatch.setitem(sys.modules, module, None)
    ctx = source_context()
    with pytest.raises(MissingExtraError, match=r'pip install "sagaz\[sqs\]"'):
        sqs.create(SQSOptions(queue_url="https://sqs.example/1/q"), ctx)


async def test_missing_extra_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("aiobotocore", "aiobotocore.session", "aiobotocore.config"):
        monkeypatch.setitem(sys.modules, module, None)
    source = SQSSource(SQSOptions(queue_url="https://sqs.example/1/q"), source_context())
    with pytest.raises(MissingExtraError, match=r'pip install "sagaz\[sqs\]"'):
        await source.start()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, r"missing required option\(s\) \['queue_url'\]"),
        ({"queue_url": "q", "wait_time": 21}, "wait_time=21 must be an integer in 0..20"),
        ({"queue_url": "q", "max_messages": 11}, "max_messages=11 must be an integer in 1..10"),
        ({"queue_url": "q", "max_messages": 0}, "max_messages=0 must be an integer in 1..10"),
        ({"queue_url": "q", "visibility_timeout": 0}, "visibility_timeout=0 must be an integer"),
        ({"queue_url": "q", "visibility_timeout": True}, "visibility_timeout=True must be"),
        ({"queue_url": "q", "endpoint_url": "localhost:4566"}, "endpoint_url must be an http"),
        ({"queue_url": "q", "aws_access_key_id": "a"}, "go together"),
        ({"queue_url": "q", "region": ""}, "region='' must be a non-empty string"),
    ],
)
def test_bad_options_are_explained(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_trigger_options("sqs", options)


def test_create_takes_defaults_from_config() -> None:
    ctx = source_context(
        sqs_endpoint_url="http://127.0.0.1:4566", sqs_region="eu-west-1", dead_letter_topic="dlq"
    )
    source = sqs.create(SQSOptions(queue_url="orders"), ctx)
    assert (source.endpoint_url, source.region) == ("http://127.0.0.1:4566", "eu-west-1")
    assert source.dead_letter_topic == "dlq"
    assert (source.visibility_timeout, source.wait_time, source.max_messages) == (30, 20, 10)
    assert source.kind == "sqs"
    assert source.redeliverable is True
    small = sqs.create(SQSOptions(queue_url="orders"), source_context(queue_size=4))
    assert small.max_messages == 4  # never more un-emitted messages than the queue holds


async def test_engine_runs_one_saga_per_message_and_deletes_them(
    sqs_endpoint: str, sqs_client: Any, sqs_queue_url: str, make_sqs_queue: MakeQueue
) -> None:
    from sagaz import Saga, TriggerConfig, action, trigger
    from sagaz.engine.engine import TriggerEngine
    from sagaz.storage.memory import MemorySagaStore

    dlq_url = await make_sqs_queue("sagaz-dlq")
    seen: list[int] = []

    class SQSOrders(Saga):
        saga_name = unique_name("sqs-orders")

        @trigger(
            source="sqs",
            queue_url=sqs_queue_url,
            wait_time=1,
            dead_letter_topic=dlq_url,
            **sqs_source_options(sqs_endpoint),
        )
        def on_order(self, event):  # type: ignore[no-untyped-def]  # unannotated: the message
            if not isinstance(event["Body"], dict):
                raise ValueError(f"not an order: {event['Body']!r}")
            return {"id": event["Body"]["id"], "message_id": event["MessageId"]}

        @action("record")
        async def record(self, ctx: Any) -> None:
            seen.append(ctx["id"])

    await send_messages(sqs_client, sqs_queue_url, [json.dumps({"id": i}) for i in range(20)])
    await send_messages(sqs_client, sqs_queue_url, ["garbage"])
    async with TriggerEngine(TriggerConfig(), MemorySagaStore()):
        await eventually(lambda: len(seen) >= 20, within=20, what="20 sagas")
        await wait_for_counts(sqs_client, sqs_queue_url, (0, 0))
    assert sorted(seen) == list(range(20))
    response = await sqs_client.receive_message(
        QueueUrl=dlq_url, WaitTimeSeconds=2, MessageAttributeNames=["All"]
    )
    (dead,) = response["Messages"]
    assert dead["Body"] == "garbage"
    assert "not an order" in dead["MessageAttributes"]["x-sagaz-error"]["StringValue"]
