"""Real services for the test suite.

A service that is absent makes its tests skip on a laptop, but **fail** when
``SAGAZ_REQUIRE_SERVICES=1`` (``.ci/run`` sets it): CI never passes by skipping.

Markers: a test that talks to a service carries the service's marker (``postgres``,
``redis``, ``rabbitmq``, ``kafka``, ``sqs``) and, derived from it, ``integration``; so
``pytest -m "not integration"`` needs no service and ``pytest -m integration`` selects every
test that does. ``tests/conftest.py`` adds the marker to every test that requests a service
fixture (:data:`SERVICE_FIXTURES`); a test that reaches one through
``request.getfixturevalue`` carries it by hand (:func:`backend_params`), and the fixture
fails a test that reaches it without the marker (:func:`require_marker`).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlparse

import pytest

__all__ = [
    "POSTGRES_DSN",
    "RABBITMQ_URL",
    "REDIS_URL",
    "SERVICES",
    "SERVICE_FIXTURES",
    "answers_within",
    "backend_params",
    "delete_redis_keys",
    "drop_postgres_schema",
    "require_marker",
    "require_service",
    "services_required",
    "tcp_reachable",
    "unique_name",
]

POSTGRES_DSN = os.environ.get(
    "SAGAZ_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("SAGAZ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("SAGAZ_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")

#: the services' markers (registered in pyproject.toml)
SERVICES = ("postgres", "redis", "rabbitmq", "kafka", "sqs")

#: each service fixture and the marker of the service it reaches
SERVICE_FIXTURES = {
    "postgres_dsn": "postgres",
    "redis_url": "redis",
    "rabbitmq_url": "rabbitmq",
    "kafka_bootstrap": "kafka",
    "private_kafka": "kafka",
    "private_postgres": "postgres",
    "private_redis": "redis",
    "private_rabbitmq": "rabbitmq",
    "sqs_endpoint": "sqs",
}


def services_required() -> bool:
    """True when a missing service must fail the run instead of skipping."""
    return os.environ.get("SAGAZ_REQUIRE_SERVICES", "") not in ("", "0", "false", "no")


def tcp_reachable(url: str, default_port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at the url's host and port."""
    parsed = urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    port = parsed.port or default_port
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def answers_within(
    probe: Callable[[], bool], seconds: float, alive: Callable[[], bool] = lambda: True
) -> bool:
    """Call ``probe`` until it answers True, ``alive()`` turns False (the server process
    died), or ``seconds`` pass. Synchronous, for session fixtures that start a server.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive():
        if probe():
            return True
        time.sleep(0.05)  # pause between probes, not a wait for a result
    return False


def require_marker(request: pytest.FixtureRequest) -> None:
    """Fail the test that reached the service fixture ``request.fixturename`` without the
    service's marker (only ``request.getfixturevalue`` can get there unmarked), before the
    service's availability is even checked: the drift shows on a laptop without services too.
    """
    marker = SERVICE_FIXTURES[request.fixturename]
    if request.node.get_closest_marker(marker) is None:
        pytest.fail(
            f"{request.node.nodeid} reaches {request.fixturename} but is not marked "
            f"`{marker}`: a test reaching it through request.getfixturevalue needs "
            f"`pytest.param(..., marks=pytest.mark.{marker})` (tests/services.py: "
            f"backend_params) or `@pytest.mark.{marker}`, so that `-m integration` selects it "
            f"and `-m 'not integration'` leaves it out",
            pytrace=False,
        )


def backend_params(*kinds: str) -> list[object]:
    """Parameters of a fixture that reaches a service by kind (``request.getfixturevalue``):
    a kind that is a service carries the service's marker; the ids stay the kinds.

    >>> @pytest.fixture(params=backend_params("sqlite", "postgres"))  # doctest: +SKIP
    """
    return [
        pytest.param(kind, marks=getattr(pytest.mark, kind)) if kind in SERVICES else kind
        for kind in kinds
    ]


def require_service(name: str, available: bool, hint: str) -> None:
    """Skip (laptop) or fail (CI) when ``name`` is not available."""
    if available:
        return
    message = f"{name} is not available: {hint}"
    if services_required():
        pytest.fail(f"{message} (SAGAZ_REQUIRE_SERVICES=1, so this is a failure, not a skip)")
    pytest.skip(message)


def unique_name(prefix: str) -> str:
    """A per-test name (topic, queue, stream, key prefix) so tests can run in any order."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def drop_postgres_schema(dsn: str, schema: str) -> None:
    """Drop a test's PostgreSQL schema and everything in it."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def delete_redis_keys(url: str, prefix: str) -> None:
    """Delete a test's Redis keys: every key under ``prefix:``."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
