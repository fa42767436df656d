"""Run the retraining saga: ``python -m examples.model_retraining.main`` (from the repository
root). Ctrl-C (or SIGTERM) stops gracefully: running retrainings finish first."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import examples.model_retraining.sagas  # noqa: F401  (importing the module registers its triggers)

import sagaz
from sagaz.storage import store_from_url

logger = logging.getLogger("examples.model_retraining")


async def main() -> None:
    config = sagaz.TriggerConfig()  # SAGAZ_KAFKA_BOOTSTRAP_SERVERS, ...
    store = store_from_url(os.environ.get("SAGAZ_STORE_URL", "sqlite:///sagaz.db"))
    engine = await sagaz.start_triggers(config, store)
    logger.info("model retraining running %d triggers; Ctrl-C stops", len(engine.triggers))
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
    asyncio.run(main())
