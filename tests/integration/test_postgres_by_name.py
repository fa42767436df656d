"""The PostgreSQL store's index by saga name holds the finished sagas only (schema 14): a
saga's insert takes no entry in it, its finish one (the finish is not a HOT update: it
moves the row between the partial indexes, and took a second entry in the index by name
when that held every saga). ``list_sagas`` by name reads the active sagas along
``saga_executions_active`` and the finished ones along the index by name. A schema 13 is
upgraded to it with its rows, and every list by name finds them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from sagaz.clock import utcnow
from sagaz.records import SagaRecord, SchemaVersions, StepRecord
from sagaz.storage.postgres import PostgresSagaStore
from sagaz.storage.postgres_schema import DERIVED_COLUMNS, SCHEMA_VERSION, derived_values
from sagaz.types import SagaStatus, StepStatus
from tests.schema_support import make_outdated
from tests.services import drop_postgres_schema, unique_name

_BY_NAME = "(saga_name, seq) WHERE (finished_at IS NOT NULL)"


@pytest.fixture
async def schema(postgres_dsn: str) -> AsyncIterator[str]:
    name = unique_name("sagaz_name")
    try:
        yield name
    finally:
        await drop_postgres_schema(postgres_dsn, name)


async def _indexes(dsn: str, schema: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1", schema
        )
    finally:
        await conn.close()
    return {row["indexname"]: row["indexdef"] for row in rows}


async def test_a_new_schema_indexes_the_finished_sagas_by_name(
    postgres_dsn: str, schema: str
) -> None:
    async with PostgresSagaStore(postgres_dsn, schema=schema):
        pass
    assert (await _indexes(postgres_dsn, schema))["saga_executions_by_name"].endswith(_BY_NAME)


async def test_a_version_13_schema_is_upgraded_and_lists_by_name_find_every_saga(
    postgres_dsn: str, schema: str
) -> None:
    store = PostgresSagaStore(postgres_dsn, schema=schema)
    assert await make_outdated(store, 13) == 13  # (its saga "old" is named order-saga)
    statuses = list(SagaStatus)
    sagas = [  # id, name, status: every status under each name, interleaved
        (f"s{n:02}", "order" if n % 3 else "payment", statuses[n % len(statuses)])
        for n in range(42)
    ]
    old = utcnow() - timedelta(days=1)
    conn = await asyncpg.connect(postgres_dsn)
    try:  # as sagaz 13 wrote them (the derived columns of schema 11)
        await conn.executemany(
            f'INSERT INTO "{schema}".saga_executions (saga_id, saga_name, status, context, '
            f"attempt, owner, created_at, updated_at, {DERIVED_COLUMNS}) VALUES ($1, $2, $3, "
            "'{}', 1, 'w', $4, $4, "
            + derived_values("$3::text", "NULL::jsonb", "$4::timestamptz")
            + ")",
            [(saga_id, name, status.value, old) for saga_id, name, status in sagas],
        )
    finally:
        await conn.close()
    assert await store.upgrade_schema() == SchemaVersions(13, SCHEMA_VERSION)
    assert (await _indexes(postgres_dsn, schema))["saga_executions_by_name"].endswith(_BY_NAME)
    async with store:
        # a saga started and finished after the upgrade, one started only
        for saga_id in ("new-done", "new-running"):
            record = SagaRecord(saga_id, "order", SagaStatus.RUNNING, {}, owner="w")
            await store.create_saga(record)
            if saga_id == "new-done":
                record.status = SagaStatus.COMPLETED
                step = StepRecord(saga_id, "one", StepStatus.COMPLETED)
                await store.save_checkpoint(record, [step])
        every = [*sagas, ("new-done", "order", SagaStatus.COMPLETED)]
        every.append(("new-running", "order", SagaStatus.RUNNING))
        newest = every[::-1]
        for name in ("order", "payment"):
            expected = [i for i, n, _ in newest if n == name]
            found = await store.list_sagas(saga_name=name)
            assert [r.saga_id for r in found] == expected
            # a page at a time: the active ones and the finished ones merged, newest first
            pages: list[str] = []
            after: str | None = None
            while True:
                page = await store.list_sagas(saga_name=name, after=after, limit=4)
                pages += [r.saga_id for r in page]
                if len(page) < 4:
                    break
                after = page[-1].saga_id
            assert pages == expected
            for status in SagaStatus:
                by_both = await store.list_sagas(saga_name=name, status=status, limit=3)
                want = [i for i, n, s in newest if n == name and s is status][:3]
                assert [r.saga_id for r in by_both] == want, status
        assert [r.saga_id for r in await store.list_sagas(saga_name="order-saga")] == ["old"]
        assert await store.list_sagas(saga_name="nope") == []
