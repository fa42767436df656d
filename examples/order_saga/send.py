"""Send an order the way other services would: ``python -m examples.order_saga.send kafka
'{"order_id": "K-1", "customer_id": "c-1", "amount": 25, "country": "DE"}'`` (or
``rabbitmq``). For the webhook, use curl (see README.md).

Uses the same settings as the example: ``SAGAZ_KAFKA_BOOTSTRAP_SERVERS``,
``SAGAZ_RABBITMQ_URL`` and the ``ORDER_SAGA_*`` names.
"""

from __future__ import annotations

import asyncio
import sys

from examples.order_saga.events import OrderPlaced
from examples.order_saga.settings import OrderSagaSettings, settings

from sagaz import TriggerConfig


async def to_kafka(
    order: OrderPlaced,
    *,
    config: TriggerConfig | None = None,
    names: OrderSagaSettings = settings,
) -> None:
    """Produce ``order`` to the orders topic, keyed by customer (one partition per customer)."""
    from aiokafka import AIOKafkaProducer

    config = config or TriggerConfig()
    producer = AIOKafkaProducer(bootstrap_servers=config.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(
            names.kafka_topic,
            order.model_dump_json().encode(),
            key=order.customer_id.encode(),
        )
    finally:
        await producer.stop()


async def to_rabbitmq(
    order: OrderPlaced,
    *,
    config: TriggerConfig | None = None,
    names: OrderSagaSettings = settings,
) -> None:
    """Publish ``order`` to the exchange with the routing key the saga's queue is bound by.

    Start the example first: it declares the queue and binds it, and a message published to
    an exchange with no bound queue is dropped by RabbitMQ.
    """
    import aio_pika

    config = config or TriggerConfig()
    connection = await aio_pika.connect(config.rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            names.rabbitmq_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await exchange.publish(
            aio_pika.Message(
                order.model_dump_json().encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=names.rabbitmq_routing_key,
        )


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] not in ("kafka", "rabbitmq"):
        raise SystemExit("usage: python -m examples.order_saga.send kafka|rabbitmq '<order JSON>'")
    order = OrderPlaced.model_validate_json(argv[1])
    asyncio.run(to_kafka(order) if argv[0] == "kafka" else to_rabbitmq(order))
    print(f"sent order {order.order_id} to {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
