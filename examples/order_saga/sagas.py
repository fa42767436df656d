"""The order saga of ADR-025's "Multi-Broker Saga": one saga, three ways to start it.

Importing this module registers the saga's triggers; ``main.py`` imports it and calls
``sagaz.start_triggers()``. Each order reserves stock, charges the customer and ships; when a
step fails, the steps done so far are undone in reverse order (a declined card releases the
stock; an order the carrier cannot ship is refunded, then its stock released).
"""

from __future__ import annotations

import logging
from typing import Any

from examples.order_saga.events import OrderPlaced
from examples.order_saga.services import inventory, payments, shipping
from examples.order_saga.settings import settings

from sagaz import Saga, SagaContext, action, compensate, trigger

logger = logging.getLogger(__name__)


class OrderSaga(Saga):
    """Reserve stock → charge → ship, started from Kafka, RabbitMQ or HTTP."""

    saga_name = "order-processing"

    # Kafka: the same order sent twice (an upstream retry) is one saga, charged once; orders
    # of one customer run one at a time, in the order they arrived.
    @trigger(
        source="kafka",
        topic=settings.kafka_topic,
        group_id=settings.kafka_group,
        idempotency_key=lambda order: order.order_id,
        concurrency_key=lambda order: order.customer_id,
    )
    def from_kafka(self, order: OrderPlaced) -> dict[str, Any]:
        return {**order.model_dump(), "source": "kafka"}

    # RabbitMQ: the queue is declared and bound to the topic exchange at start.
    @trigger(
        source="rabbitmq",
        queue=settings.rabbitmq_queue,
        exchange=settings.rabbitmq_exchange,
        routing_key=settings.rabbitmq_routing_key,
        idempotency_key=lambda order: order.order_id,
    )
    def from_rabbitmq(self, order: OrderPlaced) -> dict[str, Any]:
        return {**order.model_dump(), "source": "rabbitmq"}

    # HTTP: 202 {"saga_id": ...} once the order is stored; 400 when the body is not an order.
    # A client that retries sends an Idempotency-Key header: same key, same saga.
    @trigger(source="webhook", path="/api/orders", method="POST")
    def from_webhook(self, order: OrderPlaced) -> dict[str, Any]:
        return {**order.model_dump(), "source": "webhook"}

    @action("reserve_stock")
    async def reserve_stock(self, ctx: SagaContext) -> dict[str, Any]:
        logger.info("order %s from %s: processing", ctx["order_id"], ctx["source"])
        return {"reservation_id": await inventory.reserve(ctx["order_id"])}

    @compensate("reserve_stock")
    async def release_stock(self, ctx: SagaContext) -> None:
        await inventory.release(ctx["reservation_id"])

    @action("charge_payment", timeout_seconds=10)
    async def charge_payment(self, ctx: SagaContext) -> dict[str, Any]:
        return {"payment_id": await payments.charge(ctx["order_id"], ctx["amount"])}

    @compensate("charge_payment")
    async def refund_payment(self, ctx: SagaContext) -> None:
        await payments.refund(ctx["order_id"], ctx["payment_id"])

    @action("ship")
    async def ship(self, ctx: SagaContext) -> dict[str, Any]:
        return {"tracking_number": await shipping.ship(ctx["order_id"], ctx["country"])}
