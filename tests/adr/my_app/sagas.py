"""ADR-025 "Example Usage", ``sagas.py``, as written; ``logger`` is left undefined by the ADR.

No ``from __future__ import annotations`` and no other line of the test suite's habits: this is
the user's file.
"""

import logging

logger = logging.getLogger(__name__)

# -- ADR-025 "Example Usage: Multi-Broker Saga", sagas.py, as written ----------------------
# fmt: off
# sagas.py
from sagaz import Saga, action, trigger  # noqa: E402


class OrderSaga(Saga):
    saga_name = "order-processing"

    # Triggered from Kafka
    @trigger(source="kafka", topic="orders.created", group_id="order-service")
    def from_kafka(self, msg):
        return {"order_id": msg["id"], "source": "kafka"}

    # Triggered from RabbitMQ
    @trigger(source="rabbitmq", queue="orders", exchange="ecommerce")
    def from_rabbitmq(self, msg):
        return {"order_id": msg["order_id"], "source": "rabbitmq"}

    # Triggered from HTTP webhook
    @trigger(source="webhook", path="/api/orders", method="POST")
    def from_webhook(self, request):
        return {"order_id": request.json()["id"], "source": "webhook"}

    # Triggered on schedule (batch processing)
    @trigger(source="cron", schedule="@hourly")
    def from_schedule(self, tick):
        return {"batch_mode": True, "source": "cron"}

    @action("process")
    async def process(self, ctx):
        # Business logic here
        order_id = ctx.get("order_id")
        source = ctx.get("source")
        logger.info(f"Processing order {order_id} from {source}")
        ...
# fmt: on
