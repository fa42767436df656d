"""RabbitMQ acceptance, end to end: raw aio-pika publisher → ``TriggerEngine`` → sagas → store.

Each test defines its saga class (registered for that test only) and checks what a user
would count: completed rows in the store, executions of the steps, dead letters, and what
is left on the broker.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

import sagaz
from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.store_errors import StoreErrors
from sagaz.sources.rabbitmq import RabbitMQSource
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import eventually
from tests.engine_support import (
    HoldCompletion,
    RecordingListener,
    RefusesOneEvent,
    completed_per_message,
    once_each,
)
from tests.fixtures_rabbitmq import Rabbit, close_connections_named

SAGA = "rabbit-orders"
TRIGGER = f"{SAGA}.on_message"


@pytest.fixture
async def store() -> AsyncIterator[MemorySagaStore]:
    """One store shared by every engine of a test (restarts keep their state)."""
    async with MemorySagaStore() as store:
        yield store


def body(n: int) -> bytes:
    return json.dumps({"n": n}).encode()


async def test_5000_messages_complete_once_and_a_restart_redelivers_nothing(
    rabbit: Rabbit, store: MemorySagaStore
) -> None:
    queue = rabbit.queue_name()
    await rabbit.declare(queue)
    runs: Counter[int] = Counter()

    class RabbitOrders(Saga):
        saga_name = SAGA

        @trigger(source="rabbitmq", queue=queue)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            runs[ctx["n"]] += 1

    await rabbit.publish(queue, [body(n) for n in range(5000)])
    config = TriggerConfig(rabbitmq_url=rabbit.url)
    engine = await sagaz.start_triggers(config, store)
    try:
        await eventually(
            lambda: engine.metrics.completed[TRIGGER] >= 5000,
            within=45,
            what="5000 completed sagas",
        )
    finally:
        await sagaz.stop_triggers()
    assert runs == once_each(range(5000))
    assert await completed_per_message(store, SAGA) == once_each(range(5000))
    assert await store.list_dead_letters() == []
    assert await rabbit.ready(queue) == 0  # all acked: closing the connection handed none back

    # a clean restart: same queue, same store. Anything handed back would sit before the new
    # message in the queue, so once the new message's saga completed, nothing else came.
    async with TriggerEngine(config, store) as again:
        await rabbit.publish(queue, [body(5000)])
        await eventually(lambda: again.metrics.completed[TRIGGER] == 1, what="the new message")
        assert again.metrics.received[TRIGGER] == 1
    assert runs == once_each(range(5001))
    assert await completed_per_message(store, SAGA) == once_each(range(5001))
    assert await rabbit.ready(queue) == 0


async def test_out_of_order_completion_survives_a_restart_with_one_saga_per_message(
    rabbit: Rabbit, store: MemorySagaStore
) -> None:
    """Odd messages block in their second step; n % 4 == 2 complete but are not acked yet;
    n % 4 == 0 complete and are acked. Stop mid-way (stuck sagas cancelled, un-acked),
    restart, then release the gate."""
    queue = rabbit.queue_name()
    await rabbit.declare(queue)
    count = 40
    gate = asyncio.Event()
    first: Counter[int] = Counter()
    second_started: Counter[int] = Counter()
    second_done: Counter[int] = Counter()

    class RabbitOrders(Saga):
        saga_name = SAGA

        @trigger(source="rabbitmq", queue=queue, idempotency_key=lambda e: e["n"])
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("first")
        async def first(self, ctx: SagaContext) -> None:
            first[ctx["n"]] += 1

        @action("second")
        async def second(self, ctx: SagaContext) -> None:
            second_started[ctx["n"]] += 1
            if ctx["n"] % 2:
                await gate.wait()
            second_done[ctx["n"]] += 1

    odd = set(range(1, count, 2))
    unacked = set(range(2, count, 4))
    acked = set(range(0, count, 4))
    held = HoldCompletion(gate, unacked)
    config = TriggerConfig(rabbitmq_url=rabbit.url, shutdown_timeout=0.2)
    await rabbit.publish(queue, [body(n) for n in range(count)])
    async with TriggerEngine(config, store, listeners=[held]) as engine:
        await eventually(
            lambda: set(second_started) == set(range(count)) and held.held == unacked,
            what="every saga in its second step or held",
        )
        assert engine.metrics.completed[TRIGGER] == len(acked)
    # the 20 stuck and the 10 held were cancelled: never acked, so handed back
    await rabbit.wait_ready(queue, len(odd) + len(unacked))
    assert await completed_per_message(store, SAGA) == Counter(acked | unacked)

    async with TriggerEngine(config, store) as again:
        # a publisher retry of finished messages: the inbox knows them
        await rabbit.publish(queue, [body(n) for n in sorted(acked)])
        # the completed-but-unacked ones come back as duplicates too: their inbox rows were
        # completed with their sagas' completed state (one store operation), so they are acked
        # without running again
        await eventually(
            lambda: again.metrics.reasons["duplicate"] == len(acked) + len(unacked),
            what="duplicates refused, finished ones included",
        )
        assert again.metrics.completed[TRIGGER] == 0
        await eventually(
            lambda: all(second_started[n] == 2 for n in odd),
            what="the stuck sagas resumed at their second step",
        )
        gate.set()
        await eventually(
            lambda: again.metrics.completed[TRIGGER] == len(odd),
            what="the released sagas",
        )
        assert again.metrics.received[TRIGGER] == len(odd) + len(unacked) + len(acked)
    assert await completed_per_message(store, SAGA) == once_each(range(count))
    assert first == once_each(range(count))  # resumed after the completed step
    assert second_done == once_each(range(count))
    assert await rabbit.ready(queue) == 0


class Order(BaseModel):
    n: int
    user: str


async def test_poison_messages_are_dead_lettered_and_the_rest_keeps_flowing(
    rabbit: Rabbit, store: MemorySagaStore
) -> None:
    queue, dead_letters = rabbit.queue_name(), rabbit.queue_name("sagaz-rmq-dlq")
    await rabbit.declare(queue)
    runs: Counter[int] = Counter()

    class RabbitOrders(Saga):
        saga_name = SAGA

        @trigger(source="rabbitmq", queue=queue, dead_letter_topic=dead_letters)
        def on_message(self, event: Order) -> dict[str, Any]:
            return {"n": event.n, "user": event.user}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            runs[ctx["n"]] += 1

    poison = [b"{not json", b'{"n": "abc", "user": "u"}', b'{"n": 7}']
    valid = [json.dumps({"n": n, "user": "u"}).encode() for n in range(6)]
    mixed = [valid[0], poison[0], valid[1], valid[2], poison[1], valid[3], poison[2], *valid[4:]]
    await rabbit.publish(queue, mixed)
    async with TriggerEngine(TriggerConfig(rabbitmq_url=rabbit.url), store) as engine:
        await eventually(
            lambda: (
                engine.metrics.completed[TRIGGER] == len(valid)
                and engine.metrics.dead_lettered[TRIGGER] == len(poison)
            ),
            what="the valid messages completed and the poison dead-lettered",
        )
        # and later messages still flow
        await rabbit.publish(queue, [json.dumps({"n": 6, "user": "u"}).encode()])
        await eventually(lambda: engine.metrics.completed[TRIGGER] == 7, what="a later message")
    assert runs == once_each(range(7))

    stored = await store.list_dead_letters(trigger_id=TRIGGER)
    assert [d.payload for d in stored] == poison
    assert {d.reason for d in stored} == {"invalid"}
    assert "Invalid JSON" in stored[0].error
    assert "valid integer" in stored[1].error
    assert "user" in stored[2].error and "Field required" in stored[2].error

    on_broker = await rabbit.take_all(dead_letters)
    assert [m.body for m in on_broker] == poison
    assert [m.headers["x-sagaz-reason"] for m in on_broker] == ["invalid"] * 3
    assert [m.headers["x-sagaz-error"] for m in on_broker] == [d.error for d in stored]
    assert {m.headers["x-sagaz-trigger"] for m in on_broker} == {TRIGGER}
    assert await rabbit.ready(queue) == 0  # poison is acked, not requeued forever


async def test_connection_dropped_by_the_broker_still_one_saga_per_message(
    rabbit: Rabbit, store: MemorySagaStore
) -> None:
    """Sagas are in flight when the broker drops the connection: their acks are lost, the
    broker hands the messages back, and they arrive again while the sagas still run."""
    queue = rabbit.queue_name()
    await rabbit.declare(queue)
    gate = asyncio.Event()
    started: Counter[int] = Counter()
    done: Counter[int] = Counter()
    in_flight = set(range(20))

    class RabbitOrders(Saga):
        saga_name = SAGA

        @trigger(source="rabbitmq", queue=queue)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            started[ctx["n"]] += 1
            if ctx["n"] in in_flight:
                await gate.wait()
            done[ctx["n"]] += 1

    errors = RecordingListener()
    before, during, after = range(0, 200), range(200, 400), range(400, 600)
    await rabbit.publish(queue, [body(n) for n in before])
    config = TriggerConfig(rabbitmq_url=rabbit.url)
    async with TriggerEngine(config, store, listeners=[errors]) as engine:
        await eventually(
            lambda: len(done) == len(before) - len(in_flight) and set(started) >= in_flight,
            what="the first batch done but for 20 sagas in flight",
        )
        source = engine.sources[TRIGGER]
        assert isinstance(source, RabbitMQSource)
        assert await close_connections_named(source.connection_name) == 1
        await eventually(lambda: errors.errors, what="the connection loss reported")
        await rabbit.publish(queue, [body(n) for n in during])  # while reconnecting
        await eventually(lambda: len(done) >= 300, within=30, what="consumption resumed")
        gate.set()
        await rabbit.publish(queue, [body(n) for n in after])
        await eventually(lambda: len(done) == 600, within=30, what="every message done")
        assert done == once_each(range(600))
    assert await completed_per_message(store, SAGA) == once_each(range(600))
    assert started - Counter(range(600)) == Counter()  # no step ran twice
    assert await rabbit.ready(queue) == 0


async def test_a_message_the_store_keeps_refusing_is_dead_lettered_not_requeued_for_ever(
    rabbit: Rabbit, monkeypatch: pytest.MonkeyPatch
) -> None:
    # it was nacked with requeue: RabbitMQ delivered it again at once, for ever (about 700
    # failed claims a second here, each logged as an error), and nothing dead-lettered it
    monkeypatch.setattr(StoreErrors, "initial", 0.05)
    monkeypatch.setattr(StoreErrors, "maximum", 0.2)
    queue = rabbit.queue_name()
    await rabbit.declare(queue)
    ran: list[int] = []

    class RabbitOrders(Saga):
        saga_name = SAGA

        @trigger(source="rabbitmq", queue=queue, idempotency_key=lambda e: str(e["n"]))
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            ran.append(ctx["n"])

    await rabbit.publish(queue, [body(n) for n in range(5)])
    async with (
        RefusesOneEvent("2") as store,
        TriggerEngine(TriggerConfig(rabbitmq_url=rabbit.url), store),
    ):
        dead = await eventually(store.list_dead_letters, within=30, what="its dead letter")
        assert [(d.reason, d.payload) for d in dead] == [("store_error", body(2))]
        await eventually(lambda: sorted(ran) == [0, 1, 3, 4], what="the others' sagas")
        assert store.failures == StoreErrors.attempts  # each attempt once: no redelivery loop
    assert await rabbit.ready(queue) == 0  # acked once dead-lettered
