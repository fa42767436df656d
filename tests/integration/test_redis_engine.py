"""Redis Streams acceptance, end to end: raw redis-py producer → ``TriggerEngine`` → sagas.

Each test defines its saga class (registered for that test only) and checks what a user
would count: completed rows in the store, executions of the steps, dead letters, and what
the consumer group still holds (``XPENDING``, lag).
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import sagaz
from sagaz import Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.sources.redis import RedisStreamSource
from sagaz.storage.memory import MemorySagaStore
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.testing import eventually
from tests.engine_support import HoldCompletion, RecordingListener, completed_per_message, once_each
from tests.fixtures_redis import GROUP, Streams, kill_connections_of

SAGA = "redis-orders"
TRIGGER = f"{SAGA}.on_message"


@pytest.fixture
async def store() -> AsyncIterator[MemorySagaStore]:
    """One store shared by every engine of a test (restarts keep their state)."""
    async with MemorySagaStore() as store:
        yield store


def body(n: int) -> bytes:
    return json.dumps({"n": n}).encode()


async def test_5000_entries_complete_once_and_a_restart_redelivers_nothing(
    streams: Streams, store: MemorySagaStore
) -> None:
    stream = streams.name()
    runs: Counter[int] = Counter()

    class RedisOrders(Saga):
        saga_name = SAGA

        @trigger(source="redis", stream=stream, consumer_group=GROUP, start_id="0")
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            runs[ctx["n"]] += 1

    await streams.add(stream, [body(n) for n in range(5000)])
    config = TriggerConfig(redis_url=streams.url)
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
    assert (await streams.pending(stream), await streams.lag(stream)) == (0, 0)

    # a clean restart (a new consumer of the same group, same store): a stream is read in
    # order, so once the new entry's saga completed, nothing else came before it
    async with TriggerEngine(config, store) as again:
        await streams.add(stream, [body(5000)])
        await eventually(lambda: again.metrics.completed[TRIGGER] == 1, what="the new entry")
        assert again.metrics.received[TRIGGER] == 1
    assert runs == once_each(range(5001))
    assert await completed_per_message(store, SAGA) == once_each(range(5001))
    assert (await streams.pending(stream), await streams.lag(stream)) == (0, 0)


async def test_out_of_order_completion_survives_a_restart_with_one_saga_per_entry(
    streams: Streams, store: MemorySagaStore
) -> None:
    """Odd entries block in their second step; n % 4 == 2 complete but are not acked yet;
    n % 4 == 0 complete and are acked. Stop mid-way (stuck sagas cancelled, left pending),
    restart under the same consumer name, then release the gate."""
    stream = streams.name()
    count = 40
    gate = asyncio.Event()
    first: Counter[int] = Counter()
    second_started: Counter[int] = Counter()
    second_done: Counter[int] = Counter()

    class RedisOrders(Saga):
        saga_name = SAGA

        @trigger(
            source="redis",
            stream=stream,
            consumer_group=GROUP,
            consumer="worker-1",
            start_id="0",
            idempotency_key=lambda e: e["n"],
        )
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
    config = TriggerConfig(redis_url=streams.url, shutdown_timeout=0.2)
    await streams.add(stream, [body(n) for n in range(count)])
    async with TriggerEngine(config, store, listeners=[held]) as engine:
        await eventually(
            lambda: set(second_started) == set(range(count)) and held.held == unacked,
            what="every saga in its second step or held",
        )
        assert engine.metrics.completed[TRIGGER] == len(acked)
    # the 20 stuck and the 10 held were cancelled: never acked, so still pending
    assert await streams.pending(stream) == len(odd) + len(unacked)
    assert await completed_per_message(store, SAGA) == Counter(acked | unacked)

    async with TriggerEngine(config, store) as again:
        # a producer retry of finished events (new entries, same key): the inbox knows them
        await streams.add(stream, [body(n) for n in sorted(acked)])
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
    assert (await streams.pending(stream), await streams.lag(stream)) == (0, 0)


class Order(BaseModel):
    n: int
    user: str


async def test_poison_entries_are_dead_lettered_and_the_rest_keeps_flowing(
    streams: Streams, store: MemorySagaStore
) -> None:
    stream, dead_letters = streams.name(), streams.name("sagaz-engine-dlq")
    runs: Counter[int] = Counter()

    class RedisOrders(Saga):
        saga_name = SAGA

        @trigger(
            source="redis",
            stream=stream,
            consumer_group=GROUP,
            start_id="0",
            dead_letter_topic=dead_letters,
        )
        def on_message(self, event: Order) -> dict[str, Any]:
            return {"n": event.n, "user": event.user}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            runs[ctx["n"]] += 1

    poison = [b"{not json", b'{"n": "abc", "user": "u"}', b'{"n": 7}']
    valid = [json.dumps({"n": n, "user": "u"}).encode() for n in range(6)]
    mixed = [valid[0], poison[0], valid[1], valid[2], poison[1], valid[3], poison[2], *valid[4:]]
    ids = await streams.add(stream, mixed)
    async with TriggerEngine(TriggerConfig(redis_url=streams.url), store) as engine:
        await eventually(
            lambda: (
                engine.metrics.completed[TRIGGER] == len(valid)
                and engine.metrics.dead_lettered[TRIGGER] == len(poison)
            ),
            what="the valid entries completed and the poison dead-lettered",
        )
        # and later entries still flow
        await streams.add(stream, [json.dumps({"n": 6, "user": "u"}).encode()])
        await eventually(lambda: engine.metrics.completed[TRIGGER] == 7, what="a later entry")
    assert runs == once_each(range(7))

    stored = await store.list_dead_letters(trigger_id=TRIGGER)
    assert [d.payload for d in stored] == poison
    assert {d.reason for d in stored} == {"invalid"}
    assert "Invalid JSON" in stored[0].error
    assert "valid integer" in stored[1].error
    assert "user" in stored[2].error and "Field required" in stored[2].error

    on_broker = [fields for _, fields in await streams.client.xrange(dead_letters)]
    assert [f[b"payload"] for f in on_broker] == poison
    assert [f[b"reason"] for f in on_broker] == [b"invalid"] * 3
    assert [f[b"error"].decode() for f in on_broker] == [d.error for d in stored]
    assert [f[b"entry_id"].decode() for f in on_broker] == [ids[1], ids[4], ids[6]]
    assert (await streams.pending(stream), await streams.lag(stream)) == (0, 0)


async def test_connection_killed_by_the_server_still_one_saga_per_entry(
    streams: Streams, store: MemorySagaStore
) -> None:
    """Sagas are in flight and the source blocks in ``XREADGROUP`` when the server kills its
    connection; entries keep coming before, during and after."""
    stream = streams.name()
    gate = asyncio.Event()
    started: Counter[int] = Counter()
    done: Counter[int] = Counter()
    in_flight = set(range(20))

    class RedisOrders(Saga):
        saga_name = SAGA

        @trigger(source="redis", stream=stream, consumer_group=GROUP, start_id="0")
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
    await streams.add(stream, [body(n) for n in before])
    config = TriggerConfig(redis_url=streams.url)
    async with TriggerEngine(config, store, listeners=[errors]) as engine:
        await eventually(
            lambda: len(done) == len(before) - len(in_flight) and set(started) >= in_flight,
            what="the first batch done but for 20 sagas in flight",
        )
        source = engine.sources[TRIGGER]
        assert isinstance(source, RedisStreamSource)
        assert await kill_connections_of(streams, source) >= 1
        await streams.add(stream, [body(n) for n in during])
        await eventually(lambda: len(done) == 380, what="consumption resumed")
        assert await kill_connections_of(streams, source) >= 1  # killed while blocked
        gate.set()
        await streams.add(stream, [body(n) for n in after])
        await eventually(lambda: len(done) == 600, within=20, what="every entry done")
        assert done == once_each(range(600))
        await eventually(lambda: errors.errors, what="the connection loss reported")
    assert await completed_per_message(store, SAGA) == once_each(range(600))
    assert started == once_each(range(600))  # no step ran twice
    assert (await streams.pending(stream), await streams.lag(stream)) == (0, 0)


CRASHING_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from typing import Any

    import sagaz
    from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
    from sagaz.storage.sqlite import SQLiteSagaStore

    stream, group, database, url = sys.argv[1:5]


    class RedisOrders(Saga):
        saga_name = "redis-orders"

        @trigger(source="redis", stream=stream, consumer_group=group, consumer="doomed",
                 start_id="0")
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            await asyncio.Event().wait()  # never finishes: the process is killed meanwhile


    async def main() -> None:
        config = TriggerConfig(redis_url=url, lease_seconds=1.5, worker_id="doomed-worker")
        await sagaz.start_triggers(config, SQLiteSagaStore(database))
        await asyncio.Event().wait()


    asyncio.run(main())
    """
)


async def test_entries_of_a_killed_engine_are_claimed_and_completed_by_another(
    streams: Streams, tmp_path: Path
) -> None:
    """An engine process is SIGKILLed with every saga mid-step and every entry pending; a
    second engine (another worker id and consumer) claims the idle entries, takes over the
    expired inbox leases and completes each saga once."""
    stream = streams.name()
    count = 20
    database = tmp_path / "sagaz.db"
    script = tmp_path / "crashing_worker.py"
    script.write_text(CRASHING_WORKER)
    ids = await streams.add(stream, [body(n) for n in range(count)])
    done: Counter[int] = Counter()
    interrupted: set[str] = set()

    class RedisOrders(Saga):
        saga_name = SAGA

        @trigger(
            source="redis",
            stream=stream,
            consumer_group=GROUP,
            consumer="survivor",
            start_id="0",
            claim_idle_ms=300,
        )
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            done[ctx["n"]] += 1

    async with SQLiteSagaStore(database) as store:
        log = (tmp_path / "crashing_worker.log").open("wb")
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            stream,
            GROUP,
            str(database),
            streams.url,
            stdout=log,
            stderr=log,
        )
        try:

            async def all_mid_step() -> bool:
                running = await store.list_sagas(status=SagaStatus.RUNNING, limit=1000)
                interrupted.update(r.saga_id for r in running)
                return len(running) == count and await streams.pending(stream) == count

            await eventually(all_mid_step, within=20, what="the doomed worker mid-step")
        finally:
            worker.kill()
            await worker.wait()
            log.close()
        rows = await streams.client.xpending_range(stream, GROUP, "-", "+", count * 2)
        assert {r["consumer"] for r in rows} == {b"doomed"}

        config = TriggerConfig(redis_url=streams.url, lease_seconds=1.0, worker_id="survivor")
        async with TriggerEngine(config, store) as engine:
            await eventually(
                lambda: engine.metrics.completed[TRIGGER] == count,
                within=15,
                what="the survivor completing the doomed worker's sagas",
            )
        assert done == once_each(range(count))
        completed = await store.list_sagas(status=SagaStatus.COMPLETED, limit=1000)
        assert sorted(r.context["n"] for r in completed) == list(range(count))
        assert {r.saga_id for r in completed} == interrupted  # resumed, not new sagas
    assert (await streams.pending(stream), await streams.lag(stream)) == (0, 0)
    # the same entries, claimed rather than re-added: the survivor acked the doomed one's ids
    assert len(await streams.client.xrange(stream)) == len(ids)
