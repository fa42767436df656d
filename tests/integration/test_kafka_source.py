"""``KafkaSource`` against a real Kafka-protocol broker (Tansu), with a recording ``emit``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from sagaz.abc import SourceContext
from sagaz.clock import SystemClock
from sagaz.config import TriggerConfig
from sagaz.events import AdmissionOutcome, AdmissionResult, Delivery
from sagaz.exceptions import MissingExtraError
from sagaz.records import DeadLetterRecord
from sagaz.sources.kafka import source as kafka
from sagaz.sources.kafka.source import KafkaSource
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import continually, eventually
from sagaz.triggers.options import KafkaOptions
from tests.fixtures_kafka import TansuBroker
from tests.services import unique_name

# Tansu answers a group join after about session_timeout_ms / 2: keep the group timeouts small.
FAST = {"session_timeout_ms": 1500, "heartbeat_interval_ms": 300, "poll_timeout_ms": 100}
ACCEPTED = AdmissionResult(AdmissionOutcome.ACCEPTED)


class Recorder:
    """An ``emit`` that records deliveries (and can be held shut per partition)."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.gates: dict[int, asyncio.Event] = {}
        self.blocked: set[int] = set()

    async def __call__(self, delivery: Delivery) -> AdmissionResult:
        gate = self.gates.get(delivery.meta.partition or 0)
        if gate is not None and not gate.is_set():
            self.blocked.add(delivery.meta.offset or 0)
            await gate.wait()
        self.deliveries.append(delivery)
        return ACCEPTED

    def of(self, partition: int) -> list[Delivery]:
        return [d for d in self.deliveries if d.meta.partition == partition]


def make_ctx(
    bootstrap: str, trigger_id: str = "orders.on_order", **config: Any
) -> tuple[SourceContext, list[BaseException]]:
    errors: list[BaseException] = []

    async def report_error(exc: BaseException) -> None:
        errors.append(exc)

    trigger_config = TriggerConfig(kafka_bootstrap_servers=bootstrap, **config)
    ctx = SourceContext(
        trigger_id=trigger_id,
        saga_name="orders",
        config=trigger_config,
        store=MemorySagaStore(),
        clock=SystemClock(),
        worker_id="worker-1",
        report_error=report_error,
        dead_letter_topic=trigger_config.dead_letter_topic,  # as the engine resolves it
    )
    return ctx, errors


@asynccontextmanager
async def running(source: KafkaSource, emit: Recorder) -> AsyncIterator[KafkaSource]:
    """Run ``source`` in a task; stop it (and await the task) on exit."""
    task = asyncio.create_task(source.run(emit))
    try:
        yield source
    finally:
        await source.stop()
        await task


async def produce(bootstrap: str, topic: str, per_partition: int, partitions: int = 3) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                f"{p}-{i}".encode(),
                key=f"k{p}-{i}".encode(),
                partition=p,
                headers=[("trace", f"t{i}".encode()), ("empty", b"")],
            )
            for i in range(per_partition)
            for p in range(partitions)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str, topic: str, partitions: int = 3) -> list[Any]:
    """The group's committed offset per partition (``None``: nothing committed)."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await reader.start()
    try:
        return [await reader.committed(TopicPartition(topic, p)) for p in range(partitions)]
    finally:
        await reader.stop()


def source_for(ctx: SourceContext, topic: str, group: str, **options: Any) -> KafkaSource:
    fields = {"topic": topic, "group_id": group, **FAST, **options}
    return kafka.create(KafkaOptions.model_validate(fields), ctx)


async def test_delivers_every_message_with_meta_then_commits_them(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    per_partition = 200
    await produce(kafka_bootstrap, kafka_topic, per_partition)
    group = unique_name("group")
    ctx, errors = make_ctx(kafka_bootstrap)
    emit = Recorder()
    async with running(source_for(ctx, kafka_topic, group), emit) as source:
        await eventually(
            lambda: len(emit.deliveries) == 3 * per_partition, what="600 deliveries", within=15
        )
        for p in range(3):
            deliveries = emit.of(p)
            assert [d.meta.offset for d in deliveries] == list(range(per_partition))
            for i, d in enumerate(deliveries):
                assert d.payload == f"{p}-{i}".encode()
                assert d.identity == f"{kafka_topic}/{p}/{i}"
                assert d.meta.source == "kafka"
                assert d.meta.trigger == "orders.on_order"
                assert d.meta.message_id == f"{kafka_topic}:{p}:{i}"
                assert d.meta.topic == kafka_topic
                assert d.meta.key == f"k{p}-{i}"
                assert d.meta.headers == {"trace": f"t{i}", "empty": ""}
                assert d.meta.attempt == 1
        await asyncio.gather(*(d.ack() for d in emit.deliveries))
        await source.commit()
        assert source.describe()["assignments"] == 1
    assert await committed(kafka_bootstrap, group, kafka_topic) == [per_partition] * 3
    assert errors == []

    # a new member of the same group starts after the committed work: only new messages arrive
    await produce(kafka_bootstrap, kafka_topic, 1)
    again = Recorder()
    async with running(source_for(ctx, kafka_topic, group), again):
        await eventually(lambda: len(again.deliveries) >= 3, what="the 3 new messages", within=15)
        assert sorted(d.meta.offset for d in again.deliveries) == [per_partition] * 3


async def test_out_of_order_acks_never_commit_past_an_unacked_offset(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    await produce(kafka_bootstrap, kafka_topic, 10)
    group = unique_name("group")
    ctx, errors = make_ctx(kafka_bootstrap)
    emit = Recorder()

    async def settle(offsets: list[int], *, nack: bool = False) -> list[Any]:
        for d in emit.deliveries:
            if d.meta.offset in offsets:
                await (d.nack(True) if nack else d.ack())
        await source.commit()
        return await committed(kafka_bootstrap, group, kafka_topic)

    # a long commit interval: only the explicit commit() calls below commit anything
    source = source_for(ctx, kafka_topic, group, commit_interval_ms=600_000)
    async with running(source, emit):
        await eventually(lambda: len(emit.deliveries) == 30, what="30 deliveries", within=15)
        assert await settle([4, 3, 2]) == [None] * 3  # offset 0 is still running
        assert await settle([0]) == [1] * 3  # offset 1 is not done
        assert await settle([1]) == [5] * 3  # 0..4 done, contiguous
        assert await settle([8, 6]) == [5] * 3  # 5 and 7 still running
        assert await settle([5], nack=True) == [5] * 3  # nack(requeue) leaves it uncommitted
    # stop() committed nothing more: the un-acked offset 5 holds every partition back
    assert await committed(kafka_bootstrap, group, kafka_topic) == [5] * 3
    assert errors == []

    again = Recorder()
    async with running(source_for(ctx, kafka_topic, group), again):
        await eventually(lambda: len(again.deliveries) == 15, what="15 redeliveries", within=15)
        for p in range(3):
            # from the first un-acked offset on: 5, 7, 9 un-acked, 6 and 8 (acked) come along
            assert [d.meta.offset for d in again.of(p)] == [5, 6, 7, 8, 9]


async def test_blocked_emit_pauses_the_partition_but_polling_goes_on(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    max_poll_interval = 1.0
    await produce(kafka_bootstrap, kafka_topic, 40)
    group = unique_name("group")
    ctx, errors = make_ctx(kafka_bootstrap)
    emit = Recorder()
    emit.gates[0] = asyncio.Event()  # partition 0's emit blocks, as under backpressure "block"
    source = source_for(
        ctx,
        kafka_topic,
        group,
        session_timeout_ms=1000,
        heartbeat_interval_ms=200,
        max_poll_interval_ms=int(max_poll_interval * 1000),
        max_buffered_per_partition=4,
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        async with running(source, emit):
            await eventually(lambda: len(emit.of(1)) == 40 and len(emit.of(2)) == 40, within=15)
            assert emit.blocked == {0}
            assert (kafka_topic, 0) in source.describe()["paused"]
            # held back by the poll loop, not paused in aiokafka: its prefetch is kept
            assert source._consumer.paused() == set()
            # keep partition 1 busy for 3x max_poll_interval while partition 0 stays blocked:
            # every new message arriving proves the poll loop is still polling
            blocked_since, sent = time.monotonic(), 0
            while time.monotonic() - blocked_since < 3 * max_poll_interval:
                await producer.send_and_wait(kafka_topic, b"live", partition=1)
                sent += 1
                expected = 40 + sent
                await eventually(lambda n=expected: len(emit.of(1)) == n, within=5, what="live")
            assert emit.of(0) == []
            emit.gates[0].set()
            await eventually(
                lambda: len(emit.of(0)) == 40, what="partition 0 after unblocking", within=15
            )
            assert [d.meta.offset for d in emit.of(0)] == list(range(40))
            assert source.describe()["paused"] == []
            # never evicted: the first assignment is still the only one
            assert source.describe()["assignments"] == 1
    finally:
        await producer.stop()
    assert errors == []


async def test_every_partition_held_back_past_max_poll_interval_keeps_the_member(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    # every partition's emit blocks (a saturated pipeline): the poll loop has nothing to
    # poll, yet the member must not leave its group after max_poll_interval_ms
    max_poll_interval = 1.0
    await produce(kafka_bootstrap, kafka_topic, 20)
    ctx, errors = make_ctx(kafka_bootstrap)
    emit = Recorder()
    gate = asyncio.Event()
    emit.gates = dict.fromkeys(range(3), gate)
    source = source_for(
        ctx,
        kafka_topic,
        unique_name("group"),
        session_timeout_ms=1000,
        heartbeat_interval_ms=200,
        max_poll_interval_ms=int(max_poll_interval * 1000),
        max_buffered_per_partition=4,
    )
    async with running(source, emit):
        await eventually(lambda: len(source.describe()["paused"]) == 3, within=15)
        blocked_since = time.monotonic()
        await continually(
            lambda: emit.deliveries == [],
            during=3 * max_poll_interval,
            what="nothing emitted while every partition is blocked",
        )
        assert time.monotonic() - blocked_since >= 3 * max_poll_interval
        gate.set()
        await eventually(lambda: len(emit.deliveries) == 60, what="all after unblocking", within=15)
        for p in range(3):
            assert [d.meta.offset for d in emit.of(p)] == list(range(20))
        assert source.describe()["paused"] == []
        assert source.describe()["assignments"] == 1  # never evicted
    assert errors == []


async def test_dead_letter_carries_payload_and_headers(
    kafka_bootstrap: str, kafka_topic: str, make_kafka_topic: Callable[..., Awaitable[str]]
) -> None:
    dlq = await make_kafka_topic("dlq", partitions=1)
    await produce(kafka_bootstrap, kafka_topic, 1, partitions=1)
    ctx, errors = make_ctx(kafka_bootstrap, dead_letter_topic=dlq)
    emit = Recorder()
    async with running(source_for(ctx, kafka_topic, unique_name("group")), emit) as source:
        await eventually(lambda: len(emit.deliveries) == 1, within=15)
        delivery = emit.deliveries[0]
        record = DeadLetterRecord(
            trigger_id="orders.on_order",
            saga_name="orders",
            payload=delivery.payload,
            error="ValidationError: id is missing",
            reason="invalid",
            attempts=3,
        )
        await source.publish_dead_letter(delivery, record)

    reader = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await reader.start()
    try:
        reader.assign([TopicPartition(dlq, 0)])
        message = await asyncio.wait_for(reader.getone(), 10)
    finally:
        await reader.stop()
    assert message.value == b"0-0"
    assert message.key == b"k0-0"
    assert {k: v.decode() for k, v in message.headers} == {
        "x-sagaz-error": "ValidationError: id is missing",
        "x-sagaz-reason": "invalid",
        "x-sagaz-attempts": "3",
        "x-sagaz-trigger": "orders.on_order",
        "x-sagaz-source-topic": kafka_topic,
        "x-sagaz-source-partition": "0",
        "x-sagaz-source-offset": "0",
    }
    assert errors == []


async def test_acks_after_intake_stopped_are_committed_by_stop(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    """The engine's shutdown: cancel run() (intake), let sagas finish and ack, then stop()."""
    await produce(kafka_bootstrap, kafka_topic, 2)
    group = unique_name("group")
    ctx, errors = make_ctx(kafka_bootstrap)
    emit = Recorder()
    source = source_for(ctx, kafka_topic, group, commit_interval_ms=600_000)
    task = asyncio.create_task(source.run(emit))
    await eventually(lambda: len(emit.deliveries) == 6, what="6 deliveries", within=15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for d in emit.deliveries:
        if d.meta.offset == 0 or d.meta.partition == 2:
            await d.ack()
    await source.stop()
    await source.stop()  # idempotent
    assert await committed(kafka_bootstrap, group, kafka_topic) == [1, 1, 2]
    assert errors == []


async def test_broker_outage_is_reported_and_stop_stays_bounded(
    private_kafka: TansuBroker,
) -> None:
    bootstrap = private_kafka.bootstrap
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("orders", 1, 1)])
    finally:
        await admin.close()
    await produce(bootstrap, "orders", 1, partitions=1)
    ctx, errors = make_ctx(bootstrap)
    emit = Recorder()
    options = {"health_check_interval_ms": 200, "commit_timeout_ms": 1000}
    source = source_for(ctx, "orders", unique_name("group"), **options)
    async with running(source, emit):
        await eventually(lambda: len(emit.deliveries) == 1, within=15)
        private_kafka.kill()
        # nothing to commit: only the idle probe can notice (aiokafka just logs and retries)
        await eventually(lambda: len(errors) >= 1, what="the outage to be reported", within=15)
        assert isinstance(errors[0], KafkaError), errors
        await emit.deliveries[0].ack()  # due for commit, which the outage makes impossible
        stopping = time.monotonic()
    # stop() (in running's exit) gave up on the final commit after commit_timeout_ms
    assert time.monotonic() - stopping < 5
    assert any(isinstance(exc, TimeoutError) for exc in errors), errors


async def test_unreachable_broker_is_reported_and_retried() -> None:
    ctx, errors = make_ctx("127.0.0.1:1")  # nothing listens on port 1
    source = kafka.create(KafkaOptions(topic="orders", **FAST), ctx)
    async with running(source, Recorder()):
        await eventually(
            lambda: len(errors) >= 2, what="two reported connection failures", within=15
        )
    assert all(isinstance(exc, KafkaConnectionError) for exc in errors), errors


async def test_missing_aiokafka_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "aiokafka" or m.startswith("aiokafka.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "aiokafka", None)
    ctx, _ = make_ctx("127.0.0.1:9092")
    with pytest.raises(MissingExtraError, match=r'pip install "sagaz\[kafka\]"'):
        kafka.create(KafkaOptions(topic="orders"), ctx)
    source = KafkaSource(KafkaOptions(topic="orders"), ctx)
    with pytest.raises(MissingExtraError, match=r'pip install "sagaz\[kafka\]"'):
        await source.start()


def test_importing_the_module_does_not_import_aiokafka() -> None:
    code = "import sys, sagaz.sources.kafka.source; assert 'aiokafka' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_rebalance_commits_contiguous_work_and_ignores_late_acks(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    await produce(kafka_bootstrap, kafka_topic, 10)
    group = unique_name("group")
    ctx, errors = make_ctx(kafka_bootstrap)
    first, second = Recorder(), Recorder()
    # only the rebalance (and stop) commit: the interval is far away
    source_a = source_for(ctx, kafka_topic, group, commit_interval_ms=600_000)
    source_b = source_for(ctx, kafka_topic, group, commit_interval_ms=600_000)
    async with running(source_a, first):
        await eventually(lambda: len(first.deliveries) == 30, what="30 deliveries", within=15)
        before = list(first.deliveries)
        for d in before:
            if d.meta.offset in (0, 1, 2, 4):
                await d.ack()
        async with running(source_b, second):
            await eventually(
                lambda: (
                    source_a.assignments == 2
                    and len(source_a.describe()["assigned"]) + len(source_b.describe()["assigned"])
                    == 3
                    and bool(source_b.describe()["assigned"])
                ),
                within=15,
                what="the rebalance",
            )
            # the revoke committed what was contiguous-done (0..2), not past offset 3
            assert await committed(kafka_bootstrap, group, kafka_topic) == [3] * 3
            # late acks of deliveries made before the rebalance are ignored
            for d in before:
                if d.meta.offset == 3:
                    await d.ack()
            await source_a.commit()
            assert await committed(kafka_bootstrap, group, kafka_topic) == [3] * 3
            # each partition's new owner starts again from the committed offset
            await eventually(
                lambda: len(first.deliveries) - 30 + len(second.deliveries) == 21,
                within=15,
                what="21 redeliveries",
            )
            after = first.deliveries[30:] + second.deliveries
            for p in range(3):
                assert [d.meta.offset for d in after if d.meta.partition == p] == list(range(3, 10))
    assert errors == []
