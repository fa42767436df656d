"""A saga killed between steps resumes by saga_id from a durable store, in a "new process"
(a fresh store object on the same database): completed steps are not executed again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sagaz import Saga, SagaContext, SagaStatus, action, compensate
from sagaz.abc import SagaStore
from sagaz.storage.postgres import PostgresSagaStore
from sagaz.storage.sqlite import SQLiteSagaStore
from tests.services import backend_params, drop_postgres_schema, unique_name

runs: dict[str, int] = {}
events: dict[str, asyncio.Event] = {}  # made per test: an Event belongs to one event loop


class Checkout(Saga):
    saga_name = "durable-checkout"

    @action("reserve")
    async def reserve(self, ctx: SagaContext) -> dict[str, Any]:
        runs["reserve"] = runs.get("reserve", 0) + 1
        return {"reservation": f"r-{ctx['order']}"}

    @action("charge")
    async def charge(self, ctx: SagaContext) -> dict[str, Any]:
        runs["charge"] = runs.get("charge", 0) + 1
        ctx["charged_by"] = "card"  # a direct write survives too
        return {"charge": 42}

    @action("ship")
    async def ship(self, ctx: SagaContext) -> dict[str, Any]:
        runs["ship"] = runs.get("ship", 0) + 1
        events["entered"].set()
        await events["gate"].wait()
        return {"tracking": f"t-{ctx['reservation']}"}

    @compensate("reserve")
    async def release(self, ctx: SagaContext) -> None:
        runs["release"] = runs.get("release", 0) + 1


@pytest.fixture(params=backend_params("sqlite", "postgres"))
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], SagaStore]]:
    if request.param == "sqlite":
        path = tmp_path / "sagaz.db"
        yield lambda: SQLiteSagaStore(str(path))
        return
    dsn = request.getfixturevalue("postgres_dsn")
    schema = unique_name("resume").replace("-", "_")
    yield lambda: PostgresSagaStore(dsn, schema=schema, max_size=2)
    await drop_postgres_schema(dsn, schema)


async def test_killed_saga_resumes_from_the_store_without_rerunning_steps(
    store_factory: Callable[[], SagaStore],
) -> None:
    runs.clear()
    events["gate"] = asyncio.Event()
    events["entered"] = asyncio.Event()
    async with store_factory() as store:
        task = asyncio.create_task(Checkout().run({"order": 7}, saga_id="order-7", store=store))
        await asyncio.wait_for(events["entered"].wait(), 10)
        task.cancel()  # the process dies while "ship" runs
        with pytest.raises(asyncio.CancelledError):
            await task
        record = await store.get_saga("order-7")
        assert record is not None
        assert record.status is SagaStatus.RUNNING

    events["gate"].set()
    async with store_factory() as fresh:  # a new process on the same database
        result = await Checkout().run(saga_id="order-7", store=fresh)
        steps = {s.name: s.status.value for s in await fresh.get_steps("order-7")}
    assert result.status is SagaStatus.COMPLETED
    assert runs == {"reserve": 1, "charge": 1, "ship": 2}
    assert result.context == {
        "order": 7,
        "reservation": "r-7",
        "charge": 42,
        "charged_by": "card",
        "tracking": "t-r-7",
    }
    assert steps == {"reserve": "completed", "charge": "completed", "ship": "completed"}
