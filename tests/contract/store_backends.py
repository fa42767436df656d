"""The storage locations the store contract tests run on (one per store kind), and small
record helpers shared by the store test files; the fixtures are in ``conftest.py``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.records import SagaRecord
from sagaz.storage import MemorySagaStore, PostgresSagaStore, RedisSagaStore, SQLiteSagaStore
from sagaz.types import SagaStatus
from tests.services import delete_redis_keys, drop_postgres_schema, unique_name

__all__ = ["Backend", "from_now", "open_store_backend", "saga_record"]


@dataclasses.dataclass
class Backend:
    """One storage location and a way to open (more) stores on it."""

    name: str
    make: Callable[..., SagaStore]
    #: how many store instances the contention tests spread their callers over
    instances: int
    opened: list[SagaStore] = dataclasses.field(default_factory=list)

    async def open(self, **options: Any) -> SagaStore:
        store = self.make(**options)
        await store.start()
        self.opened.append(store)
        return store

    async def open_many(self, count: int) -> list[SagaStore]:
        options = {"max_size": 3} if self.name == "postgres" else {}
        return list(await asyncio.gather(*(self.open(**options) for _ in range(count))))


async def open_store_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Backend]:
    """A fresh, empty storage location of one kind; every store opened on it is stopped."""
    kind: str = request.param
    cleanup: Callable[[], Any] | None = None
    if kind == "memory":
        shared = MemorySagaStore()
        backend = Backend(kind, lambda **_: shared, instances=1)
    elif kind == "sqlite":
        path = tmp_path / "sagaz.db"
        backend = Backend(kind, lambda **kw: SQLiteSagaStore(path, **kw), instances=8)
    elif kind == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        schema = unique_name("sagaz_test")
        backend = Backend(
            kind, lambda **kw: PostgresSagaStore(dsn, schema=schema, **kw), instances=10
        )
        cleanup = lambda: drop_postgres_schema(dsn, schema)  # noqa: E731
    else:
        url = request.getfixturevalue("redis_url")
        prefix = unique_name("sagaz-test")
        backend = Backend(kind, lambda **kw: RedisSagaStore(url, prefix=prefix, **kw), 50)
        cleanup = lambda: delete_redis_keys(url, prefix)  # noqa: E731
    try:
        yield backend
    finally:
        for store in backend.opened:
            await store.stop()
        if cleanup is not None:
            await cleanup()


def saga_record(saga_id: str = "s1", **changes: Any) -> SagaRecord:
    base = SagaRecord(saga_id, "order-saga", SagaStatus.PENDING, {"order_id": 1})
    return dataclasses.replace(base, **changes)


def from_now(seconds: float = 60) -> datetime:
    return utcnow() + timedelta(seconds=seconds)
