"""ADR-025 "Example Usage: Multi-Broker Saga": ``my_app/sagas.py`` and ``main.py``.

``tests/adr/my_app/sagas.py`` is the ADR's ``sagas.py`` as written (plus ``logger``). The
ADR's ``main.py`` is three statements with a top-level ``await``; the test runs them as they
are, in its own event loop (the async context that a top-level ``await`` needs)::

    import sagaz  # noqa: I001 (the order of the ADR)
    import my_app.sagas
    await sagaz.start_triggers()

with the brokers named by the environment a deployment would set. Then an order goes in
through Kafka, RabbitMQ and the webhook; the ``@hourly`` schedule is checked on a
``FakeClock`` in a second test (``sagaz.start_triggers()`` runs on real time).
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest

from sagaz import SagaStatus, TriggerConfig
from sagaz.engine.engine import TriggerEngine
from sagaz.sources.webhook.source import webhook_server
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import FakeClock, eventually
from sagaz.triggers import registry
from tests.adr.support import Kafka, parked, saga_with, sagas_named
from tests.fixtures_rabbitmq import Rabbit

SAGA = "order-processing"
HERE = Path(__file__).parent


@pytest.fixture
def app_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``my_app`` importable as the ADR imports it, and imported afresh by the test (so its
    class definitions run, and register, again)."""
    monkeypatch.syspath_prepend(str(HERE))
    for name in ("my_app", "my_app.sagas"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield
    for name in ("my_app", "my_app.sagas"):
        sys.modules.pop(name, None)


def processed(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "my_app.sagas"]


async def test_main_py_starts_every_listener_and_each_broker_starts_the_saga(
    app_path: None,
    kafka: Kafka,
    rabbit_env: Rabbit,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="my_app.sagas")
    monkeypatch.setenv("SAGAZ_WEBHOOK_PORT", "0")  # a free port
    rabbit_env.queues.append("orders")  # the ADR's names: deleted after the test
    rabbit_env.exchanges.append("ecommerce")

    # -- ADR-025 "Example Usage", main.py, as written ----------------------------------------
    # fmt: off
    # main.py
    import sagaz  # noqa: I001 (the order of the ADR)
    # Just import the modules - triggers auto-discover!
    import my_app.sagas

    # Start all trigger listeners
    await sagaz.start_triggers()  # Starts Kafka, RabbitMQ, webhook server, cron scheduler
    # fmt: on
    # -----------------------------------------------------------------------------------------

    assert my_app.sagas.OrderSaga.saga_name == SAGA
    engine = sagaz.engine.process_engine._engine  # what start_triggers() started (main.py drops it)
    assert engine is not None and engine.running
    assert {t: s.describe()["kind"] for t, s in engine.sources.items()} == {
        f"{SAGA}.from_kafka": "kafka",
        f"{SAGA}.from_rabbitmq": "rabbitmq",
        f"{SAGA}.from_webhook": "webhook",
        f"{SAGA}.from_schedule": "cron",
    }

    await kafka.produce("orders.created", {"id": "k-1"})
    exchange = await rabbit_env.channel.get_exchange("ecommerce")
    await exchange.publish(
        aio_pika.Message(json.dumps({"order_id": "r-1"}).encode()), routing_key="orders.new"
    )
    server = webhook_server(engine.shared)
    await eventually(lambda: server.app.ready, what="the webhook routes")
    async with httpx.AsyncClient(base_url=str(server.url), timeout=10) as client:
        response = await client.post("/api/orders", json={"id": "w-1"})
    assert response.status_code == 202, response.text

    for order_id, source in (("k-1", "kafka"), ("r-1", "rabbitmq"), ("w-1", "webhook")):
        saga = await saga_with(engine.store, SAGA, lambda c, o=order_id: c["order_id"] == o)
        assert saga.context == {"order_id": order_id, "source": source}
    assert sorted(processed(caplog)) == [
        "Processing order k-1 from kafka",
        "Processing order r-1 from rabbitmq",
        "Processing order w-1 from webhook",
    ]


async def test_the_hourly_schedule_starts_a_batch_saga(
    app_path: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="my_app.sagas")
    sagas: Any = importlib.import_module("my_app.sagas")
    assert sagas.OrderSaga.saga_name == SAGA
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    store = MemorySagaStore()
    hourly = [registry.get(f"{SAGA}.from_schedule")]  # no broker in this test
    config = TriggerConfig(trigger_state_interval_seconds=3600)  # see test_decorator.py
    async with TriggerEngine(config, store, clock=clock, triggers=hourly):
        await parked(clock)
        await clock.advance(3600)

        async def one_completed() -> bool:
            done = await sagas_named(store, SAGA)
            return [s.status for s in done] == [SagaStatus.COMPLETED]

        await eventually(one_completed, what="the 01:00 saga")
    [saga] = await sagas_named(store, SAGA)
    assert saga.context == {"batch_mode": True, "source": "cron"}
    assert processed(caplog) == ["Processing order None from cron"]
