"""SQS acceptance, end to end: raw aiobotocore producer → ``TriggerEngine`` → sagas → store,
on moto's SQS server.

Each test defines its saga class (registered for that test only) and checks what a user
would count: completed rows in the store, executions of the steps, dead letters, and what the
queue still holds (``ApproximateNumberOfMessages`` / ``...NotVisible``).

moto's ``SendMessage`` and ``ReceiveMessage`` cost O(messages in the queue) each, so bulk
messages go in waves that keep the queue's backlog small (``send_paced``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import sagaz
from sagaz import (
    EventMeta,
    Saga,
    SagaContext,
    SagaStatus,
    TriggerConfig,
    action,
    trigger,
)
from sagaz.engine.engine import TriggerEngine
from sagaz.storage.memory import MemorySagaStore
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.testing import continually, eventually
from tests.engine_support import HoldCompletion, completed_per_message, once_each
from tests.fixtures_sqs import (
    MakeQueue,
    queue_counts,
    send_messages,
    sqs_source_options,
    wait_for_counts,
)

SAGA = "sqs-orders"
TRIGGER = f"{SAGA}.on_message"


@pytest.fixture
async def store() -> AsyncIterator[MemorySagaStore]:
    """One store shared by every engine of a test (restarts keep their state)."""
    async with MemorySagaStore() as store:
        yield store


@pytest.fixture
def sqs_options(sqs_endpoint: str) -> dict[str, Any]:
    """Trigger options pointing at moto, with a short long poll so stops are quick."""
    return {"wait_time": 1, **sqs_source_options(sqs_endpoint)}


# -- queue helpers ---------------------------------------------------------------------------
def body(n: int) -> str:
    return json.dumps({"n": n})


async def send_paced(
    client: Any,
    queue_url: str,
    bodies: list[str],
    received: Callable[[], int],
    *,
    wave: int = 20,
    backlog: int = 20,
) -> None:
    """Send ``bodies`` in waves of ``wave``, each once the consumer left fewer than
    ``backlog - wave`` messages unreceived (moto slows down with every queued message)."""
    for start in range(0, len(bodies), wave):

        def caught_up(start: int = start) -> bool:
            return start - received() <= backlog - wave

        await eventually(caught_up, within=30, what=f"the consumer to catch up before {start}")
        await send_messages(client, queue_url, bodies[start : start + wave])


# -- 1. bulk: exactly once, and a clean restart redelivers nothing ---------------------------
async def test_5000_messages_complete_once_and_a_restart_redelivers_nothing(
    sqs_client: Any, sqs_queue_url: str, sqs_options: dict[str, Any], store: MemorySagaStore
) -> None:
    total = 5000
    runs: Counter[int] = Counter()

    class SQSOrders(Saga):
        saga_name = SAGA

        @trigger(source="sqs", queue_url=sqs_queue_url, **sqs_options)
        def on_message(self, event: dict[str, Any], meta: EventMeta) -> dict[str, Any]:
            # annotated: the Body validated into the type; the message's identity is in meta
            assert event["MessageId"] == meta.message_id  # a plain dict gets the whole message
            return {"n": event["Body"]["n"], "message_id": meta.message_id}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            runs[ctx["n"]] += 1

    config = TriggerConfig()
    started = time.monotonic()
    engine = await sagaz.start_triggers(config, store)
    try:
        await send_paced(
            sqs_client,
            sqs_queue_url,
            [body(n) for n in range(total)],
            lambda: engine.metrics.received[TRIGGER],
        )
        await eventually(
            lambda: engine.metrics.completed[TRIGGER] >= total,
            within=30,
            what=f"{total} completed sagas",
        )
        elapsed = time.monotonic() - started
    finally:
        await sagaz.stop_triggers()
    print(
        f"\nsqs (moto) -> engine -> MemorySagaStore: {total} sagas in {elapsed:.1f}s "
        f"({total / elapsed:.0f}/s, paced sends included; moto-bound)"
    )
    assert runs == once_each(range(total))
    assert await completed_per_message(store, SAGA) == once_each(range(total))
    rows = await store.list_sagas(status=SagaStatus.COMPLETED, saga_name=SAGA, limit=100_000)
    assert len({row.context["message_id"] for row in rows}) == total  # one per SQS message
    assert engine.metrics.received[TRIGGER] == total
    assert engine.metrics.reasons["duplicate"] == 0
    assert await store.list_dead_letters() == []
    # the clean stop flushed every delete: nothing left to come back, visible or in flight
    assert await queue_counts(sqs_client, sqs_queue_url) == (0, 0)

    # a clean restart (a new engine, same queue and store): only a new message arrives
    again = await sagaz.start_triggers(config, store)
    try:
        await send_messages(sqs_client, sqs_queue_url, [body(total)])
        await eventually(lambda: again.metrics.completed[TRIGGER] == 1, what="the new message")

        async def nothing_else() -> bool:
            return again.metrics.received[TRIGGER] == 1

        await continually(
            nothing_else, during=1.5, what="only the new message received"
        )  # > 1 poll
    finally:
        await sagaz.stop_triggers()
    assert again.metrics.reasons["duplicate"] == 0
    assert runs == once_each(range(total + 1))
    assert await completed_per_message(store, SAGA) == once_each(range(total + 1))
    assert await queue_counts(sqs_client, sqs_queue_url) == (0, 0)


# -- 2. out-of-order completion, stop mid-way, restart ---------------------------------------


async def test_out_of_order_completion_survives_a_restart_with_one_saga_per_message(
    sqs_client: Any, sqs_queue_url: str, sqs_options: dict[str, Any], tmp_path: Path
) -> None:
    """Odd messages block in their second step; n % 4 == 2 complete but are not deleted yet;
    n % 4 == 0 complete and are deleted. Stop mid-way (stuck sagas cancelled, released),
    restart on the same SQLite store, then release the gate."""
    count = 40
    gate = asyncio.Event()
    first: Counter[int] = Counter()
    second_started: Counter[int] = Counter()
    second_done: Counter[int] = Counter()

    class SQSOrders(Saga):
        saga_name = SAGA

        @trigger(
            source="sqs",
            queue_url=sqs_queue_url,
            visibility_timeout=30,
            idempotency_key=lambda e: e["Body"]["n"],
            **sqs_options,
        )
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["Body"]["n"]}

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
    config = TriggerConfig(shutdown_timeout=0.2)
    await send_messages(sqs_client, sqs_queue_url, [body(n) for n in range(count)])
    async with SQLiteSagaStore(tmp_path / "sagaz.db") as store:
        async with TriggerEngine(config, store, listeners=[held]) as engine:
            await eventually(
                lambda: set(second_started) == set(range(count)) and held.held == unacked,
                what="every saga in its second step or held",
            )
            assert engine.metrics.completed[TRIGGER] == len(acked)
        stopped = time.monotonic()
        # the 20 stuck and the 10 held were cancelled: never deleted, but released at once
        # (visibility 0) rather than after the 30 s visibility timeout
        await wait_for_counts(sqs_client, sqs_queue_url, (len(odd) + len(unacked), 0))
        assert time.monotonic() - stopped < 10
        assert await completed_per_message(store, SAGA) == Counter(acked | unacked)

        async with TriggerEngine(config, store) as again:
            # a producer retry of finished messages (new MessageIds, same key): the inbox
            # knows them
            await send_messages(sqs_client, sqs_queue_url, [body(n) for n in sorted(acked)])
            await eventually(
                lambda: (
                    again.metrics.reasons["duplicate"] == len(acked)
                    and again.metrics.completed[TRIGGER] == len(unacked)
                ),
                what="duplicates refused and completed-but-undeleted ones settled",
            )
            await eventually(
                lambda: all(second_started[n] == 2 for n in odd),
                what="the stuck sagas resumed at their second step",
            )
            gate.set()
            await eventually(
                lambda: again.metrics.completed[TRIGGER] == len(unacked) + len(odd),
                what="the released sagas",
            )
            assert again.metrics.received[TRIGGER] == len(odd) + len(unacked) + len(acked)
        assert await completed_per_message(store, SAGA) == once_each(range(count))
    assert first == once_each(range(count))  # resumed after the completed step
    assert second_done == once_each(range(count))
    assert all(second_started[n] == 1 for n in acked | unacked)  # finished work never reran
    assert await queue_counts(sqs_client, sqs_queue_url) == (0, 0)


# -- 3. poison messages: dead-lettered in the store and the DLQ queue, the rest flows -------
class Order(BaseModel):
    n: int
    user: str


async def test_poison_messages_are_dead_lettered_and_the_rest_keeps_flowing(
    sqs_client: Any,
    sqs_queue_url: str,
    make_sqs_queue: MakeQueue,
    sqs_options: dict[str, Any],
    store: MemorySagaStore,
) -> None:
    dlq_url = await make_sqs_queue("sagaz-engine-dlq")
    runs: Counter[int] = Counter()

    class SQSOrders(Saga):
        saga_name = SAGA

        @trigger(
            source="sqs",
            queue_url=sqs_queue_url,
            dead_letter_topic=dlq_url.rsplit("/", 1)[1],  # a queue name, resolved by the source
            **sqs_options,
        )
        def on_message(self, event: Order) -> dict[str, Any]:
            return {"n": event.n, "user": event.user}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            runs[ctx["n"]] += 1

    poison = ["{not json", '{"n": "abc", "user": "u"}', '{"n": 7}']
    valid = [json.dumps({"n": n, "user": "u"}) for n in range(6)]
    mixed = [valid[0], poison[0], valid[1], valid[2], poison[1], valid[3], poison[2], *valid[4:]]
    ids = await send_messages(sqs_client, sqs_queue_url, mixed)
    poison_ids = {ids[1]: poison[0], ids[4]: poison[1], ids[6]: poison[2]}
    async with TriggerEngine(TriggerConfig(), store) as engine:
        await eventually(
            lambda: (
                engine.metrics.completed[TRIGGER] == len(valid)
                and engine.metrics.dead_lettered[TRIGGER] == len(poison)
            ),
            what="the valid messages completed and the poison dead-lettered",
        )
        # and later messages still flow
        await send_messages(sqs_client, sqs_queue_url, [json.dumps({"n": 6, "user": "u"})])
        await eventually(lambda: engine.metrics.completed[TRIGGER] == 7, what="a later message")
        assert engine.metrics.reasons["invalid"] == len(poison)
    assert runs == once_each(range(7))
    assert await completed_per_message(store, SAGA) == once_each(range(7))

    stored = {d.payload["MessageId"]: d for d in await store.list_dead_letters(trigger_id=TRIGGER)}
    assert set(stored) == set(poison_ids)
    assert {d.reason for d in stored.values()} == {"invalid"}
    assert {d.source for d in stored.values()} == {"sqs"}
    assert "Invalid JSON" in stored[ids[1]].error
    assert "valid integer" in stored[ids[4]].error
    assert "user" in stored[ids[6]].error and "Field required" in stored[ids[6]].error

    on_dlq: list[dict[str, Any]] = []

    async def three_on_the_dlq() -> bool:
        response = await sqs_client.receive_message(
            QueueUrl=dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        )
        on_dlq.extend(response.get("Messages", []))
        return len(on_dlq) >= len(poison)

    await eventually(three_on_the_dlq, what="the dead letters on the DLQ queue")
    assert sorted(m["Body"] for m in on_dlq) == sorted(poison)  # the original text
    for message in on_dlq:
        attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
        (message_id,) = [i for i, text in poison_ids.items() if text == message["Body"]]
        assert attributes["x-sagaz-reason"] == "invalid"
        assert attributes["x-sagaz-error"] == stored[message_id].error
        assert attributes["x-sagaz-trigger"] == TRIGGER
        assert attributes["x-sagaz-queue"] == sqs_queue_url
        assert attributes["x-sagaz-attempts"] == str(stored[message_id].attempts)
    assert len(on_dlq) == len(poison)
    # poison is deleted, not redelivered forever
    assert await queue_counts(sqs_client, sqs_queue_url) == (0, 0)


# -- 4. a saga longer than the visibility timeout ------------------------------------------
async def test_visibility_is_extended_while_a_long_saga_runs(
    sqs_client: Any, sqs_queue_url: str, sqs_options: dict[str, Any], store: MemorySagaStore
) -> None:
    visibility = 2
    gate = asyncio.Event()
    runs: Counter[int] = Counter()
    started_at: list[float] = []

    class SQSOrders(Saga):
        saga_name = SAGA

        @trigger(
            source="sqs", queue_url=sqs_queue_url, visibility_timeout=visibility, **sqs_options
        )
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["Body"]["n"]}

        @action("long")
        async def long(self, ctx: SagaContext) -> None:
            started_at.append(time.monotonic())
            await gate.wait()  # opened by the test after 2.5 visibility timeouts
            runs[ctx["n"]] += 1

    await send_messages(sqs_client, sqs_queue_url, [body(1)])
    async with TriggerEngine(TriggerConfig(), store) as engine:
        await eventually(lambda: started_at, what="the saga started")

        async def still_hidden_and_once() -> bool:
            counts = await queue_counts(sqs_client, sqs_queue_url)
            assert counts == (0, 1), f"queue counts {counts}: the message became visible"
            return engine.metrics.received[TRIGGER] == 1

        await continually(
            still_hidden_and_once, during=2.5 * visibility, what="one hidden delivery"
        )
        gate.set()
        await eventually(lambda: engine.metrics.completed[TRIGGER] == 1, what="the saga done")
        ran_for = time.monotonic() - started_at[0]
        await wait_for_counts(sqs_client, sqs_queue_url, (0, 0))  # deleted after completion
        assert engine.metrics.received[TRIGGER] == 1
        assert engine.metrics.reasons["duplicate"] == 0
    assert ran_for >= 2.5 * visibility
    assert runs == Counter({1: 1})
    (row,) = await store.list_sagas(status=SagaStatus.COMPLETED, saga_name=SAGA)
    assert row.context["n"] == 1
    assert len(started_at) == 1


# -- 5. block backpressure -------------------------------------------------------------------
async def test_block_backpressure_stops_receiving_without_losing_messages(
    sqs_client: Any, sqs_queue_url: str, sqs_options: dict[str, Any], store: MemorySagaStore
) -> None:
    total, queue_size, concurrency = 40, 5, 2
    gate = asyncio.Event()
    entered: Counter[int] = Counter()
    finished: Counter[int] = Counter()

    class SQSOrders(Saga):
        saga_name = SAGA

        @trigger(source="sqs", queue_url=sqs_queue_url, **sqs_options)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["Body"]["n"]}

        @action("slow")
        async def slow(self, ctx: SagaContext) -> None:
            entered[ctx["n"]] += 1
            await gate.wait()
            finished[ctx["n"]] += 1

    await send_messages(sqs_client, sqs_queue_url, [body(n) for n in range(total)])
    config = TriggerConfig(
        queue_size=queue_size, backpressure_strategy="block", max_concurrent_sagas=concurrency
    )
    async with TriggerEngine(config, store) as engine:
        assert engine.state is not None
        queue = engine.state.queue
        # the stall: the source stops at the event it cannot put (admitted, blocked in
        # put()) and receives nothing more; taken from SQS: that one's batch and the
        # earlier ones (max_messages = queue_size)
        blocked = concurrency + queue_size + 1
        await eventually(
            lambda: (
                len(entered) == concurrency
                and len(queue) == queue_size
                and engine.metrics.received[TRIGGER] == blocked
            ),
            what="2 sagas stuck, a full queue and one event blocked",
        )
        taken = await queue_counts(sqs_client, sqs_queue_url)
        assert taken[0] + taken[1] == total
        assert blocked <= taken[1] <= blocked + queue_size - 1, taken

        async def stalled() -> bool:
            counts = await queue_counts(sqs_client, sqs_queue_url)
            assert counts == taken, f"queue counts {counts} while blocked, before {taken}"
            return len(entered) == concurrency and engine.metrics.received[TRIGGER] == blocked

        await continually(stalled, during=2.5, what="the stall")  # > 2 long polls of 1 s
        gate.set()
        await eventually(lambda: len(finished) == total, within=20, what="every message done")
        await wait_for_counts(sqs_client, sqs_queue_url, (0, 0))
        assert engine.metrics.received[TRIGGER] == total
        assert engine.metrics.max_in_flight == concurrency
        dropped = {r: c for r, c in engine.metrics.reasons.items() if c}
        assert dropped == {}, f"admission reasons under block: {dropped}"
    assert entered == finished == once_each(range(total))
    assert await completed_per_message(store, SAGA) == once_each(range(total))


async def test_stopped_while_blocked_every_message_comes_back_at_once_and_completes(
    sqs_client: Any, sqs_queue_url: str, sqs_options: dict[str, Any], store: MemorySagaStore
) -> None:
    """A stop during the stall: the running sagas are cancelled, the queued and the blocked
    events nacked, the rest of the source's batch released — all visible again at once."""
    total = 40
    gate = asyncio.Event()
    entered: Counter[int] = Counter()
    finished: Counter[int] = Counter()

    class SQSOrders(Saga):
        saga_name = SAGA

        @trigger(source="sqs", queue_url=sqs_queue_url, visibility_timeout=30, **sqs_options)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["Body"]["n"]}

        @action("slow")
        async def slow(self, ctx: SagaContext) -> None:
            entered[ctx["n"]] += 1
            await gate.wait()
            finished[ctx["n"]] += 1

    await send_messages(sqs_client, sqs_queue_url, [body(n) for n in range(total)])
    config = TriggerConfig(
        queue_size=5, backpressure_strategy="block", max_concurrent_sagas=2, shutdown_timeout=0.2
    )
    async with TriggerEngine(config, store) as engine:
        await eventually(
            lambda: len(entered) == 2 and engine.metrics.received[TRIGGER] == 8,
            what="the stall",
        )
        _visible, in_flight = await queue_counts(sqs_client, sqs_queue_url)
        assert in_flight >= 8
    stuck = set(entered)
    # handed back by the stop, not after the 30 s visibility timeout
    await wait_for_counts(sqs_client, sqs_queue_url, (total, 0), within=3)
    assert finished == Counter()
    assert await completed_per_message(store, SAGA) == Counter()

    gate.set()
    async with TriggerEngine(config, store) as again:
        await eventually(lambda: len(finished) == total, within=20, what="every message done")
        await wait_for_counts(sqs_client, sqs_queue_url, (0, 0))
        assert again.metrics.received[TRIGGER] == total
    assert finished == once_each(range(total))
    # only the 2 cancelled mid-step entered their step twice (resumed, same saga)
    assert entered == once_each(range(total)) + Counter(stuck)
    assert await completed_per_message(store, SAGA) == once_each(range(total))
