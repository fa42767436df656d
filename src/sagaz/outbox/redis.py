"""The outbox's Redis Streams publisher (``XADD``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sagaz._imports import require_extra
from sagaz._redis_pool import DEFAULT_MAX_CONNECTIONS, DEFAULT_POOL_TIMEOUT, blocking_pool
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
    (``MAXLEN ~``). Its connections come from a blocking pool of at most ``max_connections``
    (default 20): a publish waits up to ``pool_timeout`` seconds (default 20) for one.

    >>> publisher = RedisStreamPublisher("redis://localhost", maxlen=100_000)  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        *,
        maxlen: int | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
    ) -> None:
        if maxlen is not None and (isinstance(maxlen, bool) or maxlen < 1):
            raise ConfigurationError(f"maxlen={maxlen!r} must be None or a positive integer")
        if isinstance(max_connections, bool) or max_connections < 1:
            raise ConfigurationError(
                f"max_connections={max_connections!r} must be a positive integer"
            )
        self.url = url
        self.maxlen = maxlen
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        self._client: Redis | None = None

    async def start(self) -> None:
        """Check that redis-py is installed and make the client (it connects on first use)."""
        if self._started:
            return
        redis_asyncio = require_extra("redis", "redis.asyncio")
        pool = blocking_pool(
            self.url,
            user="RedisStreamPublisher",
            max_connections=self.max_connections,
            timeout=self.pool_timeout,
            client_name="sagaz:outbox",
        )
        self._client = redis_asyncio.Redis.from_pool(pool)
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
