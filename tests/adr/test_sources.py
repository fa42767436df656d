"""ADR-025 §4 "Event Sources": every example, through its real source.

Each example is a ``@trigger`` method, copied as written into a saga class of the test (the
class, its ``saga_name`` and a step are what the ADR leaves out: the methods belong to its
model-retraining saga). Where the brokers are comes from the environment a deployment would
set (``SAGAZ_KAFKA_BOOTSTRAP_SERVERS``, ``SAGAZ_RABBITMQ_URL``, ``SAGAZ_REDIS_URL``,
``SAGAZ_SQS_ENDPOINT_URL``, ``SAGAZ_WEBHOOK_*``), and ``sagaz.start_triggers()`` runs them.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

import sagaz
from sagaz import Saga, SagaStatus, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.sources.webhook.source import webhook_server
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import FakeClock, eventually
from tests.adr.support import Kafka, fresh_stream, parked, saga_with, sagas_named
from tests.fixtures_rabbitmq import Rabbit
from tests.fixtures_redis import Streams

SAGA = "model-retraining"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- Kafka ---------------------------------------------------------------------------------
async def test_kafka_example(kafka: Kafka) -> None:
    class ModelRetrainingSaga(Saga):
        saga_name = SAGA

        # -- ADR-025 §4 "Kafka", as written ------------------------------------------------
        # fmt: off
        @trigger(source="kafka", topic="model.drift", group_id="retraining-service")
        def on_drift_kafka(self, event):
            return {"model_id": event["model_id"], "source": "kafka"}
        # fmt: on

        @action("train_model")
        async def train(self, ctx: Any) -> None: ...

    model_id = unique("kafka-model")
    engine = await sagaz.start_triggers()
    await kafka.produce("model.drift", {"model_id": model_id, "score": 0.9})

    saga = await saga_with(engine.store, SAGA, lambda c: c["model_id"] == model_id)
    assert saga.context == {"model_id": model_id, "source": "kafka"}
    assert saga.trigger_id == "model-retraining.on_drift_kafka"


# -- RabbitMQ ------------------------------------------------------------------------------
async def test_rabbitmq_example(rabbit_env: Rabbit) -> None:
    import aio_pika

    rabbit = rabbit_env
    rabbit.queues.append("ml.retraining")  # deleted after the test
    rabbit.exchanges.append("model-events")

    class ModelRetrainingSaga(Saga):
        saga_name = SAGA

        # -- ADR-025 §4 "RabbitMQ", as written ---------------------------------------------
        # fmt: off
        @trigger(
            source="rabbitmq",
            queue="ml.retraining",
            exchange="model-events",
            routing_key="drift.*"
        )
        def on_drift_rabbit(self, event):
            return {"model_id": event["model_id"], "source": "rabbitmq"}
        # fmt: on

        @action("train_model")
        async def train(self, ctx: Any) -> None: ...

    engine = await sagaz.start_triggers()  # declares the exchange, the queue and the binding
    exchange = await rabbit.channel.get_exchange("model-events")
    other, drifted = unique("not-a-drift"), unique("rabbit-model")
    for routing_key, model_id in (("deploy.done", other), ("drift.detected", drifted)):
        body = json.dumps({"model_id": model_id}).encode()
        await exchange.publish(aio_pika.Message(body), routing_key=routing_key)

    saga = await saga_with(engine.store, SAGA, lambda c: c["model_id"] == drifted)
    assert saga.context == {"model_id": drifted, "source": "rabbitmq"}
    # "deploy.done" does not match "drift.*": it never reached the queue
    assert [s.context["model_id"] for s in await sagas_named(engine.store, SAGA)] == [drifted]
    assert await rabbit.ready("ml.retraining") == 0


# -- Redis Streams -------------------------------------------------------------------------
def define_redis_saga() -> None:
    class ModelRetrainingSaga(Saga):
        saga_name = SAGA

        # -- ADR-025 §4 "Redis Streams", as written ----------------------------------------
        # fmt: off
        @trigger(
            source="redis",
            stream="model:events",
            consumer_group="retraining-workers"
        )
        def on_drift_redis(self, event):
            return {"model_id": event["model_id"], "source": "redis"}
        # fmt: on

        @action("train_model")
        async def train(self, ctx: Any) -> None: ...


async def group_exists(streams: Streams, stream: str, group: str) -> bool:
    try:
        groups = await streams.client.xinfo_groups(stream)
    except Exception:  # no stream yet
        return False
    return any(g["name"] == group.encode() for g in groups)


async def test_redis_streams_example(redis_env: Streams) -> None:
    streams = redis_env
    await fresh_stream(streams, "model:events")
    define_redis_saga()

    engine = await sagaz.start_triggers()
    await eventually(
        lambda: group_exists(streams, "model:events", "retraining-workers"),
        what="the consumer group",
    )
    model_id = unique("redis-model")
    await streams.add("model:events", [json.dumps({"model_id": model_id}).encode()])

    saga = await saga_with(engine.store, SAGA, lambda c: c["model_id"] == model_id)
    assert saga.context == {"model_id": model_id, "source": "redis"}
    await eventually(
        lambda: _pending_is(streams, "model:events", "retraining-workers", 0),
        what="the entry acknowledged",
    )


async def test_redis_streams_example_reads_what_the_stream_held_before_it_started(
    redis_env: Streams,
) -> None:
    """Events written while the service was not deployed yet are events too (DESIGN: a new
    group starts at the beginning of the stream, like Kafka's ``earliest``)."""
    streams = redis_env
    await fresh_stream(streams, "model:events")
    define_redis_saga()
    model_id = unique("redis-early")
    await streams.add("model:events", [json.dumps({"model_id": model_id}).encode()])

    engine = await sagaz.start_triggers()

    saga = await saga_with(engine.store, SAGA, lambda c: c["model_id"] == model_id, within=5)
    assert saga.context == {"model_id": model_id, "source": "redis"}


async def _pending_is(streams: Streams, stream: str, group: str, expected: int) -> bool:
    return await streams.pending(stream, group) == expected


# -- Cron ----------------------------------------------------------------------------------
async def test_cron_examples() -> None:
    class ModelRetrainingSaga(Saga):
        saga_name = SAGA

        # -- ADR-025 §4 "Cron (Scheduled)", as written -------------------------------------
        # fmt: off
        @trigger(source="cron", schedule="0 */6 * * *")  # Every 6 hours
        def on_schedule(self, tick):
            return {"batch_mode": True, "triggered_at": tick.timestamp}

        # Or use shortcuts
        @trigger(source="cron", schedule="@daily")
        def on_daily(self, tick):
            return {"task": "daily_cleanup"}
        # fmt: on

        @action("train_model")
        async def train(self, ctx: Any) -> None: ...

    start = datetime(2026, 1, 1, tzinfo=UTC)
    clock = FakeClock(start)
    store = MemorySagaStore()

    async def contexts() -> list[dict[str, Any]]:
        done = [s for s in await sagas_named(store, SAGA) if s.status is SagaStatus.COMPLETED]
        return [dict(s.context) for s in done]

    config = TriggerConfig(trigger_state_interval_seconds=3600)  # see test_decorator.py
    async with TriggerEngine(config, store, clock=clock):
        idle = await parked(clock, 2)  # both cron sources wait for their next tick

        async def settled(count: int) -> bool:
            """``count`` sagas completed and the cron sources wait again."""
            return clock.sleepers >= idle and len(await contexts()) == count

        for hour, count in ((6, 1), (12, 2), (18, 3), (24, 5)):
            await clock.advance(6 * 3600)
            await eventually(lambda c=count: settled(c), what=f"{count} sagas at {hour}:00")

    every_six_hours = [c for c in await contexts() if "batch_mode" in c]
    assert sorted(c["triggered_at"] for c in every_six_hours) == [
        start.timestamp() + hours * 3600 for hours in (6, 12, 18, 24)
    ]
    assert {c["batch_mode"] for c in every_six_hours} == {True}
    assert [c for c in await contexts() if "task" in c] == [{"task": "daily_cleanup"}]


# -- Webhook -------------------------------------------------------------------------------
async def test_webhook_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGAZ_WEBHOOK_PORT", "0")  # a free port
    monkeypatch.setenv("SAGAZ_WEBHOOK_TOKENS", '["deploy-token"]')

    class ModelRetrainingSaga(Saga):
        saga_name = SAGA

        # -- ADR-025 §4 "Webhook (HTTP)", as written ---------------------------------------
        # fmt: off
        @trigger(
            source="webhook",
            path="/webhooks/deploy/{model_id}",
            method="POST",
            auth="bearer"  # Validates Authorization header
        )
        def on_deploy_webhook(self, request):
            return {
                "model_id": request.path_params["model_id"],
                "payload": request.json()
            }
        # fmt: on

        @action("train_model")
        async def train(self, ctx: Any) -> None: ...

    engine = await sagaz.start_triggers()
    server = webhook_server(engine.shared)
    await eventually(lambda: server.app.ready, what="the webhook routes")
    body = {"version": "v7", "canary": True}
    async with httpx.AsyncClient(base_url=str(server.url), timeout=10) as client:
        refused = await client.post("/webhooks/deploy/m-1", json=body)
        wrong = await client.post(
            "/webhooks/deploy/m-1", json=body, headers={"Authorization": "Bearer nope"}
        )
        accepted = await client.post(
            "/webhooks/deploy/m-1", json=body, headers={"Authorization": "Bearer deploy-token"}
        )

    assert refused.status_code == 401
    assert wrong.status_code in (401, 403)
    assert accepted.status_code == 202, accepted.text
    saga_id = accepted.json()["saga_id"]
    result = await engine.wait_for(saga_id, timeout=10)
    assert result
    assert result.context == {"model_id": "m-1", "payload": body}
    assert len(await sagas_named(engine.store, SAGA)) == 1  # the refused requests started none


# -- File ----------------------------------------------------------------------------------
async def test_file_watch_example(tmp_path: Path) -> None:
    uploads = tmp_path / "data" / "uploads"
    uploads.mkdir(parents=True)

    class ModelRetrainingSaga(Saga):
        saga_name = SAGA

        # -- ADR-025 §4 "File Watch", as written, but for the directory: the ADR's
        # "/data/uploads/" is the reader's own directory; the test watches one of its own.
        # fmt: off
        @trigger(
            source="file",
            path=f"{uploads}/",  # the ADR: path="/data/uploads/",
            pattern="*.csv",
            event_type="created"  # or "modified", "deleted"
        )
        def on_file_upload(self, file_event):
            return {"file_path": file_event.path, "size": file_event.size}
        # fmt: on

        @action("train_model")
        async def train(self, ctx: Any) -> None: ...

    engine = await sagaz.start_triggers()
    source = engine.sources["model-retraining.on_file_upload"]
    await eventually(lambda: source.ready.is_set(), what="the watch to start")  # type: ignore[attr-defined]
    (uploads / "notes.txt").write_text("not a csv")
    csv = uploads / "drift.csv"
    csv.write_text("model_id,score\nm-1,0.9\n")

    saga = await saga_with(engine.store, SAGA, lambda c: True)
    assert saga.context == {"file_path": str(csv), "size": csv.stat().st_size}
    assert len(await sagas_named(engine.store, SAGA)) == 1  # notes.txt is not *.csv


# -- SQS -----------------------------------------------------------------------------------
async def test_sqs_example(sqs_env: Any) -> None:
    sqs_client = sqs_env
    created = await sqs_client.create_queue(QueueName="events")
    try:

        class ModelRetrainingSaga(Saga):
            saga_name = SAGA

            # -- ADR-025 §4 "AWS SQS", as written ------------------------------------------
            # fmt: off
            @trigger(
                source="sqs",
                queue_url="https://sqs.us-east-1.amazonaws.com/123456/events",
                visibility_timeout=300
            )
            def on_sqs_message(self, event):
                return {"message_id": event["MessageId"]}
            # fmt: on

            @action("train_model")
            async def train(self, ctx: Any) -> None: ...

        engine = await sagaz.start_triggers()
        sent = await sqs_client.send_message(
            QueueUrl=created["QueueUrl"], MessageBody=json.dumps({"model_id": "m-1"})
        )

        saga = await saga_with(engine.store, SAGA, lambda c: True)
        assert saga.context == {"message_id": sent["MessageId"]}
        await sagaz.stop_triggers()
        attributes = await sqs_client.get_queue_attributes(
            QueueUrl=created["QueueUrl"], AttributeNames=["All"]
        )
        assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "0"
        assert attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0"
    finally:
        await sqs_client.delete_queue(QueueUrl=created["QueueUrl"])
