"""The Kafka acceptance criteria end to end: ``@trigger(source="kafka")`` sagas run by the
engine (``sagaz.start_triggers()`` / ``TriggerEngine``) against the real Tansu broker.

Each test reads what a user would look at: completed sagas and dead letters in the store, the
group's committed offsets and the topic's end offsets on the broker, the dead-letter topic, and
the engine's metrics.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import BaseModel

import sagaz
import sagaz.triggers
from sagaz import Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz.abc import SagaStore
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.run_errors import RunErrors
from sagaz.engine.store_errors import StoreErrors
from sagaz.exceptions import MissingExtraError
from sagaz.records import DeadLetterRecord
from sagaz.sources.kafka.source import KafkaSource
from sagaz.storage.memory import MemorySagaStore
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.testing import continually, eventually
from tests.engine_support import RecordingListener, RefusesOneEvent
from tests.fixtures_kafka import MakeTopic
from tests.services import unique_name

# Tansu answers a group join after about session_timeout_ms / 2, and a restart in the same
# group waits for the old member's session to expire: keep the group timeouts small.
FAST: dict[str, Any] = {
    "session_timeout_ms": 1500,
    "heartbeat_interval_ms": 300,
    "poll_timeout_ms": 100,
    "commit_interval_ms": 200,
}


class Order(BaseModel):
    """The event of the poison-message test (module level, so annotations resolve)."""

    id: int
    amount: float


# -- broker helpers ------------------------------------------------------------------------
async def produce(bootstrap: str, topic: str, messages: Iterable[tuple[int, bytes]]) -> None:
    """Send ``(partition, value)`` messages with the raw aiokafka producer, in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, partition=p) for p, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def event(n: int) -> bytes:
    return json.dumps({"n": n}).encode()


class GroupOffsets:
    """Reads a group's committed offsets (``committed()``: OffsetFetch, no group join) and a
    topic's end offsets."""

    def __init__(self, consumer: AIOKafkaConsumer, bootstrap: str, topic: str, n: int) -> None:
        self.consumer = consumer
        self.bootstrap = bootstrap
        self.tps = [TopicPartition(topic, p) for p in range(n)]

    async def committed(self) -> list[int | None]:
        return [await self.consumer.committed(tp) for tp in self.tps]

    async def end(self) -> list[int]:
        """The high watermark of each partition, as a fetch reports it.

        Not ``end_offsets()``: Tansu answers ListOffsets(latest) with the base offset of the
        partition's last record batch + 1, not its end. A fetch from that batch on reports the
        true high watermark.
        """
        reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await reader.start()
        try:
            near_end = await reader.end_offsets(self.tps)
            reader.assign(self.tps)
            for tp in self.tps:
                reader.seek(tp, max(near_end[tp] - 1, 0))

            async def fetched() -> bool:
                await reader.getmany(timeout_ms=50)
                return all(reader.highwater(tp) is not None for tp in self.tps)

            await eventually(fetched, what="a fetch answer from every partition")
            return [reader.highwater(tp) for tp in self.tps]
        finally:
            await reader.stop()

    async def lag(self) -> int:
        """Messages on the broker that the group has not committed yet."""
        committed = await self.committed()
        return sum(e - (c or 0) for e, c in zip(await self.end(), committed, strict=True))


@asynccontextmanager
async def group_offsets(
    bootstrap: str, group: str, topic: str, partitions: int
) -> AsyncIterator[GroupOffsets]:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await reader.start()
    try:
        yield GroupOffsets(reader, bootstrap, topic, partitions)
    finally:
        await reader.stop()


async def completed_sagas(store: SagaStore) -> list[Any]:
    return await store.list_sagas(status=SagaStatus.COMPLETED, limit=1_000_000)


def kafka_source(engine: TriggerEngine, trigger_id: str) -> KafkaSource:
    source = engine.sources[trigger_id]
    assert isinstance(source, KafkaSource)
    return source


# -- 1. bulk: exactly once, and a clean restart redelivers nothing -------------------------
async def test_five_thousand_messages_complete_once_and_a_restart_redelivers_nothing(
    kafka_bootstrap: str, make_kafka_topic: MakeTopic
) -> None:
    total, partitions = 5_000, 3
    topic = await make_kafka_topic("bulk", partitions=partitions)
    group = unique_name("bulk")
    ran: Counter[int] = Counter()
    first_step_at: list[float] = []

    class BulkSaga(Saga):
        saga_name = "bulk"

        @trigger(
            source="kafka",
            topic=topic,
            group_id=group,
            bootstrap_servers=kafka_bootstrap,
            **FAST,
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("count")
        async def count(self, ctx: SagaContext) -> None:
            if not first_step_at:
                first_step_at.append(time.monotonic())
            ran[ctx["n"]] += 1

    await produce(kafka_bootstrap, topic, ((n % partitions, event(n)) for n in range(total)))
    config = TriggerConfig(queue_size=1_000, max_concurrent_sagas=100)
    # the store outlives both engines (a clean restart in-process); SQLite would make this
    # test fsync-bound (about 200 sagas/s here), see test_out_of_order_* for the durable path
    async with (
        MemorySagaStore() as store,
        group_offsets(kafka_bootstrap, group, topic, partitions) as offsets,
    ):
        started = time.monotonic()
        try:
            await sagaz.start_triggers(config, store)
            await eventually(
                lambda: sum(ran.values()) >= total, within=60, what=f"{total} step runs"
            )
            finished = time.monotonic()
        finally:
            await sagaz.stop_triggers()
        end_to_end, after_first = finished - started, finished - first_step_at[0]
        print(
            f"\nkafka -> engine -> MemorySagaStore: {total} sagas in {end_to_end:.2f}s end to end "
            f"({total / end_to_end:.0f}/s, group join included); "
            f"{total / after_first:.0f}/s from the first saga on"
        )
        assert sorted(ran) == list(range(total))
        assert set(ran.values()) == {1}
        done = await completed_sagas(store)
        assert len(done) == total
        assert sorted(s.context["n"] for s in done) == list(range(total))
        # the clean stop committed everything
        assert await offsets.committed() == await offsets.end() == [1667, 1667, 1666]

        # a new engine in the same group, on the same store: only new messages arrive
        try:
            engine = await sagaz.start_triggers(config, store)
            await produce(kafka_bootstrap, topic, ((p, event(total + p)) for p in range(3)))
            await eventually(
                lambda: sum(ran.values()) >= total + 3, within=20, what="the 3 new messages"
            )
            assert sum(engine.metrics.received.values()) == 3  # nothing old was redelivered
            assert engine.metrics.reasons["duplicate"] == 0
        finally:
            await sagaz.stop_triggers()
        assert set(ran.values()) == {1}
        assert len(ran) == total + 3
        assert len(await completed_sagas(store)) == total + 3
        assert await offsets.committed() == await offsets.end() == [1668, 1668, 1667]


# -- 2. out-of-order completion, stop mid-way, restart --------------------------------------
async def test_out_of_order_completion_never_commits_past_unfinished_work_across_a_restart(
    kafka_bootstrap: str, make_kafka_topic: MakeTopic, tmp_path: Path
) -> None:
    # message n goes to partition n % 3 at offset n // 3; odd n are slow (wait for `release`)
    total, partitions = 30, 3
    topic = await make_kafka_topic("ooo", partitions=partitions)
    group = unique_name("ooo")
    release = asyncio.Event()
    entered: Counter[int] = Counter()
    finished: Counter[int] = Counter()

    class OutOfOrderSaga(Saga):
        saga_name = "out-of-order"

        @trigger(
            source="kafka",
            topic=topic,
            group_id=group,
            bootstrap_servers=kafka_bootstrap,
            **FAST,
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            entered[ctx["n"]] += 1
            if ctx["n"] % 2:
                await release.wait()
            finished[ctx["n"]] += 1

    odd = [n for n in range(total) if n % 2]
    even = [n for n in range(total) if not n % 2]

    def first_unfinished(p: int) -> int:
        return min(n // partitions for n in odd if n % partitions == p)

    # partition 0 holds 0, 3, 6...: offset 1 (n=3) is the first slow one; partition 1 starts
    # with n=1, so nothing of it may ever be committed; partition 2: offset 1 (n=5)
    bounds = [first_unfinished(p) for p in range(partitions)]
    assert bounds == [1, 0, 1]
    expected_commits = [b or None for b in bounds]

    await produce(kafka_bootstrap, topic, ((n % partitions, event(n)) for n in range(total)))
    config = TriggerConfig(shutdown_timeout=0.3)
    async with (
        SQLiteSagaStore(tmp_path / "sagaz.db") as store,
        group_offsets(kafka_bootstrap, group, topic, partitions) as offsets,
    ):
        engine = TriggerEngine(config, store)
        await engine.start()
        try:
            await eventually(
                lambda: sorted(finished) == even and sorted(entered) == list(range(total)),
                within=20,
                what="every even saga done and every odd one stuck",
            )

            async def committed_within_bounds() -> bool:
                committed = await offsets.committed()
                assert all((c or 0) <= b for c, b in zip(committed, bounds, strict=True)), (
                    f"committed {committed} passed the first unfinished offsets {bounds}"
                )
                return committed == expected_commits

            # the completed prefix gets committed, and never more than that: also not over
            # the next commit intervals (commit_interval_ms=200) while the odd ones are stuck
            await eventually(committed_within_bounds, what=f"commits up to {bounds}")
            await continually(committed_within_bounds, during=1.0, what=f"commits stay at {bounds}")
        finally:
            stopping = time.monotonic()
            await engine.stop()  # cancels the stuck sagas after shutdown_timeout
        assert time.monotonic() - stopping < 5
        assert await offsets.committed() == expected_commits  # cancellation never acks
        assert len(await completed_sagas(store)) == len(even)
        assert sum(entered.values()) == total

        # restart on the same store and group: the unfinished work comes back and resumes
        engine = TriggerEngine(config, store)
        await engine.start()
        try:
            await eventually(
                lambda: all(entered[n] == 2 for n in odd), within=20, what="odd sagas resumed"
            )
            release.set()
            await eventually(lambda: sorted(finished) == list(range(total)), what="all done")
            await eventually(lambda: engine.metrics.in_flight == 0, what="the last settlements")
            redelivered = [n for n in range(total) if n // partitions >= bounds[n % partitions]]
            metrics = engine.metrics
            assert sum(metrics.received.values()) == len(redelivered)
            # finished ones that came back with the unfinished ones: deduplicated by the inbox
            assert metrics.reasons["duplicate"] == len([n for n in redelivered if n in even])
        finally:
            await engine.stop()
        assert all(entered[n] == 1 for n in even)  # finished work never ran again
        assert all(finished[n] == 1 for n in range(total))
        done = await completed_sagas(store)
        assert sorted(s.context["n"] for s in done) == list(range(total))  # one saga each
        assert await offsets.committed() == await offsets.end() == [10, 10, 10]


# -- 3. poison messages: dead-lettered in the store and on the broker, the rest flows --------
async def test_poison_messages_are_dead_lettered_and_the_next_ones_keep_flowing(
    kafka_bootstrap: str, make_kafka_topic: MakeTopic, tmp_path: Path
) -> None:
    topic = await make_kafka_topic("orders", partitions=1)
    dlq = await make_kafka_topic("orders-dlq", partitions=1)
    group = unique_name("orders")
    completed: list[int] = []

    class OrderSaga(Saga):
        saga_name = "poison-orders"

        @trigger(
            source="kafka",
            topic=topic,
            group_id=group,
            bootstrap_servers=kafka_bootstrap,
            dead_letter_topic=dlq,
            **FAST,
        )
        def on_order(self, event: Order) -> dict[str, Any]:
            return {"id": event.id, "amount": event.amount}

        @action("book")
        async def book(self, ctx: SagaContext) -> None:
            completed.append(ctx["id"])

    def order(n: int) -> bytes:
        return json.dumps({"id": n, "amount": 9.5}).encode()

    not_json, wrong_schema = b'{"id": 4, "amount":', b'{"id": "four", "amount": 1}'
    payloads = [order(1), order(2), order(3), not_json, wrong_schema, order(5), order(6)]
    await produce(kafka_bootstrap, topic, ((0, value) for value in payloads))
    async with (
        SQLiteSagaStore(tmp_path / "sagaz.db") as store,
        group_offsets(kafka_bootstrap, group, topic, 1) as offsets,
    ):
        try:
            engine = await sagaz.start_triggers(TriggerConfig(), store)
            await eventually(lambda: sorted(completed) == [1, 2, 3, 5, 6], what="valid orders")
            await eventually(
                lambda: engine.metrics.reasons["invalid"] == 2, what="two invalid events"
            )

            # poison and all: the group moves past every message
            async def all_committed() -> bool:
                return await offsets.committed() == [len(payloads)]

            await eventually(all_committed, what="the commit past the last message")
        finally:
            await sagaz.stop_triggers()
        assert len(await completed_sagas(store)) == 5
        dead = sorted(await store.list_dead_letters(), key=lambda d: d.meta["offset"])
    assert [(d.reason, d.meta["offset"], d.payload) for d in dead] == [
        ("invalid", 3, not_json),
        ("invalid", 4, wrong_schema),
    ]
    assert all(d.trigger_id == "poison-orders.on_order" and d.source == "kafka" for d in dead)
    assert "Invalid JSON" in dead[0].error, dead[0].error
    assert "does not match Order" in dead[1].error and "id" in dead[1].error, dead[1].error

    # ...and on the broker: the original bytes with x-sagaz-* headers
    reader = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await reader.start()
    try:
        reader.assign([TopicPartition(dlq, 0)])
        messages = [await asyncio.wait_for(reader.getone(), 10) for _ in range(2)]
    finally:
        await reader.stop()
    assert [m.value for m in messages] == [not_json, wrong_schema]
    for message, record, offset in zip(messages, dead, (3, 4), strict=True):
        headers = {k: v.decode() for k, v in message.headers}
        assert headers == {
            "x-sagaz-error": record.error,
            "x-sagaz-reason": "invalid",
            "x-sagaz-attempts": "0",
            "x-sagaz-trigger": "poison-orders.on_order",
            "x-sagaz-source-topic": topic,
            "x-sagaz-source-partition": "0",
            "x-sagaz-source-offset": str(offset),
        }


# -- 4. backpressure "block": nothing lost, lag drains, the member is never evicted ---------
# Time is scaled 1:15 here: max_poll_interval_ms=1000 and session_timeout_ms=1000 stand for
# 15 s each, so the 4 s stall below is a 60 s stall at four times both limits. A consumer that
# stopped polling while blocked would be out of its group after 1 s (aiokafka leaves the group
# once no poll came for max_poll_interval_ms, then rejoins: a second assignment).
STALL_SECONDS = 4.0
BLOCK_OPTIONS: dict[str, Any] = {
    **FAST,
    "session_timeout_ms": 1000,
    "heartbeat_interval_ms": 200,
    "max_poll_interval_ms": 1000,
    "max_buffered_per_partition": 5,  # pause the partition early instead of buffering 1,000
}


async def test_block_backpressure_stalls_without_losing_messages_or_the_group(
    kafka_bootstrap: str, make_kafka_topic: MakeTopic
) -> None:
    topic = await make_kafka_topic("stall", partitions=1)
    group = unique_name("stall")
    gate = asyncio.Event()
    entered: Counter[int] = Counter()
    finished: Counter[int] = Counter()

    class StalledSaga(Saga):
        saga_name = "stalled"

        @trigger(
            source="kafka",
            topic=topic,
            group_id=group,
            bootstrap_servers=kafka_bootstrap,
            **BLOCK_OPTIONS,
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("slow")
        async def slow(self, ctx: SagaContext) -> None:
            entered[ctx["n"]] += 1
            await gate.wait()
            finished[ctx["n"]] += 1

    sent = 20
    await produce(kafka_bootstrap, topic, ((0, event(n)) for n in range(sent)))
    config = TriggerConfig(queue_size=10, backpressure_strategy="block", max_concurrent_sagas=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        async with (
            group_offsets(kafka_bootstrap, group, topic, 1) as offsets,
            TriggerEngine(config, MemorySagaStore()) as engine,
        ):
            source = kafka_source(engine, "stalled.on_event")
            assert engine.state is not None
            queue = engine.state.queue
            await eventually(
                lambda: len(entered) == 2 and len(queue) == 10 and source.describe()["paused"],
                within=20,
                what="2 sagas stuck, a full queue and a paused partition",
            )
            # the stall: keep producing and watch the lag grow; nothing finishes meanwhile
            lags = [await offsets.lag()]
            stall_ends = time.monotonic() + STALL_SECONDS
            while time.monotonic() < stall_ends:
                await producer.send_and_wait(topic, event(sent), partition=0)
                sent += 1
                lags.append(await offsets.lag())
                assert len(entered) == 2 and len(queue) == 10
                await asyncio.sleep(0.25)  # paces the producer; not a wait for an outcome
            assert lags == sorted(lags) and lags[-1] == sent > lags[0], lags
            # never evicted: still the first assignment, still holding the partition
            assert source.describe()["assignments"] == 1
            assert source.describe()["assigned"] == [(topic, 0)]

            gate.set()

            async def drained() -> bool:
                return await offsets.lag() == 0

            await eventually(drained, within=20, what="the lag to drain to 0")
            assert sorted(finished) == list(range(sent))
            assert set(finished.values()) == set(entered.values()) == {1}
            # nothing came twice: no rebalance handed the partition back to a committed offset
            assert sum(engine.metrics.received.values()) == sent
            assert engine.metrics.reasons["duplicate"] == 0
            assert engine.metrics.max_in_flight == 2
            assert source.describe()["assignments"] == 1
            assert source.describe()["paused"] == []
    finally:
        await producer.stop()
    print(f"\nblock: lag grew {lags[0]} -> {lags[-1]} over a {STALL_SECONDS}s stall, drained to 0")


# -- 5. without aiokafka: the class still defines, start_triggers() names the extra ---------
async def test_without_aiokafka_start_triggers_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [m for m in sys.modules if m == "aiokafka" or m.startswith("aiokafka.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import aiokafka...` raises ImportError
    monkeypatch.setitem(sys.modules, "aiokafka", None)
    # the Kafka source module is imported afresh, as in a process that never had aiokafka
    monkeypatch.delitem(sys.modules, "sagaz.sources.kafka.source", raising=False)
    monkeypatch.setattr(sagaz.triggers, "kafka", None, raising=False)

    class NoDriverSaga(Saga):  # defining the class needs no driver
        saga_name = "no-driver"

        @trigger(source="kafka", topic="orders", group_id="svc", bootstrap_servers="x:9092")
        def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            return event

        @action("never")
        async def never(self, ctx: SagaContext) -> None:
            raise AssertionError("no saga may run")

    store = SQLiteSagaStore(tmp_path / "sagaz.db")
    with pytest.raises(MissingExtraError, match=r'pip install "sagaz\[kafka\]"') as failure:
        await sagaz.start_triggers(TriggerConfig(), store)
    assert "aiokafka" in str(failure.value)
    assert not store._started  # the engine closed what it opened
    await sagaz.stop_triggers()  # nothing is running: a no-op
    with pytest.raises(RuntimeError, match="no trigger engine is running"):
        await sagaz.fire_event("orders", {})


# -- 5. a store error at admission: the partition's commits are not held for good --------------
async def test_an_event_the_store_keeps_refusing_is_dead_lettered_and_the_offset_committed(
    kafka_bootstrap: str, make_kafka_topic: MakeTopic, monkeypatch: pytest.MonkeyPatch
) -> None:
    # it was nacked: the offset stayed uncommitted, so the partition's commits stopped at 2
    # until a restart or a rebalance (and the event was tried again only then)
    monkeypatch.setattr(StoreErrors, "initial", 0.05)
    monkeypatch.setattr(StoreErrors, "maximum", 0.2)
    topic = await make_kafka_topic("refused", partitions=1)
    group = unique_name("refused")
    ran: list[int] = []

    class Refused(Saga):
        saga_name = "refused"

        @trigger(
            source="kafka",
            topic=topic,
            group_id=group,
            bootstrap_servers=kafka_bootstrap,
            idempotency_key=lambda e: str(e["n"]),
            **FAST,
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("count")
        async def count(self, ctx: SagaContext) -> None:
            ran.append(ctx["n"])

    await produce(kafka_bootstrap, topic, ((0, event(n)) for n in range(5)))
    async with (
        RefusesOneEvent("2") as store,
        group_offsets(kafka_bootstrap, group, topic, 1) as offsets,
        TriggerEngine(TriggerConfig(), store),
    ):
        await eventually(lambda: sorted(ran) == [0, 1, 3, 4], within=30, what="4 sagas")
        dead = await eventually(store.list_dead_letters, within=30, what="its dead letter")
        assert [(d.reason, d.payload) for d in dead] == [("store_error", event(2))]

        async def committed_past_it() -> bool:
            return await offsets.committed() == [5]

        await eventually(committed_past_it, within=30, what="the offset committed past it")
        assert store.failures >= StoreErrors.attempts


# -- 6. a store error that ends a saga's run: dead-lettered once, the offset committed ------
class RefusesTwo(SQLiteSagaStore):
    """Refuses, with an error that is not an outage, the completion of event 2's saga."""

    async def save_checkpoint(self, saga: Any = None, *args: Any, **kwargs: Any) -> None:
        if saga is not None and saga.status is SagaStatus.COMPLETED and saga.context["n"] == 2:
            raise RuntimeError("refused the completion of event 2")
        await super().save_checkpoint(saga, *args, **kwargs)


async def event_two_dead_lettered(
    kafka_bootstrap: str,
    make_kafka_topic: MakeTopic,
    store: SQLiteSagaStore,
    context: Callable[[int], dict[str, Any]],
) -> tuple[list[int], Counter[int], DeadLetterRecord, RecordingListener]:
    """Events 0 to 4 through a one-step saga whose trigger method returns ``context(n)``,
    on ``store``, until event 2 is dead-lettered and the offset committed past it: the
    step's runs, the trigger method's calls, the dead letter and the listener."""
    topic = await make_kafka_topic("run-error", partitions=1)
    group = unique_name("run-error")
    ran: list[int] = []
    methods: Counter[int] = Counter()

    class RunError(Saga):
        saga_name = "run-error-kafka"

        @trigger(
            source="kafka", topic=topic, group_id=group, bootstrap_servers=kafka_bootstrap, **FAST
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            methods[event["n"]] += 1
            return context(event["n"])

        @action("count")
        async def count(self, ctx: SagaContext) -> None:
            ran.append(ctx["n"])

    await produce(kafka_bootstrap, topic, ((0, event(n)) for n in range(5)))
    listener = RecordingListener()
    async with (
        store,
        group_offsets(kafka_bootstrap, group, topic, 1) as offsets,
        TriggerEngine(TriggerConfig(), store, listeners=[listener]),
    ):
        [dead] = await eventually(store.list_dead_letters, within=30, what="its dead letter")

        async def committed_past_it() -> bool:
            return await offsets.committed() == [5]

        await eventually(committed_past_it, within=30, what="the offset committed past it")
        await eventually(lambda: 4 in ran, what="the last event's saga")
        assert [d.id for d in listener.dead] == [dead.id]
        assert methods == Counter(range(5))  # never delivered again
        failed = await store.list_sagas(status=SagaStatus.FAILED)
        assert [s.saga_id for s in failed] == [dead.saga_id]
    return ran, methods, dead, listener


async def test_a_saga_the_store_keeps_refusing_is_dead_lettered_and_the_offset_committed(
    kafka_bootstrap: str,
    make_kafka_topic: MakeTopic,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # the store refuses event 2's completion every time: the run was nacked, so the
    # partition's commits stopped at 2 until a restart or a rebalance, and then the event
    # came back to fail the same way (no dead letter ever)
    monkeypatch.setattr(RunErrors, "initial", 0.05)
    monkeypatch.setattr(RunErrors, "maximum", 0.2)
    store = RefusesTwo(tmp_path / "sagaz.db")
    ran, _, dead, listener = await event_two_dead_lettered(
        kafka_bootstrap, make_kafka_topic, store, lambda n: {"n": n}
    )
    assert (dead.reason, dead.payload, dead.attempts) == ("store_error", event(2), 5)
    assert sorted(n for n in ran if n != 2) == [0, 1, 3, 4]
    assert ran.count(2) == RunErrors.attempts  # its last step, run again each time
    assert len(listener.errors) == RunErrors.attempts  # exactly its attempts


async def test_a_saga_the_store_cannot_keep_is_dead_lettered_at_once(
    kafka_bootstrap: str, make_kafka_topic: MakeTopic, tmp_path: Path
) -> None:
    # its trigger method returns a context the store cannot encode: the same value fails
    # every run, so it is dead-lettered after the first (no backoff to wait through)
    def context(n: int) -> dict[str, Any]:
        return {"n": n, "handle": object() if n == 2 else None}

    store = SQLiteSagaStore(tmp_path / "sagaz.db")
    ran, _, dead, listener = await event_two_dead_lettered(
        kafka_bootstrap, make_kafka_topic, store, context
    )
    assert (dead.reason, dead.payload, dead.attempts) == ("store_error", event(2), 1)
    assert sorted(ran) == [0, 1, 3, 4]
    assert len(listener.errors) == 1  # one run, not tried again
    assert "UnstorableValueError" in (dead.traceback or "")
