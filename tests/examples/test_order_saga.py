"""``examples/order_saga``: the ADR's multi-broker saga, run as its README says
(``python -m examples.order_saga.main``) against the real Kafka, RabbitMQ and PostgreSQL.

The orders are the README's own: its ``python -m examples.order_saga.send kafka|rabbitmq``
commands are run as they are written, its ``curl`` requests sent through httpx. The test reads
the outcome where a user would: the sagas and their steps in the (PostgreSQL) store.
"""

from __future__ import annotations

import json
import re
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

from .running import EXAMPLES, run_command, running_example

pytest.importorskip("uvicorn")

README = EXAMPLES / "order_saga" / "README.md"
COMMAND = re.compile(
    r"^python -m examples\.order_saga\.send (?P<broker>kafka|rabbitmq) '(?P<order>[^']+)'$"
    r"|^curl -X POST localhost:8000(?P<path>/\S+) -H 'content-type: application/json' "
    r"-d '(?P<body>[^']+)'$",
    re.MULTILINE,
)


def readme_commands() -> list[re.Match[str]]:
    """The README's send and curl commands, in its order."""
    found = list(COMMAND.finditer(README.read_text()))
    assert len(found) == 5, f"{README}: expected its 3 orders and 2 failing ones, got {found}"
    return found


@pytest.fixture
async def schema(postgres_dsn: str) -> AsyncIterator[str]:
    name = unique_name("sagaz_example")
    yield name
    await drop_postgres_schema(postgres_dsn, name)


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
    commands = readme_commands()
    store = PostgresSagaStore(postgres_dsn, schema=schema)
    answers: dict[str, httpx.Response] = {}
    async with (
        running_example("examples.order_saga.main", env) as example,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        await example.wait_for_line("order saga running 3 triggers")
        for n, command in enumerate(commands):
            if command["broker"]:
                await run_command(
                    "examples.order_saga.send", env, [command["broker"], command["order"]]
                )
            else:
                body = command["body"]
                answers[json.loads(body)["order_id"]] = await client.post(
                    command["path"], content=body, headers={"content-type": "application/json"}
                )
            if n == 0:  # K-1 again, as an upstream retry would send it
                brokers = TriggerConfig(kafka_bootstrap_servers=kafka_bootstrap)
                again = OrderPlaced.model_validate_json(command["order"])
                await send.to_kafka(again, config=brokers, names=names)
        invalid = await client.post("/api/orders", json={"order_id": "W-3", "amount": -1})

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

    assert {order: answer.status_code for order, answer in answers.items()} == {
        "W-1": 202,
        "W-2": 202,
    }
    assert invalid.status_code == 400
    by_order = {s.context["order_id"]: s for s in sagas}
    assert {o: s.context["source"] for o, s in by_order.items()} == {
        "K-1": "kafka",
        "R-1": "rabbitmq",
        "W-1": "webhook",
        "W-2": "webhook",
        "K-2": "kafka",
    }
    # K-1 sent twice: one saga, charged once (its copy was read before K-2: one partition)
    assert len(sagas) == 5
    assert example.output().count("order K-1: charged") == 1
    for completed in ("K-1", "R-1", "W-1"):
        assert by_order[completed].status is SagaStatus.COMPLETED
        assert by_order[completed].context["tracking_number"].startswith("T-")
    assert by_order["W-1"].saga_id == answers["W-1"].json()["saga_id"]

    def statuses(order_id: str) -> dict[str, StepStatus]:
        return {step.name: step.status for step in steps[order_id]}

    # a declined card: nothing charged, the stock released
    assert by_order["W-2"].status is SagaStatus.COMPENSATED
    assert "card declined: 5000 is over the limit of 1000" in (by_order["W-2"].error or "")
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
