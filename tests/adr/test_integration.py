"""ADR-025 §7 "Integration with Existing Components": listeners, the outbox, storage.

The three blocks, as written:

* ``TriggerListener``: its hooks log; the test supplies ``logger`` and registers the listener
  the two ways DESIGN offers (process-wide, ``sagaz.start_triggers(listeners=[...])``, and a
  saga class's ``listeners``), then reads the log.
* ``RetrainingSaga`` with ``listeners = [OutboxSagaListener(storage)]``: the test supplies
  ``storage`` (a SQLite store: the engine runs on it too) and a body for the placeholder
  ``on_drift`` (the ADR's ``...`` would return ``None``, which filters every event).
* ``config = TriggerConfig(persist_events=True, event_retention_days=30)``: the original event
  is in ``saga_executions``, and dropped from there 30 days after its saga finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import sagaz
from sagaz import OutboxSagaListener, Saga, SagaListener, TriggerConfig, action, trigger
from sagaz.storage.codec import to_text
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.testing import eventually
from tests.adr.support import Kafka, saga_with, sagas_named
from tests.fixtures_rabbitmq import Rabbit

logger = logging.getLogger(__name__)  # left undefined by the ADR


# -- ADR-025 §7 "Listeners", as written ----------------------------------------------------
# fmt: off
# Trigger events are observable
class TriggerListener(SagaListener):
    async def on_trigger_received(self, saga_name, event_source, event):
        logger.info(f"Saga {saga_name} triggered by {event_source}")

    async def on_trigger_filtered(self, saga_name, event, reason):
        logger.debug(f"Event filtered: {reason}")
# fmt: on
# -------------------------------------------------------------------------------------------


def define_orders(queue: str, *, listeners: list[SagaListener] | None = None) -> None:
    """A saga of the test's own on RabbitMQ: orders of amount 0 are filtered."""

    class Orders(Saga):
        saga_name = "orders"

        @trigger(source="rabbitmq", queue=queue)
        def on_order(self, event: dict[str, Any]) -> dict[str, Any] | None:
            return dict(event) if event["amount"] > 0 else None

        @action("charge")
        async def charge(self, ctx: Any) -> None: ...

    if listeners is not None:
        Orders.listeners = listeners


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == __name__]


@pytest.mark.parametrize("where", ["start_triggers", "saga class"])
async def test_the_trigger_listener_hears_each_event_and_each_filtered_one(
    where: str, rabbit_env: Rabbit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=__name__)
    queue = rabbit_env.queue_name("adr-listeners")
    if where == "start_triggers":
        define_orders(queue)
        engine = await sagaz.start_triggers(listeners=[TriggerListener()])
    else:
        define_orders(queue, listeners=[TriggerListener()])
        engine = await sagaz.start_triggers()
    await rabbit_env.publish(
        queue,
        [json.dumps({"id": 1, "amount": 10}).encode(), json.dumps({"id": 2, "amount": 0}).encode()],
    )

    await saga_with(engine.store, "orders", lambda c: c["id"] == 1)
    expected = [
        (logging.INFO, "Saga orders triggered by rabbitmq"),
        (logging.INFO, "Saga orders triggered by rabbitmq"),
        (logging.DEBUG, "Event filtered: filtered"),
    ]
    await eventually(lambda: sorted(logged(caplog)) == sorted(expected), what="the three lines")
    assert len(await sagas_named(engine.store, "orders")) == 1


async def test_a_triggered_saga_writes_its_outbox_rows(kafka: Kafka, tmp_path: Path) -> None:
    storage = SQLiteSagaStore(tmp_path / "sagaz.db")

    # -- ADR-025 §7 "Outbox Pattern", as written, with a body for the placeholder -----------
    # fmt: off
    class RetrainingSaga(Saga):
        listeners = [OutboxSagaListener(storage)]

        @trigger(source="kafka", topic="model.drift")  # Any broker works
        def on_drift(self, event): return {"model_id": event["model_id"]}  # the ADR: ...

        @action("train")
        async def train(self, ctx):
            # This will emit to outbox as normal
            return {"model_version": "v2"}
    # fmt: on
    # ---------------------------------------------------------------------------------------

    model_id = f"outbox-model-{uuid.uuid4().hex[:8]}"
    engine = await sagaz.start_triggers(store=storage)
    await kafka.produce("model.drift", {"model_id": model_id, "score": 0.9})

    saga = await saga_with(storage, "retraining-saga", lambda c: c["model_id"] == model_id)
    assert saga.context == {"model_id": model_id, "model_version": "v2"}
    assert RetrainingSaga.saga_name == "retraining-saga"
    rows = [m for m in await storage.fetch_outbox(limit=10_000) if m.saga_id == saga.saga_id]
    assert [(m.topic, m.payload) for m in rows] == [
        ("saga.completed", {"saga_name": "retraining-saga", "saga_id": saga.saga_id})
    ]
    await sagaz.stop_triggers()
    assert engine.store is storage


async def test_persisted_events_are_kept_for_the_retention_days(
    rabbit_env: Rabbit, tmp_path: Path
) -> None:
    # -- ADR-025 §7 "Storage", as written ---------------------------------------------------
    # fmt: off
    config = TriggerConfig(
        persist_events=True,  # Store original event in saga_executions
        event_retention_days=30
    )
    # fmt: on
    # ---------------------------------------------------------------------------------------
    queue = rabbit_env.queue_name("adr-audit")
    define_orders(queue)
    path = tmp_path / "sagaz.db"
    old, recent = b'{"id": 1, "amount": 10}', b'{"id": 2, "amount": 20}'

    engine = await sagaz.start_triggers(config, SQLiteSagaStore(path))
    await rabbit_env.publish(queue, [old, recent])
    first = await saga_with(engine.store, "orders", lambda c: c["id"] == 1)
    second = await saga_with(engine.store, "orders", lambda c: c["id"] == 2)
    assert first.event == old  # the original event, as the broker delivered it
    assert second.event == recent
    await sagaz.stop_triggers()

    def event_column() -> dict[str, Any]:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            rows = conn.execute("SELECT saga_id, event FROM saga_executions").fetchall()
        return dict(rows)

    assert all(event_column().values())  # stored in the saga_executions table
    now = datetime.now(UTC)
    with (
        contextlib.closing(sqlite3.connect(path)) as conn,
        conn,
    ):  # as if the sagas had finished 31 and 29 days ago
        for saga, age in ((first, 31), (second, 29)):
            conn.execute(
                "UPDATE saga_executions SET updated_at = ? WHERE saga_id = ?",
                (to_text(now - timedelta(days=age)), saga.saga_id),
            )

    await sagaz.start_triggers(config, SQLiteSagaStore(path))  # purges at start, then hourly
    await eventually(
        lambda: event_column()[first.saga_id] is None, what="the 31-day-old event purged"
    )
    assert event_column()[second.saga_id] is not None
