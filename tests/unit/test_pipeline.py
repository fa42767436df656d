"""The trigger pipeline through the memory source: inbox, backpressure, limits, dead letters."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel

import sagaz
from sagaz import (
    EventMeta,
    InvalidEventError,
    Saga,
    SagaListener,
    SagaStatus,
    TriggerConfig,
    action,
    trigger,
)
from sagaz.engine.engine import TriggerEngine
from sagaz.events import AdmissionOutcome
from sagaz.exceptions import ConfigurationError, TriggerDefinitionError
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import FakeClock, continually, eventually
from sagaz.triggers import registry
from tests.engine_support import RecordingListener


async def test_ten_thousand_events_complete_exactly_once_and_twice_fired_still_once() -> None:
    ran: list[int] = []

    class Counted(Saga):
        @trigger(source="memory", channel="orders", idempotency_key=lambda e: e["id"])
        def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"id": event["id"]}

        @action("one")
        async def one(self, ctx: Any) -> None:
            ran.append(ctx["id"])

    store = MemorySagaStore()
    async with TriggerEngine(TriggerConfig(queue_size=500), store) as engine:
        for _ in range(2):
            for i in range(10_000):
                await engine.fire("orders", {"id": i})
            await eventually(lambda: engine.metrics.in_flight == 0 and len(engine.state.queue) == 0)
        await eventually(lambda: len(ran) >= 10_000)
        await engine.dispatcher.wait_idle()
    assert len(ran) == 10_000
    assert sorted(ran) == list(range(10_000))
    completed = await store.list_sagas(status=SagaStatus.COMPLETED, limit=100_000)
    assert len(completed) == 10_000
    assert engine.metrics.reasons["duplicate"] == 10_000


def make_blocking_saga(channel: str, gate: asyncio.Event, started: list[int]) -> type[Saga]:
    class Blocked(Saga):
        saga_name = f"blocked-{channel}"

        @trigger(source="memory", channel=channel, idempotency_key=lambda e: e["n"])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("wait")
        async def wait(self, ctx: Any) -> None:
            started.append(ctx["n"])
            await gate.wait()

    return Blocked


@pytest.mark.parametrize("strategy", ["drop_oldest", "drop_newest", "reject"])
async def test_full_queue_strategies_drop_exactly_the_expected_events(strategy: str) -> None:
    gate = asyncio.Event()
    started: list[int] = []
    make_blocking_saga("bp", gate, started)
    recorder = RecordingListener()
    store = MemorySagaStore()
    config = TriggerConfig(queue_size=10, backpressure_strategy=strategy, max_concurrent_sagas=1)
    async with TriggerEngine(config, store, listeners=[recorder]) as engine:
        await engine.fire("bp", {"n": 0})
        await eventually(lambda: started == [0])  # the only worker is stuck on event 0
        results = [await engine.fire("bp", {"n": n}) for n in range(1, 16)]  # 15 more; room for 10
        gate.set()
        await eventually(lambda: len(started) == 11)
        await engine.dispatcher.wait_idle()
    reasons = recorder.reasons
    if strategy == "drop_oldest":
        assert sorted(started) == [0, *range(6, 16)]
        assert reasons == ["dropped_oldest"] * 5
        assert [e["n"] for e, _ in recorder.filtered] == [1, 2, 3, 4, 5]
    elif strategy == "drop_newest":
        assert sorted(started) == list(range(0, 11))
        assert reasons == ["dropped_newest"] * 5
        assert all(r == [] for r in results[10:])
    else:
        assert sorted(started) == list(range(0, 11))
        assert reasons == ["rejected"] * 5
        dead = await store.list_dead_letters()
        assert sorted(d.payload["n"] for d in dead) == [11, 12, 13, 14, 15]
        assert all(d.reason == "rejected" for d in dead)
    assert engine.metrics.reasons[reasons[0]] == 5


async def test_block_strategy_loses_nothing_and_the_producer_waits() -> None:
    gate = asyncio.Event()
    started: list[int] = []
    make_blocking_saga("blk", gate, started)
    config = TriggerConfig(queue_size=10, backpressure_strategy="block", max_concurrent_sagas=1)
    async with TriggerEngine(config, MemorySagaStore()) as engine:
        await engine.fire("blk", {"n": 0})
        await eventually(lambda: started == [0])
        for n in range(1, 11):
            await engine.fire("blk", {"n": n})
        producer = asyncio.create_task(engine.fire("blk", {"n": 11}))
        await continually(lambda: not producer.done(), during=0.05, what="the 11th event waiting")
        gate.set()
        await asyncio.wait_for(producer, 5)
        await eventually(lambda: len(started) == 12)
    assert sorted(started) == list(range(12))


async def test_concurrency_key_serialises_per_key_and_does_not_block_other_keys() -> None:
    stuck = asyncio.Event()
    running: dict[str, int] = {}
    overlap: list[str] = []
    order: dict[str, list[int]] = {}
    finished: list[tuple[str, int]] = []

    class PerUser(Saga):
        @trigger(
            source="memory",
            channel="users",
            idempotency_key=lambda e: f"{e['user']}-{e['n']}",
            concurrency_key=lambda e: e["user"],
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: Any) -> None:
            user = ctx["user"]
            running[user] = running.get(user, 0) + 1
            if running[user] > 1:
                overlap.append(user)
            order.setdefault(user, []).append(ctx["n"])
            if user == "slow":
                await stuck.wait()
            else:
                await asyncio.sleep(0)
            running[user] -= 1
            finished.append((user, ctx["n"]))

    async with TriggerEngine(TriggerConfig(max_concurrent_sagas=8), MemorySagaStore()) as engine:
        for n in range(5):
            for user in ("slow", "a", "b", "c"):
                await engine.fire("users", {"user": user, "n": n})
        # other keys finish while "slow" is stuck on its first event
        await eventually(lambda: sum(1 for u, _ in finished if u != "slow") == 15)
        assert [n for u, n in finished if u == "slow"] == []
        assert order["slow"] == [0]
        stuck.set()
        await eventually(lambda: len(finished) == 20)
    assert overlap == []
    assert all(order[u] == [0, 1, 2, 3, 4] for u in ("slow", "a", "b", "c"))


async def test_max_concurrent_sagas_is_never_exceeded() -> None:
    current = 0
    high_water = 0

    class Limited(Saga):
        @trigger(
            source="memory", channel="lim", idempotency_key=lambda e: e["n"], max_concurrent_sagas=3
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: Any) -> None:
            nonlocal current, high_water
            current += 1
            high_water = max(high_water, current)
            await asyncio.sleep(0.001)
            current -= 1

    async with TriggerEngine(TriggerConfig(max_concurrent_sagas=50), MemorySagaStore()) as engine:
        for n in range(200):
            await engine.fire("lim", {"n": n})
        await eventually(lambda: sum(engine.metrics.completed.values()) == 200)
    assert high_water == 3


async def test_rate_limit_over_two_seconds_of_fake_time() -> None:
    clock = FakeClock()
    starts: list[float] = []

    class Rated(Saga):
        @trigger(
            source="memory",
            channel="rate",
            idempotency_key=lambda e: e["n"],
            rate_limit_per_second=50,
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: Any) -> None:
            starts.append(clock.monotonic())

    async with TriggerEngine(
        TriggerConfig(queue_size=1000), MemorySagaStore(), clock=clock
    ) as engine:
        for n in range(500):
            await engine.fire("rate", {"n": n})
        await clock.settle()
        for _ in range(200):  # 2 s in 10 ms steps
            await clock.advance(0.01)
    assert 99 <= len([s for s in starts if s <= 2.0]) <= 101


async def test_a_rate_limited_trigger_does_not_hold_workers_from_other_triggers() -> None:
    """Events waiting for a rate-limit token are parked, not held by workers: with four
    workers and a hundred throttled events queued first, an unthrottled trigger's events all
    run before (fake) time moves at all; the throttled ones start in arrival order."""
    clock = FakeClock()
    slow_starts: list[int] = []
    fast_done: list[int] = []

    class Throttled(Saga):
        @trigger(
            source="memory",
            channel="slow",
            idempotency_key=lambda e: e["n"],
            rate_limit_per_second=1,
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: Any) -> None:
            slow_starts.append(ctx["n"])

    class Free(Saga):
        @trigger(source="memory", channel="fast", idempotency_key=lambda e: e["n"])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: Any) -> None:
            fast_done.append(ctx["n"])

    config = TriggerConfig(queue_size=1000, max_concurrent_sagas=4)
    async with TriggerEngine(config, MemorySagaStore(), clock=clock) as engine:
        for n in range(100):
            await engine.fire("slow", {"n": n})
        for n in range(50):
            await engine.fire("fast", {"n": n})
        await eventually(lambda: len(fast_done) == 50)
        assert slow_starts == [0]  # one token at t=0, the rest wait for time to move
        for _ in range(5):
            await clock.advance(1.0)
        assert slow_starts == list(range(6))
        assert engine.metrics.in_flight == 0  # parked events hold no worker


async def test_throttled_events_granted_while_every_worker_is_busy_start_in_arrival_order() -> None:
    clock = FakeClock()
    gate = asyncio.Event()
    starts: list[int] = []

    class Blocker(Saga):
        @trigger(source="memory", channel="block", idempotency_key=lambda e: e["n"])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("hold")
        async def hold(self, ctx: Any) -> None:
            await gate.wait()

    class Metered(Saga):
        @trigger(
            source="memory",
            channel="metered",
            idempotency_key=lambda e: e["n"],
            rate_limit_per_second=10,
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: Any) -> None:
            starts.append(ctx["n"])

    config = TriggerConfig(queue_size=100, max_concurrent_sagas=2)
    async with TriggerEngine(config, MemorySagaStore(), clock=clock) as engine:
        await engine.fire("block", {"n": 0})  # holds one worker
        await clock.settle()
        for n in range(6):  # the other worker runs 0 and parks 1..5 for tokens
            await engine.fire("metered", {"n": n})
        await clock.settle()
        await engine.fire("block", {"n": 1})  # now holds the other worker too
        await clock.settle()
        for _ in range(10):  # 1..5 are granted tokens while no worker is free
            await clock.advance(0.1)
        assert starts == [0]
        gate.set()
        await eventually(lambda: len(starts) == 6)
    assert starts == list(range(6))


@dataclass
class Ping:
    value: int


class Order(BaseModel):
    id: int
    user: str


async def test_bad_input_is_dead_lettered_and_the_engine_keeps_running() -> None:
    ran: list[int] = []

    class Strict(Saga):
        @trigger(source="memory", channel="strict")
        def on_order(self, event: Order) -> dict[str, Any]:
            if event.id == 666:
                raise InvalidEventError("order 666 is cursed")
            if event.id == 13:
                raise RuntimeError("bug in user code")
            return {"id": event.id}

        @action("work")
        async def work(self, ctx: Any) -> None:
            ran.append(ctx["id"])

    recorder = RecordingListener()
    store = MemorySagaStore()
    async with TriggerEngine(TriggerConfig(), store, listeners=[recorder]) as engine:
        active = engine.triggers["strict.on_order"]
        from sagaz.events import Delivery

        bad_json = await engine.admission.admit(
            active, Delivery(payload=b"{not json", identity="m1", meta=EventMeta(source="memory"))
        )
        invalid = await engine.fire("strict", {"id": "abc", "user": "u"})
        cursed = await engine.fire("strict", {"id": 666, "user": "u"})
        buggy = await engine.fire("strict", {"id": 13, "user": "u"})
        good = await engine.fire("strict", {"id": 1, "user": "u"})
        await eventually(lambda: ran == [1])
    assert bad_json.outcome is AdmissionOutcome.INVALID
    assert bad_json.details and bad_json.details[0]["type"] == "json_invalid"
    assert invalid == [] and cursed == [] and buggy == [] and len(good) == 1
    dead = await store.list_dead_letters()
    assert len(dead) == 4
    assert all(d.reason == "invalid" for d in dead)
    errors = " | ".join(d.error for d in dead)
    assert "cursed" in errors and "bug in user code" in errors and "int_parsing" not in errors
    assert "valid integer" in errors
    assert any(d.traceback and "RuntimeError" in d.traceback for d in dead)
    assert recorder.reasons.count("invalid") == 4
    assert len(recorder.dead) == 4


async def test_failing_saga_is_retried_with_backoff_then_dead_lettered() -> None:
    clock = FakeClock()
    attempts: list[float] = []

    class Doomed(Saga):
        @trigger(source="memory", channel="doom", max_retries=2, retry_backoff_seconds=[10, 60])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("fail")
        async def fail(self, ctx: Any) -> None:
            attempts.append(clock.monotonic())
            raise RuntimeError("downstream is down")

    store = MemorySagaStore()
    config = TriggerConfig(retry_jitter=0)
    async with TriggerEngine(config, store, clock=clock) as engine:
        [saga_id] = await engine.fire("doom", {"n": 1})
        await eventually(lambda: len(attempts) == 1)
        await clock.advance(9.9)
        assert len(attempts) == 1
        await clock.advance(0.2)
        await eventually(lambda: len(attempts) == 2)
        await clock.advance(59)
        assert len(attempts) == 2
        await clock.advance(1.1)
        await eventually(lambda: len(attempts) == 3)
        await eventually(lambda: engine.metrics.dead_lettered["doomed.on_event"] == 1)
    assert attempts == pytest.approx([0, 10, 70], abs=0.2)
    [dead] = await store.list_dead_letters()
    assert dead.saga_id == saga_id and dead.attempts == 3 and "downstream is down" in dead.error
    record = await store.get_saga(saga_id)
    assert record is not None and record.attempt == 3 and record.status is SagaStatus.COMPENSATED


async def test_filtered_and_async_transform_and_event_meta() -> None:
    seen: list[EventMeta] = []

    class Meta(Saga):
        @trigger(source="memory", channel="meta")
        async def on_ping(self, event: Ping, meta: EventMeta) -> dict[str, Any] | None:
            seen.append(meta)
            return {"v": event.value} if event.value > 0 else None

        @action("noop")
        async def noop(self, ctx: Any) -> None: ...

    recorder = RecordingListener()
    async with TriggerEngine(TriggerConfig(), MemorySagaStore(), listeners=[recorder]) as engine:
        assert await engine.fire("meta", {"value": 0}) == []
        assert len(await engine.fire("meta", {"value": 2})) == 1
    assert recorder.reasons == ["filtered"]
    assert (
        seen[0].source == "memory" and seen[0].topic == "meta" and seen[0].trigger == "meta.on_ping"
    )


def test_trigger_options_are_validated_at_class_definition() -> None:
    with pytest.raises(
        TriggerDefinitionError, match=r"Typo\.on_event.*unknown option\(s\) \['chanel'\]"
    ):

        class Typo(Saga):
            @trigger(source="memory", chanel="x")
            def on_event(self, event: Any) -> None: ...

    with pytest.raises(TriggerDefinitionError, match=r"Nowhere\.on_event.*unknown source 'pigeon'"):

        class Nowhere(Saga):
            @trigger(source="pigeon")
            def on_event(self, event: Any) -> None: ...

    with pytest.raises(TriggerDefinitionError, match=r"missing required option\(s\) \['channel'\]"):

        class Missing(Saga):
            @trigger(source="memory")
            def on_event(self, event: Any) -> None: ...

    with pytest.raises(
        TriggerDefinitionError,
        match=r"NotCallable\.on_event.*idempotency_key='id' must be a callable",
    ):

        class NotCallable(Saga):
            @trigger(source="memory", channel="c", idempotency_key="id")
            def on_event(self, event: Any) -> None: ...


def test_inherited_triggers_register_under_the_subclass_and_duplicates_explain_the_fix() -> None:
    class Base(Saga, abstract=True):
        @trigger(source="memory", channel="inh")
        def on_event(self, event: Any) -> dict[str, Any]:
            return {}

        @action("a")
        async def a(self, ctx: Any) -> None: ...

    class Child(Base):
        saga_name = "child-one"

    ids = [t.trigger_id for t in registry.triggers()]
    assert "child-one.on_event" in ids
    assert not any(i.startswith("base.") for i in ids)
    with pytest.raises(TriggerDefinitionError, match=r"saga_name.*abstract=True"):

        class Other(Base):
            saga_name = "child-one"


async def test_start_without_triggers_explains_discovery() -> None:
    registry.clear()
    with pytest.raises(ConfigurationError, match=r"import"):
        await sagaz.start_triggers(store=MemorySagaStore())


async def test_module_level_api_start_fire_stop() -> None:
    done = asyncio.Event()

    class Api(Saga):
        @trigger(source="memory", channel="api")
        def on_event(self, event: Any) -> dict[str, Any]:
            return {"x": event["x"]}

        @action("a")
        async def a(self, ctx: Any) -> None:
            done.set()

    engine = await sagaz.start_triggers(store=MemorySagaStore())
    try:
        ids = await sagaz.fire_event("api", {"x": 1})
        assert len(ids) == 1
        await asyncio.wait_for(done.wait(), 5)
    finally:
        await sagaz.stop_triggers()
    assert not engine.running
    await sagaz.stop_triggers()  # idempotent


async def test_a_delivery_of_a_saga_running_here_joins_the_run_instead_of_repeating_it() -> None:
    # a broker redelivers an event whose saga still runs here (lost ack, reconnect): our own
    # inbox claim would be handed back (TAKEN_OVER) and a second run would repeat the step
    from sagaz.events import Delivery

    gate = asyncio.Event()
    runs: list[int] = []
    acks: list[str] = []

    class Joined(Saga):
        @trigger(source="memory", channel="joined", idempotency_key=lambda e: e["n"])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: Any) -> None:
            runs.append(ctx["n"])
            await gate.wait()

    def delivery(name: str) -> Delivery:
        async def ack() -> None:
            acks.append(name)

        return Delivery(payload={"n": 1}, meta=EventMeta(source="memory"), identity=name, ack=ack)

    async with TriggerEngine(TriggerConfig(), MemorySagaStore()) as engine:
        active = engine.triggers["joined.on_event"]
        first = await engine.admission.admit(active, delivery("first"))
        await eventually(lambda: runs == [1])
        again = await engine.admission.admit(active, delivery("redelivered"))
        assert (again.outcome, again.saga_id) == (AdmissionOutcome.ACCEPTED, first.saga_id)
        gate.set()
        await eventually(lambda: len(acks) == 2)
    assert runs == [1]
    assert sorted(acks) == ["first", "redelivered"]


async def test_a_completed_unacked_event_settles_at_once_though_its_finisher_holds_the_lease() -> (
    None
):
    # the worker that finished the saga died before acking; its lease on the saga row is
    # still live, its inbox lease expired: the redelivery must not wait for the saga lease
    from datetime import timedelta

    from sagaz.clock import utcnow
    from sagaz.engine.identity import saga_id_for
    from sagaz.records import ClaimOutcome, SagaRecord

    ran: list[int] = []

    class Finished(Saga):
        @trigger(source="memory", channel="finished", idempotency_key=lambda e: e["n"])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: Any) -> None:
            ran.append(ctx["n"])

    trigger_id = "finished.on_event"
    saga_id = saga_id_for(trigger_id, "1")
    store = MemorySagaStore()
    now = utcnow()
    await store.create_saga(
        SagaRecord(
            saga_id=saga_id,
            saga_name="finished",
            status=SagaStatus.COMPLETED,
            context={"n": 1},
            trigger_id=trigger_id,
            owner="dead-worker",
            lease_expires_at=now + timedelta(hours=1),
        )
    )
    await store.claim_inbox(trigger_id, "1", saga_id, "dead-worker", now - timedelta(seconds=1))
    async with TriggerEngine(TriggerConfig(), store) as engine:
        result = await engine.dispatch(trigger_id, {"n": 1})
        assert result.outcome is AdmissionOutcome.ACCEPTED
        await eventually(lambda: engine.metrics.completed[trigger_id] == 1, within=5)
    assert ran == []  # finished before: not run again
    claim = await store.claim_inbox(trigger_id, "1", saga_id, "w", now + timedelta(minutes=1))
    assert claim.outcome is ClaimOutcome.DUPLICATE


async def test_deliveries_of_one_key_admitted_concurrently_start_one_run(tmp_path: Any) -> None:
    # e.g. a webhook retried while its first request is still being admitted, or one key on
    # two Kafka partitions: a durable store yields between the claim and the queue
    from sagaz.events import Delivery
    from sagaz.storage.sqlite import SQLiteSagaStore

    gate = asyncio.Event()
    runs: list[int] = []
    acks: list[int] = []

    class Concurrent(Saga):
        @trigger(source="memory", channel="concurrent", idempotency_key=lambda e: e["n"])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("work")
        async def work(self, ctx: Any) -> None:
            runs.append(ctx["n"])
            await gate.wait()

    def delivery(copy: int) -> Delivery:
        async def ack() -> None:
            acks.append(copy)

        meta = EventMeta(source="memory")
        return Delivery(payload={"n": 1, "copy": copy}, meta=meta, identity=str(copy), ack=ack)

    store = SQLiteSagaStore(tmp_path / "sagaz.db")
    async with store, TriggerEngine(TriggerConfig(), store) as engine:
        active = engine.triggers["concurrent.on_event"]
        results = await asyncio.gather(
            *(engine.admission.admit(active, delivery(copy)) for copy in range(5))
        )
        assert {r.outcome for r in results} == {AdmissionOutcome.ACCEPTED}
        assert len({r.saga_id for r in results}) == 1
        await eventually(lambda: runs == [1])
        gate.set()
        await eventually(lambda: len(acks) == 5)  # all five settled by the one run
        await engine.dispatcher.wait_idle()
        assert len(engine.state.queue) == 0
    assert runs == [1]
    assert sorted(acks) == [0, 1, 2, 3, 4]


class ExplodingListener(SagaListener):
    async def on_trigger_received(self, saga_name: str, event_source: str, event: Any) -> None:
        raise RuntimeError("listener bug")

    async def on_saga_start(self, saga_name: str, saga_id: str, ctx: Any) -> None:
        raise RuntimeError("listener bug")

    async def on_saga_complete(self, saga_name: str, saga_id: str, ctx: Any) -> None:
        raise RuntimeError("listener bug")


async def test_a_failing_listener_is_isolated(caplog: pytest.LogCaptureFixture) -> None:
    done: list[int] = []

    class Observed(Saga):
        @trigger(source="memory", channel="observed")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("one")
        async def one(self, ctx: Any) -> None:
            done.append(ctx["n"])

    store = MemorySagaStore()
    async with TriggerEngine(TriggerConfig(), store, listeners=[ExplodingListener()]) as engine:
        [saga_id] = await engine.fire("observed", {"n": 1})
        await eventually(lambda: sum(engine.metrics.completed.values()) == 1)
    assert done == [1]
    record = await store.get_saga(saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPLETED
    assert "ExplodingListener.on_saga_start failed" in caplog.text


class SqsOrder(BaseModel):
    id: int


async def test_sqs_events_plain_dict_gets_the_message_and_a_model_gets_the_body() -> None:
    from sagaz.engine.decoding import EventDecoder
    from sagaz.events import Delivery

    message = {"MessageId": "m-1", "Body": {"id": 3}, "Attributes": {}}
    delivery = Delivery(
        payload=message,
        decoded=True,
        body='{"id": 3}',  # the SQS source marks its message as an envelope of this body
        identity="m-1",
        meta=EventMeta(source="sqs"),
    )

    def plain(self: Any, event: dict[str, Any]) -> None: ...

    def modelled(self: Any, event: SqsOrder) -> None: ...

    def bare(self: Any, event) -> None:  # type: ignore[no-untyped-def]
        ...

    assert EventDecoder(plain, where="t").decode(delivery)["MessageId"] == "m-1"
    assert EventDecoder(bare, where="t").decode(delivery)["MessageId"] == "m-1"
    assert EventDecoder(modelled, where="t").decode(delivery) == SqsOrder(id=3)


# -- issue 11: handles of fire_event, identity without a key, process-wide listeners --------


async def test_fire_event_handles_of_events_evicted_by_drop_oldest_resolve_to_the_reason() -> None:
    from sagaz.events import NotRun, Reason
    from sagaz.saga.result import SagaResult

    gate = asyncio.Event()
    started: list[int] = []
    make_blocking_saga("evict", gate, started)
    config = TriggerConfig(
        queue_size=2, backpressure_strategy="drop_oldest", max_concurrent_sagas=1
    )
    engine = await sagaz.start_triggers(config, MemorySagaStore())
    try:
        [running] = await sagaz.fire_event("evict", {"n": 0})
        await eventually(lambda: started == [0])  # the only worker holds event 0
        handles = [await sagaz.fire_event("evict", {"n": n}) for n in range(1, 5)]
        assert all(len(ids) == 1 for ids in handles)  # each was accepted when fired
        [evicted_1], [evicted_2], [kept_3], [kept_4] = handles
        waiting = asyncio.ensure_future(engine.wait_for(evicted_2, timeout=5))
        gate.set()
        outcomes = {
            saga_id: await engine.wait_for(saga_id, timeout=5)
            for saga_id in (running, evicted_1, kept_3, kept_4)
        }
        outcomes[evicted_2] = await waiting
    finally:
        await sagaz.stop_triggers()
    for saga_id in (evicted_1, evicted_2):
        outcome = outcomes[saga_id]
        assert isinstance(outcome, NotRun)
        assert outcome.saga_id == saga_id
        assert outcome.reason is Reason.DROPPED_OLDEST
        assert not outcome  # "no result"
    for saga_id in (running, kept_3, kept_4):
        outcome = outcomes[saga_id]
        assert isinstance(outcome, SagaResult)
        assert outcome.status is SagaStatus.COMPLETED
    assert sorted(started) == [0, 3, 4]


async def test_handles_still_queued_or_running_at_shutdown_resolve_to_interrupted() -> None:
    from sagaz.events import NotRun

    gate = asyncio.Event()
    started: list[int] = []
    make_blocking_saga("halt", gate, started)
    config = TriggerConfig(max_concurrent_sagas=1, shutdown_timeout=0.05)
    engine = TriggerEngine(config, MemorySagaStore())
    await engine.start()
    [running] = await engine.fire("halt", {"n": 0})
    await eventually(lambda: started == [0])
    [queued] = await engine.fire("halt", {"n": 1})
    waiting = [asyncio.ensure_future(engine.wait_for(i, timeout=5)) for i in (running, queued)]
    await engine.stop()  # the running saga is cancelled, the queued one never starts
    outcomes = [await w for w in waiting]
    assert outcomes == [NotRun(running, "interrupted"), NotRun(queued, "interrupted")]
    assert await engine.wait_for(queued, timeout=5) == NotRun(queued, "interrupted")


async def test_identical_fire_event_payloads_are_two_events_unless_the_trigger_dedups_content() -> (
    None
):
    runs: list[str] = []

    class Plain(Saga):
        @trigger(source="memory", channel="plain")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("one")
        async def one(self, ctx: Any) -> None:
            runs.append("plain")

    class ByContent(Saga):
        @trigger(source="memory", channel="by-content", dedup="content")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("one")
        async def one(self, ctx: Any) -> None:
            runs.append("content")

    store = MemorySagaStore()
    async with TriggerEngine(TriggerConfig(), store) as engine:
        first = await engine.fire("plain", {"amount": 5})
        second = await engine.fire("plain", {"amount": 5})
        for saga_id in first + second:
            assert await engine.wait_for(saga_id, timeout=5)
        same = await engine.fire("by-content", {"amount": 5})
        assert await engine.wait_for(same[0], timeout=5)
        again = await engine.fire("by-content", {"amount": 5})  # completed: a duplicate
        other = await engine.fire("by-content", {"amount": 6})
        assert await engine.wait_for(other[0], timeout=5)
    assert len(first) == len(second) == 1
    assert first != second  # two calls, two events, two sagas
    assert again == []
    assert other != same
    assert sorted(runs) == ["content", "content", "plain", "plain"]
    assert engine.metrics.reasons["duplicate"] == 1


def test_dedup_option_is_validated_at_class_definition() -> None:
    with pytest.raises(TriggerDefinitionError, match=r"Odd\.on_event.*dedup='body'.*'content'"):

        class Odd(Saga):
            @trigger(source="memory", channel="c", dedup="body")
            def on_event(self, event: Any) -> None: ...

    with pytest.raises(TriggerDefinitionError, match=r"Both\.on_event.*dedup.*idempotency_key"):

        class Both(Saga):
            @trigger(
                source="memory", channel="c", dedup="content", idempotency_key=lambda e: e["id"]
            )
            def on_event(self, event: Any) -> None: ...

    with pytest.raises(TriggerDefinitionError, match=r"Ticks\.on_tick.*cron events always carry"):

        class Ticks(Saga):
            @trigger(source="cron", schedule="@hourly", dedup="content")
            def on_tick(self, event: Any) -> None: ...


class AuditedOrder(BaseModel):
    id: int
    test: bool = False


async def test_process_wide_listeners_get_the_decoded_event_and_the_reason_enum() -> None:
    from sagaz.events import Reason

    class Audit(SagaListener):
        def __init__(self) -> None:
            self.received: list[tuple[str, str, Any]] = []
            self.filtered: list[tuple[Any, Any]] = []
            self.completed: list[str] = []

        async def on_trigger_received(self, saga_name, event_source, event):  # type: ignore[no-untyped-def]
            self.received.append((saga_name, event_source, event))

        async def on_trigger_filtered(self, saga_name: str, event: Any, reason: Reason) -> None:
            self.filtered.append((event, reason))

        async def on_saga_complete(self, saga_name: str, saga_id: str, ctx: Any) -> None:
            self.completed.append(saga_id)

    per_saga = Audit()

    class Orders(Saga):
        saga_name = "audited-orders"
        listeners = [per_saga]

        @trigger(source="memory", channel="audited")
        def on_order(self, order: AuditedOrder) -> dict[str, Any] | None:
            return None if order.test else {"id": order.id}

        @action("one")
        async def one(self, ctx: Any) -> None: ...

    audit = Audit()
    engine = await sagaz.start_triggers(store=MemorySagaStore(), listeners=[audit])
    try:
        [saga_id] = await sagaz.fire_event("audited", {"id": 1})
        await engine.wait_for(saga_id, timeout=5)
        assert await sagaz.fire_event("audited", {"id": 2, "test": True}) == []
    finally:
        await sagaz.stop_triggers()
    for listener in (audit, per_saga):  # the process-wide one in addition to the saga's own
        assert listener.received == [
            ("audited-orders", "memory", AuditedOrder(id=1)),
            ("audited-orders", "memory", AuditedOrder(id=2, test=True)),
        ]
        [(event, reason)] = listener.filtered
        assert event is listener.received[1][2]  # the same object on_trigger_received got
        assert reason is Reason.FILTERED
        assert reason == "filtered"  # a str: existing comparisons keep working
        assert listener.completed == [saga_id]
