"""The example's own settings: the names of the topic, queue and exchange it uses.

Broker addresses, the webhook port and the store are sagaz's settings, read by
``sagaz.TriggerConfig`` and ``main.py`` from ``SAGAZ_*`` variables
(``SAGAZ_KAFKA_BOOTSTRAP_SERVERS``, ``SAGAZ_RABBITMQ_URL``, ``SAGAZ_WEBHOOK_PORT``,
``SAGAZ_STORE_URL``). These are the application's, read from ``ORDER_SAGA_*`` variables, e.g.
``ORDER_SAGA_KAFKA_TOPIC=orders.v2``.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OrderSagaSettings(BaseSettings):
    """Where orders come from, and what the stand-in payment provider accepts."""

    model_config = SettingsConfigDict(env_prefix="ORDER_SAGA_")

    kafka_topic: str = "orders.created"
    kafka_group: str = "order-service"
    rabbitmq_queue: str = "orders"
    rabbitmq_exchange: str = "ecommerce"
    rabbitmq_routing_key: str = "order.placed"
    card_limit: float = Field(default=1000.0, gt=0, description="larger charges are declined")


settings = OrderSagaSettings()
