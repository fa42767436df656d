"""A dead letter of each source kind, replayed once its cause is fixed, completes its saga.

Every event comes in through its real source: Kafka (the Tansu broker), RabbitMQ, Redis
Streams and SQS (moto) through the brokers, the webhook over HTTP, the file source through
watchfiles, cron on a fake clock, a custom poll trigger, and ``fire()`` for memory. Its saga
fails (the charge step is broken) and the event is dead-lettered in a SQLite store. Then the
step is fixed and the dead letter replayed with :func:`sagaz.engine.replay.replay` (what
``sagaz dlq replay`` runs, with no source started): the **same saga** completes, the dead
letter is gone, and the trigger method received the very same event and ``EventMeta`` on
the replay as from the source.

The last test runs ``sagaz dlq replay`` in a subprocess for a dead letter whose saga module
does not import: a message that says what to pass, no traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

import sagaz
from sagaz import (
    CronTick,
    EventMeta,
    FileEvent,
    Fire,
    Saga,
    SagaContext,
    SagaStatus,
    Skip,
    Trigger,
    TriggerConfig,
    WebhookRequest,
    action,
    trigger,
)
from sagaz.engine.dead_letters import replay_delivery
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.replay import replay
from sagaz.records import DeadLetterRecord
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.testing import FakeClock, eventually
from tests.services import unique_name

START = datetime(2026, 1, 1, tzinfo=UTC)
ORDER = b'{"order_id": "A-1", "amount": 4200}'
# Tansu answers a group join after about session_timeout_ms / 2: keep the timeouts small
KAFKA_FAST: dict[str, Any] = {
    "session_timeout_ms": 1500,
    "heartbeat_interval_ms": 300,
    "poll_timeout_ms": 100,
    "commit_interval_ms": 200,
}


class OrderPlaced(BaseModel):
    """A ``fire()`` event (module level: the replay rebuilds it from its fields)."""

    order_id: str
    amount: float
    placed_at: datetime


class PollOnce(Trigger):
    """Fires one order, then skips."""

    poll_interval = 0.01
    allow_concurrent = True

    def __init__(self) -> None:
        self.name = unique_name("replay-poll")
        self.fired = False

    async def poll(self) -> Any:
        if self.fired:
            return Skip
        self.fired = True
        return Fire({"order_id": "P-1", "amount": 4200})


@dataclasses.dataclass
class Scenario:
    """One source kind: its trigger, its settings, and how its event is sent."""

    source: str
    options: dict[str, Any]
    #: the trigger method's event annotation (``None``: unannotated)
    annotation: Any = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    clock: FakeClock | None = None
    #: sends the event before the engine starts (brokers keep it)
    before: Callable[[], Awaitable[None]] | None = None
    #: sends the event once the engine runs
    after: Callable[[TriggerEngine, str], Awaitable[None]] | None = None
    #: what the stored dead letter must hold exactly (raw bytes or body as sent)
    check: Callable[[DeadLetterRecord], None] | None = None


def define_saga(scenario: Scenario, broken: list[bool], seen: list[Any]) -> str:
    """A saga started by the scenario's trigger, whose charge fails while ``broken[0]``;
    ``seen`` records what the trigger method receives. Returns the trigger id."""

    def received(self: Any, event: Any, meta: EventMeta) -> dict[str, Any]:
        seen.append((event, dataclasses.replace(meta)))
        return {"source": meta.source}

    received.__annotations__ = {"meta": EventMeta, "return": dict[str, Any]}
    if scenario.annotation is not None:
        received.__annotations__["event"] = scenario.annotation

    class Replayed(Saga):
        saga_name = unique_name(f"replay-{scenario.source}")

        on_event = trigger(source=scenario.source, **scenario.options)(received)

        @action("charge")
        async def charge(self, ctx: SagaContext) -> dict[str, Any]:
            if broken[0]:
                raise RuntimeError("card declined")
            return {"charged": True}

    return f"{Replayed.saga_name}.on_event"


async def dead_letter_then_replay(scenario: Scenario, tmp_path: Path) -> None:
    """Send the scenario's event through its source with the charge broken, wait for its dead
    letter, fix the charge, replay it, and check the replay against the original."""
    broken, seen = [True], []
    trigger_id = define_saga(scenario, broken, seen)
    config = TriggerConfig(max_retries=0, shutdown_timeout=5, **scenario.config)
    async with SQLiteSagaStore(tmp_path / "sagaz.db") as store:
        if scenario.before is not None:
            await scenario.before()
        async with TriggerEngine(config, store, clock=scenario.clock) as engine:
            if scenario.after is not None:
                await scenario.after(engine, trigger_id)

            async def dead_lettered() -> bool:
                return len(await store.list_dead_letters()) == 1

            await eventually(dead_lettered, within=30, what=f"the {scenario.source} dead letter")
            async with asyncio.timeout(10):
                await engine.dispatcher.wait_idle()  # settled with its source (ack, commit)

        [dead] = await store.list_dead_letters()
        assert dead.trigger_id == trigger_id and dead.source == scenario.source
        assert dead.saga_id is not None
        failed = await store.get_saga(dead.saga_id)
        assert failed is not None and failed.status is SagaStatus.COMPENSATED
        if scenario.check is not None:
            scenario.check(dead)

        broken[0] = False  # the cause is fixed
        outcome = await replay(store, dead, config=TriggerConfig(max_retries=0), timeout=20)

        assert (outcome.status, outcome.saga_id) == ("completed", dead.saga_id), outcome
        saga = await store.get_saga(dead.saga_id)
        assert saga is not None and saga.status is SagaStatus.COMPLETED
        assert saga.attempt == 2 and saga.context["charged"] is True
        assert await store.list_dead_letters() == []
        # the trigger method got the same event and metadata from the replay as from the source
        assert len(seen) == 2
        (event, meta), (replayed_event, replayed_meta) = seen
        assert type(replayed_event) is type(event)
        assert replayed_event == event
        assert replayed_meta == meta


# -- sources without a broker ----------------------------------------------------------------
def memory(tmp_path: Path) -> Scenario:
    channel = unique_name("replay-orders")

    async def fire(engine: TriggerEngine, trigger_id: str) -> None:
        await engine.fire(channel, OrderPlaced(order_id="M-1", amount=4200, placed_at=START))

    return Scenario("memory", {"channel": channel}, OrderPlaced, after=fire)


def webhook(tmp_path: Path) -> Scenario:
    pytest.importorskip("uvicorn")
    from sagaz.sources.webhook.source import webhook_server

    async def post(engine: TriggerEngine, trigger_id: str) -> None:
        server = webhook_server(engine.shared)
        await eventually(lambda: server.app.ready, what="the webhook routes to be active")
        async with httpx.AsyncClient(base_url=server.url or "", timeout=10) as client:
            response = await client.post(
                "/shops/s-1/orders?dry=no",
                content=ORDER,
                headers={"content-type": "application/json", "x-trace": "abc"},
            )
        assert response.status_code == 202, response.text

    def check(dead: DeadLetterRecord) -> None:
        assert dead.payload["body"] == ORDER and dead.payload["path_params"] == {"shop": "s-1"}
        assert dead.payload["headers"]["x-trace"] == "abc"

    return Scenario(
        "webhook",
        {"path": "/shops/{shop}/orders", "method": "POST"},
        WebhookRequest,
        config={"webhook_port": 0},
        after=post,
        check=check,
    )


def cron(tmp_path: Path) -> Scenario:
    clock = FakeClock(START)

    async def tick(engine: TriggerEngine, trigger_id: str) -> None:
        # the cron source waits for a tick, beside the engine's trigger-state watcher
        await eventually(lambda: clock.sleepers >= 2, what="the cron source to wait for a tick")
        await clock.advance(300)

    return Scenario(
        "cron",
        {"schedule": "*/5 * * * *", "timezone": "Europe/Paris"},
        CronTick,
        clock=clock,
        after=tick,
    )


def file(tmp_path: Path) -> Scenario:
    pytest.importorskip("watchfiles")
    from sagaz.sources.file import FileSource

    inbox = tmp_path / "inbox"
    inbox.mkdir()

    async def drop(engine: TriggerEngine, trigger_id: str) -> None:
        source = engine.sources[trigger_id]
        assert isinstance(source, FileSource)
        await asyncio.wait_for(source.ready.wait(), timeout=10)
        (inbox / "order.json").write_bytes(ORDER)

    return Scenario(
        "file", {"path": str(inbox), "pattern": "*.json", "settle_ms": 50}, FileEvent, after=drop
    )


def poll(tmp_path: Path) -> Scenario:
    return Scenario(
        "custom",
        {"trigger": PollOnce()},
        dict[str, Any],
        config={"trigger_base_poll_interval": 0.01},
    )


LOCAL = {"memory": memory, "webhook": webhook, "cron": cron, "file": file, "poll": poll}


@pytest.mark.parametrize("kind", list(LOCAL))
async def test_a_dead_letter_replays_after_its_fix_to_the_same_completed_saga(
    kind: str, tmp_path: Path
) -> None:
    await dead_letter_then_replay(LOCAL[kind](tmp_path), tmp_path)


# -- the brokers -----------------------------------------------------------------------------
async def test_a_kafka_dead_letter_replays_after_its_fix_to_the_same_completed_saga(
    kafka_bootstrap: str, make_kafka_topic: Callable[..., Awaitable[str]], tmp_path: Path
) -> None:
    from aiokafka import AIOKafkaProducer

    topic = await make_kafka_topic("replay-orders", partitions=1)

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, ORDER, key=b"user-7", headers=[("x-trace", b"abc")])
        finally:
            await producer.stop()

    def check(dead: DeadLetterRecord) -> None:
        assert dead.payload == ORDER
        assert (dead.meta["topic"], dead.meta["offset"], dead.meta["key"]) == (topic, 0, "user-7")
        assert dead.meta["headers"] == {"x-trace": "abc"}

    options = {
        "topic": topic,
        "group_id": unique_name("replay"),
        "bootstrap_servers": kafka_bootstrap,
        **KAFKA_FAST,
    }
    await dead_letter_then_replay(Scenario("kafka", options, before=produce, check=check), tmp_path)


async def test_a_rabbitmq_dead_letter_replays_after_its_fix_to_the_same_completed_saga(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    import aio_pika

    queue = unique_name("sagaz-replay")
    connection = await aio_pika.connect(rabbitmq_url)
    channel = await connection.channel(publisher_confirms=True)

    async def publish() -> None:
        await channel.declare_queue(queue, durable=True)
        message = aio_pika.Message(ORDER, message_id="m-1", headers={"x-trace": "abc"})
        await channel.default_exchange.publish(message, routing_key=queue)

    def check(dead: DeadLetterRecord) -> None:
        assert dead.payload == ORDER and dead.meta["message_id"] == "m-1"
        assert dead.meta["headers"] == {"x-trace": "abc"}

    scenario = Scenario(
        "rabbitmq",
        {"queue": queue},
        config={"rabbitmq_url": rabbitmq_url},
        before=publish,
        check=check,
    )
    try:
        await dead_letter_then_replay(scenario, tmp_path)
    finally:
        await channel.queue_delete(queue)
        await connection.close()


async def test_a_redis_dead_letter_replays_after_its_fix_to_the_same_completed_saga(
    redis_url: str, tmp_path: Path
) -> None:
    import redis.asyncio as aioredis

    stream = unique_name("sagaz-replay")
    client: Any = aioredis.Redis.from_url(redis_url)

    async def add() -> None:
        await client.xadd(stream, {"data": ORDER})

    def check(dead: DeadLetterRecord) -> None:
        assert dead.payload == ORDER and dead.meta["topic"] == stream

    options = {"stream": stream, "consumer_group": "workers", "start_id": "0"}
    scenario = Scenario("redis", options, config={"redis_url": redis_url}, before=add, check=check)
    try:
        await dead_letter_then_replay(scenario, tmp_path)
    finally:
        await client.delete(stream)
        await client.aclose()


async def test_an_sqs_dead_letter_replays_after_its_fix_to_the_same_completed_saga(
    sqs_endpoint: str,
    sqs_client: Any,
    make_sqs_queue: Callable[..., Awaitable[str]],
    tmp_path: Path,
) -> None:
    from tests.fixtures_sqs import sqs_source_options

    queue_url = await make_sqs_queue("sagaz-replay")

    async def send() -> None:
        await sqs_client.send_message(
            QueueUrl=queue_url,
            MessageBody=ORDER.decode(),
            MessageAttributes={"x-trace": {"DataType": "String", "StringValue": "abc"}},
        )

    def check(dead: DeadLetterRecord) -> None:
        assert replay_delivery(dead).body == ORDER.decode()
        assert dead.payload["Body"] == json.loads(ORDER)
        assert dead.meta["headers"] == {"x-trace": "abc"}

    options = {"queue_url": queue_url, "wait_time": 1, **sqs_source_options(sqs_endpoint)}
    await dead_letter_then_replay(Scenario("sqs", options, before=send, check=check), tmp_path)


# -- the command, for a module that does not import -----------------------------------------
def sagaz_command(*args: str, cwd: Path) -> tuple[int, str, str]:
    """Run ``python -m sagaz.cli.main`` with this test run's sagaz on ``PYTHONPATH``."""
    import subprocess

    src = str(Path(sagaz.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "sagaz.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout, done.stderr


async def test_sagaz_dlq_replay_of_a_module_that_does_not_import_says_what_to_pass(
    tmp_path: Path,
) -> None:
    async with SQLiteSagaStore(tmp_path / "sagaz.db") as store:
        dead_id = await store.add_dead_letter(
            DeadLetterRecord(
                trigger_id="billing.on_invoice",
                saga_name="billing",
                payload=ORDER,
                error="RuntimeError: card declined",
                reason="retries_exhausted",
                source="kafka",
                meta={
                    "format": 2,
                    "identity": "invoices/0/7",
                    "saga_module": "billing_app.sagas",
                    "saga_qualname": "BillingSaga",
                    "saga_file": "/srv/billing/billing_app/sagas.py",
                },
            )
        )

    code, out, err = await asyncio.to_thread(
        sagaz_command, "dlq", "replay", str(dead_id), cwd=tmp_path
    )

    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert "needs the module 'billing_app.sagas', which cannot be imported here" in err
    assert f"sagaz dlq replay {dead_id} --modules myapp.sagas" in err
    async with SQLiteSagaStore(tmp_path / "sagaz.db") as store:
        assert [d.id for d in await store.list_dead_letters()] == [dead_id]  # nothing ran
