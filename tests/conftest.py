"""Shared fixtures: real services (skip when absent, fail under SAGAZ_REQUIRE_SERVICES=1),
and the service markers (see ``tests/services.py``).

Each service has a session fixture that checks once whether it is there (``_postgres_dsn``...)
and a public, function-scoped one that tests request (``postgres_dsn``...): the public one
first checks that the test carries the service's marker, then asks the session fixture.

The suite runs in parallel (pytest-xdist, ``-n auto --dist loadgroup`` in pyproject.toml):
each worker is a process of its own with its own session fixtures (its own Tansu broker, its
own moto server, on free ports), and every test names what it creates on a shared service
uniquely (``tests.services.unique_name``). :data:`GROUPS` keeps some tests on one worker.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sagaz.abc import SagaStore
from sagaz.storage.memory import MemorySagaStore
from sagaz.storage.sqlite import SQLiteSagaStore
from tests.services import (
    POSTGRES_DSN,
    RABBITMQ_URL,
    REDIS_URL,
    SERVICE_FIXTURES,
    SERVICES,
    require_marker,
    require_service,
    tcp_reachable,
)

pytest_plugins = [
    "pytester",
    "tests.fixtures_kafka",
    "tests.fixtures_postgres",
    "tests.fixtures_rabbitmq",
    "tests.fixtures_redis",
    "tests.fixtures_sqs",
    "tests.fixtures_tracing",
]


#: The most workers ``-n auto`` starts. The tests mostly wait on brokers, stores and
#: subprocesses, so a worker more than the CPUs still shortens the run; past that they only
#: compete for the CPUs (see :func:`pytest_xdist_auto_num_workers`).
MAX_WORKERS = 4

#: xdist groups (``--dist loadgroup``): the tests of a group run one after the other on one
#: worker. A marker puts a test in one (``chaos``: the chaos tests, which run app processes
#: flat out and kill them at moments they measure, must not share the CPUs with each other);
#: so does a fixture (``site``: ``mkdocs build`` runs once per worker that needs the site;
#: ``rabbit_env``/``redis_env``: tests/adr uses the ADR's own queue and stream names, such as
#: ``events`` and ``failed-triggers``, on the shared RabbitMQ and Redis servers).
GROUPS = {
    "marker:chaos": "chaos",
    "fixture:site": "mkdocs-site",
    "fixture:rabbit_env": "adr-brokers",
    "fixture:redis_env": "adr-brokers",
}


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: ``PYTEST_XDIST_AUTO_NUM_WORKERS`` if set, else one more worker than the
    CPUs the process may use, at least 2 and at most :data:`MAX_WORKERS`."""
    explicit = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if explicit:
        return int(explicit)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(2, min((cpus or 1) + 1, MAX_WORKERS))


def _group(item: pytest.Item) -> str | None:
    for key, group in GROUPS.items():
        kind, name = key.split(":", 1)
        if kind == "marker" and item.get_closest_marker(name) is not None:
            return group
        if kind == "fixture" and name in getattr(item, "fixturenames", ()):
            return group
    return None


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects anything
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with the services whose fixtures it requests, and with
    ``integration`` when it has any service marker (set by hand or here); under xdist, put
    the tests of :data:`GROUPS` in their group."""
    handmade: list[str] = []
    grouping = config.pluginmanager.hasplugin("xdist")  # the marker is xdist's
    for item in items:
        if grouping and (group := _group(item)) is not None:
            item.add_marker(pytest.mark.xdist_group(group))
        for fixture in sorted(SERVICE_FIXTURES.keys() & set(getattr(item, "fixturenames", ()))):
            if item.get_closest_marker(SERVICE_FIXTURES[fixture]) is None:
                item.add_marker(SERVICE_FIXTURES[fixture])
        services = {mark.name for mark in item.iter_markers() if mark.name in SERVICES}
        if services:
            item.add_marker("integration")
        elif item.get_closest_marker("integration") is not None:
            handmade.append(item.nodeid)
    if handmade:
        raise pytest.UsageError(
            "`integration` follows from a service marker (" + ", ".join(SERVICES) + "); "
            "mark the service these tests talk to instead, or nothing if they need none: "
            + ", ".join(handmade)
        )


@pytest.fixture(scope="session")
def _postgres_dsn() -> str:
    require_service(
        "PostgreSQL",
        tcp_reachable(POSTGRES_DSN, 5432),
        f"start it, or set SAGAZ_TEST_POSTGRES_DSN (tried {POSTGRES_DSN})",
    )
    return POSTGRES_DSN


@pytest.fixture
def postgres_dsn(request: pytest.FixtureRequest) -> str:
    """DSN of the local PostgreSQL (``SAGAZ_TEST_POSTGRES_DSN`` overrides)."""
    require_marker(request)
    dsn: str = request.getfixturevalue("_postgres_dsn")
    return dsn


@pytest.fixture(scope="session")
def _redis_url() -> str:
    require_service(
        "Redis",
        tcp_reachable(REDIS_URL, 6379),
        f"start it, or set SAGAZ_TEST_REDIS_URL (tried {REDIS_URL})",
    )
    return REDIS_URL


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """URL of the local Redis (``SAGAZ_TEST_REDIS_URL`` overrides)."""
    require_marker(request)
    url: str = request.getfixturevalue("_redis_url")
    return url


@pytest.fixture(scope="session")
def _rabbitmq_url() -> str:
    require_service(
        "RabbitMQ",
        tcp_reachable(RABBITMQ_URL, 5672),
        f"start it, or set SAGAZ_TEST_RABBITMQ_URL (tried {RABBITMQ_URL})",
    )
    return RABBITMQ_URL


@pytest.fixture
def rabbitmq_url(request: pytest.FixtureRequest) -> str:
    """URL of the local RabbitMQ (``SAGAZ_TEST_RABBITMQ_URL`` overrides)."""
    require_marker(request)
    url: str = request.getfixturevalue("_rabbitmq_url")
    return url


@pytest.fixture(autouse=True)
def empty_trigger_registry(sagaz_registry: object) -> None:
    """Each test starts with no registered triggers: sagas that other test modules define at
    import time must not start sources (a Kafka consumer...) in an unrelated engine test.
    The plugin's ``sagaz_registry`` fixture puts everything back afterwards."""
    from sagaz.triggers import registry

    registry.clear()


@pytest.fixture(params=["memory", "sqlite"])
async def local_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaStore]:
    """A started store that needs no service: the memory store, then an SQLite file."""
    made: SagaStore = (
        MemorySagaStore() if request.param == "memory" else SQLiteSagaStore(tmp_path / "local.db")
    )
    async with made:
        yield made
