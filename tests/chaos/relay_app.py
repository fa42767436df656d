"""The relay process the relay chaos test kills: an ``OutboxRelay`` on a shared store,
publishing to a Redis stream, each message tagged with the relay that published it.

Run by ``tests/chaos/test_relay_handover.py`` as ``python -m tests.chaos.relay_app`` and
configured by ``RELAY_*`` environment variables (see :func:`main`). It runs until SIGKILL
(the chaos) or SIGTERM (the graceful stop, which must exit 0).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal

from sagaz.abc import Publisher
from sagaz.outbox import OutboxRelay, RedisStreamPublisher
from sagaz.records import OutboxMessage
from sagaz.storage.url import store_from_url

#: the header that names the relay which published a message (field ``h:relay``)
RELAY_HEADER = "relay"


class TaggingPublisher(Publisher):
    """Publishes through ``inner``, adding the relay's name as a header, and takes
    ``delay`` seconds per message (so a kill lands mid-batch)."""

    def __init__(self, inner: Publisher, holder: str, delay: float) -> None:
        self.inner = inner
        self.holder = holder
        self.delay = delay

    async def start(self) -> None:
        await self.inner.start()
        await super().start()

    async def stop(self) -> None:
        try:
            await self.inner.stop()
        finally:
            await super().stop()

    async def publish(self, message: OutboxMessage) -> None:
        await asyncio.sleep(self.delay)  # a broker round trip, paced
        tagged = dataclasses.replace(
            message, headers={**message.headers, RELAY_HEADER: self.holder}
        )
        await self.inner.publish(tagged)


async def main() -> None:
    env = os.environ
    holder = env["RELAY_HOLDER"]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    publisher = TaggingPublisher(
        RedisStreamPublisher(env["RELAY_REDIS_URL"]), holder, float(env["RELAY_PUBLISH_DELAY"])
    )
    relay = OutboxRelay(
        store_from_url(env["RELAY_STORE_URL"]),
        publisher,
        poll_interval=0.1,
        lease_seconds=float(env["RELAY_LEASE_SECONDS"]),
        holder=holder,
    )
    async with relay.store, relay:
        await stop.wait()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(main())
