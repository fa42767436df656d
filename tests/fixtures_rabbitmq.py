"""RabbitMQ helpers for the suites that talk to the real local broker.

``rabbit`` (function) is a raw aio-pika client (:class:`Rabbit`) for publishing and
inspecting; it deletes the queues and exchanges the test named. ``close_connections_named``
drops a client's connection from the broker side (``rabbitmqctl``), to simulate a broker loss.
``private_rabbitmq`` is a node of the test's own, which it may stop and start again
(:class:`tests.private_servers.PrivateRabbitMQ`).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from sagaz.testing import eventually
from tests.private_servers import PrivateRabbitMQ, rabbitmq_binary
from tests.services import require_marker, require_service, unique_name

if TYPE_CHECKING:  # the driver is imported where it is used, so unit tests run without it
    import aio_pika

__all__ = ["Rabbit", "close_connections_named", "private_rabbitmq", "rabbit"]


@dataclass
class Rabbit:
    """A raw aio-pika client for publishing and inspecting; deletes what the test names."""

    url: str
    connection: aio_pika.abc.AbstractConnection
    channel: aio_pika.abc.AbstractChannel
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)

    def queue_name(self, prefix: str = "sagaz-rmq") -> str:
        """A unique queue name (an exchange of the same name is deleted with it too)."""
        name = unique_name(prefix)
        self.queues.append(name)
        return name

    def exchange_name(self, prefix: str = "sagaz-rmq-x") -> str:
        name = unique_name(prefix)
        self.exchanges.append(name)
        return name

    async def declare(self, queue: str) -> None:
        await self.channel.declare_queue(queue, durable=True)

    async def publish(
        self,
        queue: str,
        bodies: Sequence[bytes],
        *,
        message_ids: Sequence[str | None] | None = None,
    ) -> None:
        """Publish to ``queue`` through the default exchange, confirmed, 1000 at a time."""
        import aio_pika

        ids = message_ids or [None] * len(bodies)
        messages = [
            aio_pika.Message(body, message_id=mid) for body, mid in zip(bodies, ids, strict=True)
        ]
        for start in range(0, len(messages), 1000):
            await asyncio.gather(
                *(
                    self.channel.default_exchange.publish(message, routing_key=queue)
                    for message in messages[start : start + 1000]
                )
            )

    async def ready(self, queue: str) -> int:
        """Messages ready in ``queue`` (not delivered, or delivered and handed back)."""
        declared = await self.channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        assert count is not None
        return count

    async def wait_ready(self, queue: str, count: int) -> None:
        """Wait until ``queue`` holds ``count`` ready messages (a broker hands un-acked
        messages back a moment after their consumer's connection closed)."""

        async def holds() -> bool:
            return await self.ready(queue) == count

        await eventually(holds, what=f"{count} ready messages in {queue}")

    async def take_all(self, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Get (and ack) every message waiting in ``queue``."""
        declared = await self.channel.declare_queue(queue, passive=True)
        taken = []
        while (message := await declared.get(fail=False, timeout=5)) is not None:
            await message.ack()
            taken.append(message)
        return taken


@pytest.fixture
async def rabbit(rabbitmq_url: str) -> AsyncIterator[Rabbit]:
    import aio_pika

    connection = await aio_pika.connect(rabbitmq_url)
    channel = await connection.channel(publisher_confirms=True)
    state = Rabbit(rabbitmq_url, connection, channel)
    try:
        yield state
    finally:
        cleanup = await connection.channel()
        for queue in state.queues:
            await cleanup.queue_delete(queue)
            await cleanup.exchange_delete(queue)  # a dead-letter exchange of that name, if any
        for exchange in state.exchanges:
            await cleanup.exchange_delete(exchange)
        await connection.close()


@pytest.fixture
async def private_rabbitmq(request: pytest.FixtureRequest) -> AsyncIterator[PrivateRabbitMQ]:
    """A running RabbitMQ node of this test's own (``.url``); removed afterwards."""
    require_marker(request)
    script = rabbitmq_binary()
    require_service(
        "rabbitmq-server",
        script is not None,
        "install rabbitmq-server or set SAGAZ_TEST_RABBITMQ_SERVER to its start script",
    )
    assert script is not None
    server = PrivateRabbitMQ(script)
    try:
        await server.start()
        yield server
    finally:
        await server.close()


async def close_connections_named(name: str) -> int:
    """Close, from the broker side, the connections whose client named itself ``name``."""
    require_service(
        "rabbitmqctl", shutil.which("rabbitmqctl") is not None, "install rabbitmq-server"
    )

    async def rabbitmqctl(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return out.decode()

    listing = await rabbitmqctl(
        "list_connections", "-q", "--no-table-headers", "pid", "client_properties"
    )
    marker = f'{{"connection_name","{name}"}}'
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if marker in line]
    for pid in pids:
        await rabbitmqctl("close_connection", pid, "sagaz test: simulated broker loss")
    return len(pids)
