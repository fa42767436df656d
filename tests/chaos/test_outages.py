"""Issue 12, acceptance 3: a service goes away mid-stream and comes back, and the app copes by
itself: the store (PostgreSQL, Redis) restarted while 3,000 Kafka events flow, and the broker
(RabbitMQ, Redis Streams) restarted while 3,000 of its messages flow. Every event ends with
exactly one completed saga and every message is acknowledged, without restarting the app;
while the store is down nothing is acked (the Kafka commits stand still) and the outage is
logged once.

The servers that go away are the test's own (``private_postgres``, ``private_redis``,
``private_rabbitmq``): the machine's shared services stay up for the other tests. (Kafka is
left out: the test broker, Tansu, keeps its topics in memory, so it cannot come back with
them; the Kafka source's reconnect is covered by the source contract suite.) The
side-effect table stays on the shared PostgreSQL, so it outlives the outage it measures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sagaz import SagaStatus
from sagaz.abc import SagaStore
from sagaz.storage.url import store_from_url
from tests.chaos.app import SAGA_NAME, STEPS
from tests.chaos.brokers import event, kafka_committed, produce_kafka
from tests.chaos.side_effects import SideEffectTable
from tests.chaos.supervisor import (
    AppProcess,
    app_env,
    assert_one_completed_saga_per_event,
    wait_for,
    wait_for_count,
)
from tests.private_servers import PrivateServer
from tests.services import backend_params, unique_name

pytestmark = pytest.mark.chaos

TOTAL = 3_000
MAX_CONCURRENT_SAGAS = 10
KAFKA_PARTITIONS = 3
OUTAGE_AT = TOTAL // 5  # sagas done when the service goes away
DOWN_FOR = 2.0  # seconds the store stays away
STORE_DOWN_LOG = "the store is unavailable"
STORE_BACK_LOG = "the store is back"

MakeTopic = Callable[..., Awaitable[str]]


@pytest.fixture(params=backend_params("postgres", "redis"))
def store_server(request: pytest.FixtureRequest) -> tuple[str, PrivateServer]:
    """A store URL on a server of the test's own, and that server (a sync fixture: it may
    ask for the async one)."""
    kind: str = request.param
    server: PrivateServer = request.getfixturevalue(f"private_{kind}")
    option = "schema=chaos" if kind == "postgres" else "prefix=chaos"
    return f"{server.url}?{option}", server


def completed_count(store: SagaStore) -> Callable[[], Awaitable[int]]:
    async def completed() -> int:
        done = await store.list_sagas(
            status=SagaStatus.COMPLETED, saga_name=SAGA_NAME, limit=10 * TOTAL
        )
        return len(done)

    return completed


async def finish(app: AppProcess, store_url: str) -> None:
    """Wait until every event has its completed saga, then stop the app gracefully."""
    async with store_from_url(store_url) as store:
        await wait_for_count(
            completed_count(store), TOTAL, what="completed sagas", alive=app.check_alive
        )
    assert await app.terminate() == 0, app.log_tail()


async def reached(app: AppProcess, side_effects: SideEffectTable, target: int) -> None:
    async def progressed() -> bool:
        return await side_effects.progress() >= target

    await wait_for(progressed, within=90, what=f"progress {target}", alive=app.check_alive)


async def assert_steps_repeated_at_most_once_per_saga_in_flight(
    side_effects: SideEffectTable,
) -> None:
    runs = await side_effects.runs()
    assert runs.numbers == TOTAL, "every step of every saga ran"
    assert runs.rows == TOTAL * len(STEPS)
    print(f"step repeats: {runs.repeats} {runs.repeated}")
    # one outage: at most the one step each in-flight saga was running
    assert runs.repeats <= MAX_CONCURRENT_SAGAS, runs.repeated


@pytest.mark.timeout(240)
async def test_a_store_restart_mid_stream_loses_nothing_and_needs_no_app_restart(
    kafka_bootstrap: str,
    make_kafka_topic: MakeTopic,
    store_server: tuple[str, PrivateServer],
    side_effects: SideEffectTable,
    tmp_path: Path,
) -> None:
    store_url, server = store_server
    topic = await make_kafka_topic("chaos-outage", partitions=KAFKA_PARTITIONS)
    group = unique_name("chaos-outage")
    produced = await produce_kafka(kafka_bootstrap, topic, TOTAL, KAFKA_PARTITIONS)
    app = AppProcess(
        app_env(
            store_url=store_url,
            side_effects=side_effects,
            max_concurrent_sagas=MAX_CONCURRENT_SAGAS,
            CHAOS_SOURCE="kafka",
            CHAOS_NAME=topic,
            CHAOS_GROUP=group,
            CHAOS_BROKER=kafka_bootstrap,
        ),
        log_dir=tmp_path,
    )

    async def committed() -> list[int]:
        return await kafka_committed(kafka_bootstrap, group, topic, KAFKA_PARTITIONS)

    try:
        await app.start()
        await reached(app, side_effects, OUTAGE_AT)
        await server.stop()
        # acks made before the outage are committed within the app's commit interval
        # (200 ms); once two reads agree, the commits must stand still for the whole outage
        last: list[list[int]] = [await committed()]

        async def settled() -> bool:
            await asyncio.sleep(0.3)  # one read per 0.3 s, apart more than a commit interval
            last.append(await committed())
            return last[-1] == last[-2]

        await wait_for(settled, within=10, what="the commits before the outage")
        during = last[-1]
        await asyncio.sleep(DOWN_FOR)  # the outage goes on
        assert await committed() == during, "an event was acked while the store was down"
        assert sum(during) < TOTAL
        app.check_alive()
        await server.start()
        await finish(app, store_url)
    finally:
        await app.close()

    assert app.runs == 1  # never restarted
    async with store_from_url(store_url) as store:
        await assert_one_completed_saga_per_event(store, TOTAL)
    assert await committed() == produced
    log = app.log_tail(10**7)
    assert log.count(STORE_DOWN_LOG) == 1, log[-4000:]  # once per outage, not per event
    assert log.count(STORE_BACK_LOG) == 1, log[-4000:]
    await assert_steps_repeated_at_most_once_per_saga_in_flight(side_effects)


@dataclass
class BrokerFeed:
    """A broker of the test's own with the events on it, for the app's ``CHAOS_*``."""

    server: PrivateServer
    env: dict[str, str]
    waiting: Callable[[], Awaitable[int]]  # messages not yet acknowledged


async def rabbitmq_feed(server: PrivateServer) -> BrokerFeed:
    import aio_pika

    queue = unique_name("chaos-outage")
    connection = await aio_pika.connect(server.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True)
        for start in range(0, TOTAL, 500):  # persistent: they outlive the broker's restart
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(
                            event(n),
                            message_id=f"event-{n}",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=queue,
                    )
                    for n in range(start, min(start + 500, TOTAL))
                )
            )
    finally:
        await connection.close()

    async def waiting() -> int:  # ready or delivered and not acked (the app is stopped)
        connection = await aio_pika.connect(server.url)
        try:
            channel = await connection.channel()
            declared: Any = await channel.declare_queue(queue, durable=True)
            count: int = declared.declaration_result.message_count
            return count
        finally:
            await connection.close()

    env = {"CHAOS_SOURCE": "rabbitmq", "CHAOS_NAME": queue, "CHAOS_BROKER": server.url}
    return BrokerFeed(server, env, waiting)


async def redis_feed(server: PrivateServer) -> BrokerFeed:
    import redis.asyncio as aioredis

    stream, group = unique_name("chaos-outage"), "chaos"
    async with aioredis.Redis.from_url(server.url) as client:
        for start in range(0, TOTAL, 500):
            pipe = client.pipeline(transaction=False)
            for n in range(start, min(start + 500, TOTAL)):
                pipe.xadd(stream, {"data": event(n)})
            await pipe.execute()

    async def waiting() -> int:  # not yet delivered to the group, or delivered and not acked
        async with aioredis.Redis.from_url(server.url) as client:
            (info,) = await client.xinfo_groups(stream)
            pending = (await client.xpending(stream, group))["pending"]
            return int(info["lag"]) + int(pending)

    env = {
        "CHAOS_SOURCE": "redis",
        "CHAOS_NAME": stream,
        "CHAOS_GROUP": group,
        "CHAOS_BROKER": server.url,
    }
    return BrokerFeed(server, env, waiting)


BROKER_FEEDS = {"rabbitmq": rabbitmq_feed, "redis": redis_feed}


@pytest.fixture(params=backend_params(*BROKER_FEEDS))
def broker_server(request: pytest.FixtureRequest) -> tuple[str, PrivateServer]:
    """A broker of the test's own and its kind (a sync fixture: it may ask for the async
    one)."""
    kind: str = request.param
    server: PrivateServer = request.getfixturevalue(f"private_{kind}")
    return kind, server


@pytest.mark.timeout(240)
async def test_a_broker_restart_mid_stream_loses_nothing_and_needs_no_app_restart(
    broker_server: tuple[str, PrivateServer], side_effects: SideEffectTable, tmp_path: Path
) -> None:
    kind, server = broker_server
    feed = await BROKER_FEEDS[kind](server)
    store_url = f"sqlite:///{tmp_path / 'sagaz.db'}"
    app = AppProcess(
        app_env(
            store_url=store_url,
            side_effects=side_effects,
            max_concurrent_sagas=MAX_CONCURRENT_SAGAS,
            **feed.env,
        ),
        log_dir=tmp_path,
    )
    try:
        await app.start()
        await reached(app, side_effects, OUTAGE_AT)
        await server.restart(down_for=1.0)
        app.check_alive()
        await finish(app, store_url)
    finally:
        await app.close()

    assert app.runs == 1  # never restarted
    async with store_from_url(store_url) as store:
        await assert_one_completed_saga_per_event(store, TOTAL)
    assert await feed.waiting() == 0  # every message acknowledged
    await assert_steps_repeated_at_most_once_per_saga_in_flight(side_effects)
