"""``examples/order_saga``: the ADR's multi-broker saga, run as its README says
(``python -m examples.order_saga.main``) against the real Kafka, RabbitMQ and PostgreSQL.

Orders arrive as a Kafka message, a RabbitMQ message and HTTP requests; the test reads the
outcome where a user would: the sagas and their steps in the (PostgreSQL) store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from examples.order_saga import send
from examples.order_saga.events import OrderPlaced
from examples.order_saga.settings import OrderSagaSettings

from sagaz import SagaStatus, TriggerConfig
from sagaz.records import SagaRecord
from sagaz.storage.postgres import PostgresSagaStore
from sagaz.testing.tansu import free_port
from sagaz.types import TERMINAL_SAGA_STATUSES, StepStatus
from tests.fixtures_kafka import MakeTopic
from tests.fixtures_rabbitmq import Rabbit
from tests.services import drop_postgres_schema, unique_name

from .running import running_example

pytest.importorskip("uvicorn")


@pytest.fixture
async def schema(postgres_dsn: str) -> AsyncIterator[str]:
    name = unique_name("sagaz_example")
    yield name
    await drop_postgres_schema(postgres_dsn, name)


def order(order_id: str, amount: float = 25.0, country: str = "DE") -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id, customer_id=f"c-{order_id}", amount=amount, country=country
    )


async def test_orders_from_kafka_rabbitmq_and_http_complete_or_compensate(
    kafka_bootstrap: str,
    make_kafka_topic: MakeTopic,
    rabbit: Rabbit,
    postgres_dsn: str,
    schema: str,
) -> None:
    names = OrderSagaSettings(
        kafka_topic=await make_kafka_topic("orders.created", partitions=1),
        kafka_group=unique_name("order-service"),
        rabbitmq_queue=rabbit.queue_name("orders"),
        rabbitmq_exchange=rabbit.exchange_name("ecommerce"),
    )
    brokers = TriggerConfig(kafka_bootstrap_servers=kafka_bootstrap, rabbitmq_url=rabbit.url)
    port = free_port()
    env = {
        "SAGAZ_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SAGAZ_RABBITMQ_URL": rabbit.url,
        "SAGAZ_WEBHOOK_PORT": str(port),
        "SAGAZ_STORE_URL": f"{postgres_dsn}?schema={schema}",
        "ORDER_SAGA_KAFKA_TOPIC": names.kafka_topic,
        "ORDER_SAGA_KAFKA_GROUP": names.kafka_group,
        "ORDER_SAGA_RABBITMQ_QUEUE": names.rabbitmq_queue,
        "ORDER_SAGA_RABBITMQ_EXCHANGE": names.rabbitmq_exchange,
    }
    store = PostgresSagaStore(postgres_dsn, schema=schema)
    async with running_example("examples.order_saga.main", env) as example:
        await example.wait_for_line("order saga running 3 triggers")
        await send.to_kafka(order("K-1"), config=brokers, names=names)
        await send.to_kafka(order("K-1"), config=brokers, names=names)  # an upstream retry
        await send.to_kafka(order("K-2", country="AQ"), config=brokers, names=names)
        await send.to_rabbitmq(order("R-1", amount=40), config=brokers, names=names)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            accepted = await client.post("/api/orders", json=order("W-1").model_dump())
            declined = await client.post("/api/orders", json=order("W-2", amount=5000).model_dump())
            invalid = await client.post("/api/orders", json={"order_id": "W-3", "amount": -1})
        assert (accepted.status_code, declined.status_code) == (202, 202), declined.text
        assert invalid.status_code == 400

        async with store:

            async def finished() -> dict[str, SagaRecord]:
                sagas = await store.list_sagas(saga_name="order-processing")
                done = {
                    s.context["order_id"]: s for s in sagas if s.status in TERMINAL_SAGA_STATUSES
                }
                return done if len(done) == 5 else {}

            await example.wait_until(finished, "5 finished order sagas")
            sagas = await store.list_sagas(saga_name="order-processing")
            steps = {s.context["order_id"]: await store.get_steps(s.saga_id) for s in sagas}
        await example.stop()

    by_order = {s.context["order_id"]: s for s in sagas}
    assert sorted(by_order) == ["K-1", "K-2", "R-1", "W-1", "W-2"]
    # K-1 sent twice: one saga, charged once (the copy was read before K-2: one partition)
    assert len(sagas) == 5
    assert example.output().count("order K-1: charged") == 1
    assert {o: s.context["source"] for o, s in by_order.items()} == {
        "K-1": "kafka",
        "K-2": "kafka",
        "R-1": "rabbitmq",
        "W-1": "webhook",
        "W-2": "webhook",
    }
    for completed in ("K-1", "R-1", "W-1"):
        assert by_order[completed].status is SagaStatus.COMPLETED
        assert by_order[completed].context["tracking_number"].startswith("T-")
    assert by_order["W-1"].saga_id == accepted.json()["saga_id"]

    def statuses(order_id: str) -> dict[str, StepStatus]:
        return {step.name: step.status for step in steps[order_id]}

    # a declined card: nothing charged, the stock released
    assert by_order["W-2"].status is SagaStatus.COMPENSATED
    assert "card declined" in (by_order["W-2"].error or "")
    assert statuses("W-2") == {
        "reserve_stock": StepStatus.COMPENSATED,
        "charge_payment": StepStatus.FAILED,
    }
    # no carrier to Antarctica: refunded, then the stock released
    assert by_order["K-2"].status is SagaStatus.COMPENSATED
    assert statuses("K-2") == {
        "reserve_stock": StepStatus.COMPENSATED,
        "charge_payment": StepStatus.COMPENSATED,
        "ship": StepStatus.FAILED,
    }
    logged = example.output()
    assert logged.index("order K-2: refunded") < logged.index("order K-2: stock released")
