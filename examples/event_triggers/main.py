"""Run the three poll triggers: ``python -m examples.event_triggers.main`` (from the
repository root). Ctrl-C (or SIGTERM) stops gracefully."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from examples.event_triggers.sagas import (
    DIRECTORIES,
    INBOX,
    file_watcher,
    queue_monitor,
    service_health,
)

import sagaz
from sagaz.storage import store_from_url

logger = logging.getLogger("examples.event_triggers")


async def main() -> None:
    for directory in DIRECTORIES:
        directory.mkdir(parents=True, exist_ok=True)
    store = store_from_url(os.environ.get("SAGAZ_STORE_URL", "sqlite:///sagaz.db"))
    await sagaz.start_triggers(sagaz.TriggerConfig(), store)  # SAGAZ_REDIS_URL, ...
    logger.info("event triggers are now active:")
    logger.info(
        "- file watcher: polls every %gs for new files in %s", file_watcher.poll_interval, INBOX
    )
    logger.info(
        "- queue monitor: polls every %gs, fires when Redis list %r holds more than %d jobs",
        queue_monitor.poll_interval,
        queue_monitor.key,
        queue_monitor.threshold,
    )
    logger.info(
        "- health check: polls every %gs, fires after %d failures of %s",
        service_health.poll_interval,
        service_health.failure_threshold,
        service_health.url,
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
    asyncio.run(main())
