"""The ADR's code blocks as tests (``tests/adr/``): fixtures.

Each test module holds the code blocks of one ADR section, copied as the ADR writes them; the
test around a block only supplies what the ADR leaves undefined (an event model, ``logger``,
``storage``...), says where the broker is (the ``SAGAZ_*`` environment, as a deployment
would) and sends an event through the real source.

The ADR names its topics, queues and streams (``model.drift``, ``orders``...), so these tests
use those names instead of unique ones: the fixtures clean up what a test named, and a test
looks for its own events (a unique id in the payload) rather than counting a whole topic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import sagaz
from sagaz.config import reset_configuration
from tests.adr.support import Kafka
from tests.fixtures_rabbitmq import Rabbit
from tests.fixtures_redis import Streams
from tests.fixtures_sqs import SQS_ACCESS_KEY_ID, SQS_SECRET_ACCESS_KEY


@pytest.fixture(autouse=True)
async def process_wide_engine() -> AsyncIterator[None]:
    """Each test starts without a process-wide engine or store (``sagaz.start_triggers()``
    falls back to a fresh in-memory store) and leaves none behind, even when it fails."""
    reset_configuration()
    try:
        yield
    finally:
        await sagaz.stop_triggers()
        reset_configuration()


@pytest.fixture
async def kafka(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Kafka]:
    """The broker's address in ``SAGAZ_KAFKA_BOOTSTRAP_SERVERS`` and a client for the test."""
    from aiokafka.admin import AIOKafkaAdminClient

    monkeypatch.setenv("SAGAZ_KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        yield Kafka(kafka_bootstrap, admin)
    finally:
        await sagaz.stop_triggers()
        await admin.close()


# The broker fixtures below stop the process-wide engine when their test ends, before the
# broker's own fixture deletes the queues and streams the test named: a consumer still running
# would recreate them (a Redis group made again on an empty stream would then hide the next
# test's events).


@pytest.fixture
async def redis_env(streams: Streams, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Streams]:
    """The local Redis in ``SAGAZ_REDIS_URL``; streams the test names are deleted before and
    after it."""
    monkeypatch.setenv("SAGAZ_REDIS_URL", streams.url)
    yield streams
    await sagaz.stop_triggers()


@pytest.fixture
async def rabbit_env(rabbit: Rabbit, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rabbit]:
    """The local RabbitMQ in ``SAGAZ_RABBITMQ_URL``."""
    monkeypatch.setenv("SAGAZ_RABBITMQ_URL", rabbit.url)
    yield rabbit
    await sagaz.stop_triggers()


@pytest.fixture
async def sqs_env(
    sqs_endpoint: str, sqs_client: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    """The SQS endpoint in ``SAGAZ_SQS_ENDPOINT_URL`` and credentials where the AWS chain
    finds them (the environment), as a deployment would give them; the raw client."""
    monkeypatch.setenv("SAGAZ_SQS_ENDPOINT_URL", sqs_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SQS_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SQS_SECRET_ACCESS_KEY)
    yield sqs_client
    await sagaz.stop_triggers()
