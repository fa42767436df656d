"""ADR-025 §6 "Idempotency": ``idempotency_key=lambda e: e.message_id`` deduplicates via the
inbox.

The block is a ``@trigger`` method, copied as written into a saga class of the test, and runs on
Kafka as written. Its event is unannotated and read with attributes (``e.message_id``,
``event.order_id``): DESIGN §2 makes a JSON object arrive as a read-only mapping that allows
them. A producer that sends the same message twice (a retry after a lost acknowledgement) is
the redelivery the inbox must absorb.
"""

from __future__ import annotations

import uuid
from typing import Any

import sagaz
from sagaz import Saga, action, trigger
from sagaz.testing import eventually
from tests.adr.support import Kafka, Recorder, saga_with, sagas_named

SAGA = "orders-saga"


async def test_a_redelivered_order_starts_one_saga(kafka: Kafka) -> None:
    runs: list[str] = []

    class OrdersSaga(Saga):
        saga_name = SAGA

        # -- ADR-025 §6, as written ----------------------------------------------------------
        # fmt: off
        @trigger(source="kafka", topic="orders", idempotency_key=lambda e: e.message_id)
        # Also works with RabbitMQ, Redis, SQS, etc.
        def on_order(self, event):
            # Automatically deduplicated via inbox
            return {"order_id": event.order_id}
        # fmt: on

        @action("charge")
        async def charge(self, ctx: Any) -> None:
            runs.append(ctx["order_id"])

    order, other = f"o-{uuid.uuid4().hex[:8]}", f"o-{uuid.uuid4().hex[:8]}"
    message_id = f"msg-{uuid.uuid4().hex[:8]}"
    recorder = Recorder()
    engine = await sagaz.start_triggers(listeners=[recorder])
    await kafka.produce(
        "orders",
        {"message_id": message_id, "order_id": order},
        {"message_id": message_id, "order_id": order},  # the producer's retry
        {"message_id": f"{message_id}-2", "order_id": other},  # another message
    )

    await saga_with(engine.store, SAGA, lambda c: c["order_id"] == other)
    await saga_with(engine.store, SAGA, lambda c: c["order_id"] == order)
    await eventually(
        lambda: sum(1 for _, _, e in recorder.received if e["order_id"] == order) == 2,
        what="both copies received",
    )
    await engine.dispatcher.wait_idle()
    mine = [s for s in await sagas_named(engine.store, SAGA) if s.context["order_id"] == order]
    assert len(mine) == 1
    assert runs.count(order) == 1
    assert runs.count(other) == 1
