"""Redis Streams helpers for the suites that talk to the real local Redis.

``streams`` (function) is a raw redis-py client plus the stream names the test used
(:class:`Streams`); the streams are deleted after the test. The tests' consumer group is
:data:`GROUP`. ``private_redis`` is a server of the test's own, which it may stop and start
again (:class:`tests.private_servers.PrivateRedis`).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.private_servers import PrivateRedis
from tests.services import require_marker, require_service, unique_name

if TYPE_CHECKING:  # the driver is imported by the fixture, so unit tests run without it
    import redis.asyncio as aioredis

    from sagaz.sources.redis import RedisStreamSource

__all__ = ["GROUP", "Streams", "kill_connections_of", "private_redis", "streams"]

GROUP = "workers"


class Streams:
    """A raw client plus the stream names a test used (deleted afterwards)."""

    def __init__(self, url: str, client: aioredis.Redis) -> None:
        self.url = url
        self.client: Any = client  # redis-py's stubs are stricter than its behaviour
        self.names: list[str] = []

    def name(self, prefix: str = "sagaz-stream") -> str:
        name = unique_name(prefix)
        self.names.append(name)
        return name

    async def add(self, stream: str, payloads: list[bytes]) -> list[str]:
        """``XADD`` each payload as ``{"data": payload}``, pipelined 1000 at a time; the ids."""
        ids: list[str] = []
        for start in range(0, len(payloads), 1000):
            pipe = self.client.pipeline(transaction=False)
            for payload in payloads[start : start + 1000]:
                pipe.xadd(stream, {"data": payload})
            ids.extend(i.decode() for i in await pipe.execute())
        return ids

    async def pending(self, stream: str, group: str = GROUP) -> int:
        """Entries delivered to the group and not acknowledged (``XPENDING``)."""
        summary = await self.client.xpending(stream, group)
        return int(summary["pending"])

    async def lag(self, stream: str, group: str = GROUP) -> int:
        """Entries not delivered to the group yet."""
        (found,) = [
            g for g in await self.client.xinfo_groups(stream) if g["name"] == group.encode()
        ]
        return int(found["lag"])

    async def consumers(self, stream: str, group: str = GROUP) -> dict[str, int]:
        """Pending entries per consumer of the group."""
        rows = await self.client.xinfo_consumers(stream, group)
        return {row["name"].decode(): int(row["pending"]) for row in rows}


@pytest.fixture
async def streams(redis_url: str) -> AsyncIterator[Streams]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    state = Streams(redis_url, client)
    server = await _server_run(client)
    try:
        yield state
    finally:
        if state.names:
            await client.delete(*state.names)
        restarted = await _server_run(client)
        await client.aclose()
    if restarted != server:  # a stream "vanished" (NOGROUP) in CI twice: tell this cause apart
        pytest.fail(
            f"the local Redis restarted during this test (run {server} became {restarted}): "
            "every key was lost; look at its log (/var/log/redis/ci.log) for why"
        )


async def _server_run(client: Any) -> str:
    """The Redis server's ``run_id``: a new one after every start of the server."""
    info = await client.info("server")
    return str(info["run_id"])


@pytest.fixture
async def private_redis(request: pytest.FixtureRequest) -> AsyncIterator[PrivateRedis]:
    """A running ``redis-server`` of this test's own (``.url``); removed afterwards."""
    require_marker(request)
    require_service(
        "redis-server", shutil.which("redis-server") is not None, "install the Redis server"
    )
    server = PrivateRedis()
    try:
        await server.start()
        yield server
    finally:
        await server.close()


async def kill_connections_of(streams: Streams, source: RedisStreamSource) -> int:
    """``CLIENT KILL`` every connection of ``source`` (its client name), nobody else's."""
    name = f"sagaz:{source.consumer}"
    clients = [c for c in await streams.client.client_list() if c["name"] == name]
    for client in clients:
        await streams.client.client_kill_filter(_id=client["id"])
    return len(clients)
