"""The store fixtures of the contract tests: a fresh storage location per test, of every
store kind (``backend``, ``store``), the durable ones, the SQL ones, or Redis only.

``test_source_contract.py`` has a ``backend`` fixture of its own (a broker), which wins there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sagaz.abc import SagaStore
from tests.contract.store_backends import Backend, open_store_backend
from tests.services import backend_params


@pytest.fixture(params=backend_params("memory", "sqlite", "postgres", "redis"))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Every store kind."""
    async for made in open_store_backend(request, tmp_path):
        yield made


@pytest.fixture(params=backend_params("sqlite", "postgres", "redis"))
async def durable_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """The durable stores (they refuse work before start, keep JSON only, have a schema)."""
    async for made in open_store_backend(request, tmp_path):
        yield made


@pytest.fixture(params=backend_params("sqlite", "postgres"))
async def sql_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """The SQL stores (a database error can hit the middle of a transaction)."""
    async for made in open_store_backend(request, tmp_path):
        yield made


@pytest.fixture(params=backend_params("redis"))
async def redis_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Redis only (its key layout has data migrations)."""
    async for made in open_store_backend(request, tmp_path):
        yield made


@pytest.fixture
async def store(backend: Backend) -> SagaStore:
    """A started store on a fresh storage location."""
    return await backend.open()
