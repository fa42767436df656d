"""Run the order saga: ``python -m examples.order_saga.main`` (from the repository root).

Importing the sagas module registers its triggers; ``sagaz.start_triggers()`` consumes
Kafka and RabbitMQ and serves the webhook until Ctrl-C (or SIGTERM), then stops gracefully:
no new orders are taken, running sagas finish, then the store is closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import examples.order_saga.sagas  # noqa: F401  (importing the module registers its triggers)

import sagaz
from sagaz.storage import store_from_url

logger = logging.getLogger("examples.order_saga")


async def main() -> None:
    config = sagaz.TriggerConfig()  # SAGAZ_KAFKA_BOOTSTRAP_SERVERS, SAGAZ_RABBITMQ_URL, ...
    store = store_from_url(os.environ.get("SAGAZ_STORE_URL", "sqlite:///sagaz.db"))
    engine = await sagaz.start_triggers(config, store)
    logger.info(
        "order saga running %d triggers (POST http://%s:%d/api/orders); Ctrl-C stops",
        len(engine.triggers),
        config.webhook_host,
        config.webhook_port,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        logger.info("stopping: finishing running sagas")
        await sagaz.stop_triggers()
        logger.info("stopped")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    asyncio.run(main())
