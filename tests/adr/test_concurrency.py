"""ADR-025 "Concurrency Control & Backpressure": rate limiting, semantic concurrency, the
backpressure strategies and their table.

The three blocks, as written: the rate-limited RabbitMQ trigger (its body is the ADR's
placeholder ``...``, which would filter every event: the test gives it one), the Redis trigger
with ``concurrency_key=lambda event: event.user_id`` (attribute access on the unannotated
event, DESIGN §2), and ``config = TriggerConfig(backpressure_strategy="drop_oldest",
queue_size=1000)``. Each row of the strategies' table is checked too, with a small queue.
Rate limits run on a ``FakeClock``: the engine's token buckets sleep on it.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

import sagaz
from sagaz import Saga, SagaStatus, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.events import NotRun
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import FakeClock, continually, eventually
from tests.adr.support import Kafka, Recorder, fresh_stream, sagas_named
from tests.fixtures_kafka import MakeTopic
from tests.fixtures_rabbitmq import Rabbit
from tests.fixtures_redis import Streams

START = datetime(2026, 1, 1, tzinfo=UTC)


# -- Rate Limiting -------------------------------------------------------------------------
def define_rate_limited(started: list[float], clock: FakeClock, gate: asyncio.Event) -> None:
    class EventsSaga(Saga):
        saga_name = "events-saga"

        # -- ADR-025 "Rate Limiting", as written, with a body for the placeholder ------------
        # fmt: off
        @trigger(
            source="rabbitmq",  # Works with any broker: kafka, redis, rabbitmq, sqs
            queue="events",
            max_concurrent_sagas=100,  # Max 100 sagas executing simultaneously
            rate_limit_per_second=10   # Start at most 10 sagas/second
        )
        def on_event(self, event): return dict(event)  # the ADR: ...
        # fmt: on
        # ------------------------------------------------------------------------------------

        @action("handle")
        async def handle(self, ctx: Any) -> None:
            started.append(clock.monotonic())
            await gate.wait()


async def publish_numbered(rabbit: Rabbit, queue: str, count: int) -> None:
    await rabbit.publish(queue, [json.dumps({"n": n}).encode() for n in range(count)])


async def test_rate_limit_starts_at_most_ten_sagas_a_second(rabbit_env: Rabbit) -> None:
    rabbit_env.queues.append("events")
    clock = FakeClock(START)
    started: list[float] = []
    gate = asyncio.Event()
    gate.set()
    define_rate_limited(started, clock, gate)
    async with TriggerEngine(TriggerConfig(), MemorySagaStore(), clock=clock) as engine:
        await publish_numbered(rabbit_env, "events", 30)
        await eventually(
            lambda: engine.metrics.received["events-saga.on_event"] == 30,
            what="the 30 messages admitted",
        )
        await eventually(lambda: len(started) == 1, what="the first saga (a full bucket)")
        for tenth in range(1, 30):
            await clock.advance(0.1)
            await eventually(lambda t=tenth: len(started) >= t + 1, what=f"saga {tenth + 1}")
            assert len(started) == tenth + 1  # one token per 0.1 s, no more
        await engine.dispatcher.wait_idle()

    assert started == pytest.approx([n / 10 for n in range(30)], abs=1e-6)


async def test_max_concurrent_sagas_holds_the_trigger_at_100_running(rabbit_env: Rabbit) -> None:
    rabbit_env.queues.append("events")
    clock = FakeClock(START)
    started: list[float] = []
    gate = asyncio.Event()
    define_rate_limited(started, clock, gate)
    store = MemorySagaStore()
    # the engine-wide limit well above the trigger's, so that the trigger's 100 is what holds
    config = TriggerConfig(max_concurrent_sagas=300)
    async with TriggerEngine(config, store, clock=clock) as engine:
        await publish_numbered(rabbit_env, "events", 150)
        await eventually(
            lambda: engine.metrics.received["events-saga.on_event"] == 150,
            what="the 150 messages admitted",
        )
        await clock.advance(20)  # tokens for all 150 (10 a second)
        await eventually(lambda: len(started) == 100, what="100 sagas running")
        await continually(
            lambda: len(started) == 100 and engine.dispatcher.in_flight == 100,
            during=0.3,
            what="no more than 100 at once",
        )
        gate.set()
        await eventually(lambda: len(started) == 150, what="the other 50 once some finished")
        await engine.dispatcher.wait_idle()
    done = await sagas_named(store, "events-saga")
    assert len(done) == 150
    assert {s.status for s in done} == {SagaStatus.COMPLETED}


# -- Semantic Concurrency Control ----------------------------------------------------------
async def test_one_saga_per_user_at_a_time_in_arrival_order(redis_env: Streams) -> None:
    await fresh_stream(redis_env, "orders")
    gates: dict[str, asyncio.Event] = {}
    started: list[str] = []

    class OrdersSaga(Saga):
        saga_name = "orders-saga"

        # -- ADR-025 "Semantic Concurrency Control", as written ------------------------------
        # fmt: off
        @trigger(
            source="redis",  # Semantic concurrency works with all brokers
            stream="orders",
            concurrency_key=lambda event: event.user_id  # One saga per user at a time
        )
        def on_order(self, event):
            return {"order_id": event.order_id, "user_id": event.user_id}
        # fmt: on
        # ------------------------------------------------------------------------------------

        @action("fulfil")
        async def fulfil(self, ctx: Any) -> None:
            started.append(ctx["order_id"])
            await gates.setdefault(ctx["order_id"], asyncio.Event()).wait()

    for order in ("o1", "o2", "o3", "o4"):
        gates[order] = asyncio.Event()
    recorder = Recorder()
    engine = await sagaz.start_triggers(listeners=[recorder])
    await eventually(
        lambda: _has_group(redis_env, "orders", "orders-saga.on_order"), what="the group"
    )
    orders = [("o1", "ann"), ("o2", "ann"), ("o3", "bob"), ("o4", "ann")]
    await redis_env.add(
        "orders",
        [json.dumps({"order_id": o, "user_id": u}).encode() for o, u in orders],
    )

    def dead() -> None:
        if recorder.dead:
            raise AssertionError(f"dead-lettered: {[d.error for d in recorder.dead]}")

    async def running(expected: list[str]) -> bool:
        dead()
        return sorted(started) == sorted(expected)

    # bob's order does not wait behind ann's
    await eventually(lambda: running(["o1", "o3"]), what="o1 and o3 running")
    await continually(lambda: running(["o1", "o3"]), during=0.2, what="o2 and o4 waiting")
    gates["o1"].set()
    await eventually(lambda: running(["o1", "o3", "o2"]), what="o2 after o1")
    await continually(lambda: running(["o1", "o3", "o2"]), during=0.2, what="o4 waiting")
    gates["o2"].set()
    await eventually(lambda: running(["o1", "o3", "o2", "o4"]), what="o4 after o2")
    gates["o3"].set()
    gates["o4"].set()
    await engine.dispatcher.wait_idle()
    assert [o for o in started if o != "o3"] == ["o1", "o2", "o4"]  # ann's, in arrival order


async def _has_group(streams: Streams, stream: str, group: str) -> bool:
    try:
        groups = await streams.client.xinfo_groups(stream)
    except Exception:
        return False
    return any(g["name"] == group.encode() for g in groups)


# -- Backpressure Strategies ---------------------------------------------------------------
def define_held_saga(gate: asyncio.Event, started: list[int]) -> None:
    class Jobs(Saga):
        saga_name = "jobs"

        @trigger(source="memory", channel="jobs")
        def on_job(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: Any) -> None:
            started.append(ctx["n"])
            await gate.wait()


async def test_the_adr_config_drops_the_oldest_buffered_events() -> None:
    # -- ADR-025 "Backpressure Strategies", as written ---------------------------------------
    # fmt: off
    config = TriggerConfig(
        backpressure_strategy="drop_oldest",  # or "block", "drop_newest", "reject"
        queue_size=1000,  # Buffer size before applying backpressure
    )
    # fmt: on
    # ---------------------------------------------------------------------------------------
    gate = asyncio.Event()
    started: list[int] = []
    define_held_saga(gate, started)
    recorder = Recorder()
    engine = await sagaz.start_triggers(config, listeners=[recorder])
    ids: list[str] = []
    for n in range(100):  # the engine runs 100 sagas at once (max_concurrent_sagas)
        ids += await sagaz.fire_event("jobs", {"n": n})
    await eventually(lambda: len(started) == 100, what="100 sagas running")
    for n in range(100, 1105):  # 1000 buffered, then 5 more
        ids += await sagaz.fire_event("jobs", {"n": n})

    assert len(ids) == 1105  # each was accepted when it came
    assert recorder.reasons == ["dropped_oldest"] * 5
    assert [e["n"] for _, e, _ in recorder.filtered] == [100, 101, 102, 103, 104]
    outcome = await engine.wait_for(ids[100], timeout=5)
    assert isinstance(outcome, NotRun)
    assert outcome.reason == "dropped_oldest"
    gate.set()
    last = await engine.wait_for(ids[-1], timeout=30)
    assert last
    await engine.dispatcher.wait_idle()
    assert sorted(started) == [*range(100), *range(105, 1105)]


@pytest.mark.parametrize("strategy", ["drop_oldest", "drop_newest", "reject"])
async def test_a_full_queue_applies_the_strategy_of_the_table(strategy: str) -> None:
    gate = asyncio.Event()
    started: list[int] = []
    define_held_saga(gate, started)
    recorder = Recorder()
    config = TriggerConfig(backpressure_strategy=strategy, queue_size=2, max_concurrent_sagas=1)
    store = MemorySagaStore()
    async with TriggerEngine(config, store, listeners=[recorder]) as engine:
        [first] = await engine.fire("jobs", {"n": 1})
        await eventually(lambda: started == [1], what="the first saga running")
        accepted = {n: await engine.fire("jobs", {"n": n}) for n in (2, 3, 4)}  # the 4th: full
        gate.set()
        await engine.wait_for(first, timeout=10)
        for ids in accepted.values():
            for saga_id in ids:
                await engine.wait_for(saga_id, timeout=10)
        await engine.dispatcher.wait_idle()

    dead = await store.list_dead_letters()
    if strategy == "drop_oldest":  # "Drop oldest buffered events when queue is full"
        assert started == [1, 3, 4]
        assert recorder.reasons == ["dropped_oldest"]
        assert recorder.filtered[0][1] == {"n": 2}
        assert dead == []
    elif strategy == "drop_newest":  # "Reject new events when queue is full"
        assert started == [1, 2, 3]
        assert accepted[4] == []
        assert recorder.reasons == ["dropped_newest"]
        assert recorder.filtered[0][1] == {"n": 4}
        assert dead == []
    else:  # reject: "Send new events to DLQ when queue is full"
        assert started == [1, 2, 3]
        assert accepted[4] == []
        assert recorder.reasons == ["rejected"]
        assert [d.payload for d in dead] == [{"n": 4}]
        assert [d.reason for d in dead] == ["rejected"]


@pytest.fixture
async def held_topic(kafka: Kafka, make_kafka_topic: MakeTopic) -> str:
    return await make_kafka_topic("adr-block", partitions=1)


async def test_block_stops_consuming_until_sagas_complete_and_kafka_lag_grows(
    kafka: Kafka, held_topic: str
) -> None:
    """The table: "block: Stop consuming events until sagas complete (Kafka lag
    increases)"."""
    gate = asyncio.Event()
    started: list[int] = []
    group = f"{held_topic}-group"

    class Jobs(Saga):
        saga_name = "jobs"

        @trigger(
            source="kafka",
            topic=held_topic,
            group_id=group,
            session_timeout_ms=1500,  # a quick group join on the test broker
            heartbeat_interval_ms=300,
            commit_interval_ms=100,
        )
        def on_job(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: Any) -> None:
            started.append(ctx["n"])
            await gate.wait()

    config = TriggerConfig(backpressure_strategy="block", queue_size=2, max_concurrent_sagas=1)
    store = MemorySagaStore()
    reader = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group)
    await reader.start()
    try:
        async with TriggerEngine(config, store) as engine:
            await kafka.produce(held_topic, *({"n": n} for n in range(20)))
            await eventually(lambda: started == [0], within=20, what="the first saga")

            def received() -> int:
                return engine.metrics.received["jobs.on_job"]

            # one running, two buffered, one waiting for room: the rest stays on the broker
            await continually(lambda: received() <= 4, during=0.5, what="consumption stopped")
            assert (await reader.committed(TopicPartition(held_topic, 0)) or 0) == 0  # lag 20
            assert engine.metrics.snapshot()["received"] <= 4
            gate.set()
            await eventually(lambda: len(started) == 20, within=20, what="all 20 once released")

            async def committed_all() -> bool:
                return await reader.committed(TopicPartition(held_topic, 0)) == 20

            await eventually(committed_all, within=10, what="lag back to 0")
    finally:
        await reader.stop()
    assert started == list(range(20))  # nothing dropped, in order
