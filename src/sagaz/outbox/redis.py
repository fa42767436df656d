"""The outbox's Redis Streams publisher (``XADD``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sagaz._imports import require_extra
from sagaz.abc import Publisher
from sagaz.exceptions import ConfigurationError
from sagaz.outbox.messages import encode_payload
from sagaz.records import OutboxMessage

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisStreamPublisher"]

logger = logging.getLogger(__name__)


class RedisStreamPublisher(Publisher):
    """Appends each message to the Redis Stream ``message.topic`` with ``XADD``.

    Fields: ``data`` (the JSON payload), ``saga_id``, ``outbox_id``, and one ``h:<name>``
    field per header. With ``maxlen``, the stream is trimmed to about that many entries
    (``MAXLEN ~``).

    >>> publisher = RedisStreamPublisher("redis://localhost", maxlen=100_000)  # doctest: +SKIP
    """

    def __init__(self, url: str, *, maxlen: int | None = None) -> None:
        if maxlen is not None and (isinstance(maxlen, bool) or maxlen < 1):
            raise ConfigurationError(f"maxlen={maxlen!r} must be None or a positive integer")
        self.url = url
        self.maxlen = maxlen
        self._client: Redis | None = None

    async def start(self) -> None:
        """Check that redis-py is installed and make the client (it connects on first use)."""
        if self._started:
            return
        redis_asyncio = require_extra("redis", "redis.asyncio")
        self._client = redis_asyncio.Redis.from_url(self.url, client_name="sagaz:outbox")
        await super().start()

    async def stop(self) -> None:
        """Close the client. Idempotent."""
        client, self._client = self._client, None
        try:
            if client is not None:
                await client.aclose()
        finally:
            await super().stop()

    async def publish(self, message: OutboxMessage) -> None:
        """``XADD <topic> [MAXLEN ~ n] * data <json> saga_id <id> outbox_id <id> h:<k> <v>...``"""
        self._require_started()
        assert self._client is not None
        fields: dict[str, bytes | str] = {
            "data": encode_payload(message.payload),
            "saga_id": message.saga_id,
            "outbox_id": str(message.id),
        }
        fields.update({f"h:{name}": value for name, value in message.headers.items()})
        await self._client.xadd(
            message.topic,
            fields,  # type: ignore[arg-type]
            maxlen=self.maxlen,
            approximate=True,
        )
