"""Shared fixtures: real services (skip when absent, fail under SAGAZ_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import pytest

from tests.services import (
    POSTGRES_DSN,
    RABBITMQ_URL,
    REDIS_URL,
    require_service,
    tcp_reachable,
)

pytest_plugins = [
    "tests.fixtures_kafka",
    "tests.fixtures_rabbitmq",
    "tests.fixtures_redis",
    "tests.fixtures_sqs",
]


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """DSN of the local PostgreSQL (``SAGAZ_TEST_POSTGRES_DSN`` overrides)."""
    require_service(
        "PostgreSQL",
        tcp_reachable(POSTGRES_DSN, 5432),
        f"start it, or set SAGAZ_TEST_POSTGRES_DSN (tried {POSTGRES_DSN})",
    )
    return POSTGRES_DSN


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the local Redis (``SAGAZ_TEST_REDIS_URL`` overrides)."""
    require_service(
        "Redis",
        tcp_reachable(REDIS_URL, 6379),
        f"start it, or set SAGAZ_TEST_REDIS_URL (tried {REDIS_URL})",
    )
    return REDIS_URL


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """URL of the local RabbitMQ (``SAGAZ_TEST_RABBITMQ_URL`` overrides)."""
    require_service(
        "RabbitMQ",
        tcp_reachable(RABBITMQ_URL, 5672),
        f"start it, or set SAGAZ_TEST_RABBITMQ_URL (tried {RABBITMQ_URL})",
    )
    return RABBITMQ_URL


@pytest.fixture(autouse=True)
def empty_trigger_registry(sagaz_registry: object) -> None:
    """Each test starts with no registered triggers: sagas that other test modules define at
    import time must not start sources (a Kafka consumer...) in an unrelated engine test.
    The plugin's ``sagaz_registry`` fixture puts everything back afterwards."""
    from sagaz.triggers import registry

    registry.clear()
