"""The PostgreSQL store's key columns compare in byte order (``COLLATE "C"``, schema 12),
whatever the database's default collation: the server compares keys with ``memcmp`` instead
of a locale's ``strcoll``. A schema 11 is upgraded with its rows in place (no table is
rewritten), and the upgraded store finds every row by its keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from sagaz.clock import utcnow
from sagaz.records import (
    ClaimOutcome,
    SagaAction,
    SagaControlRequest,
    SagaHistoryRecord,
    SagaRecord,
    SchemaVersions,
    StepRecord,
)
from sagaz.storage.postgres import PostgresSagaStore
from sagaz.storage.postgres_schema import KEY_COLUMNS, SCHEMA_VERSION
from sagaz.types import SagaStatus, StepStatus
from tests.schema_support import make_outdated
from tests.services import drop_postgres_schema, unique_name

# keys whose byte order (uppercase, lowercase, then the accented letter's two bytes) is not
# the order of a linguistic collation (en_US: a, é, Z)
_KEYS = ("a", "Z", "é")


@pytest.fixture
async def schema(postgres_dsn: str) -> AsyncIterator[str]:
    name = unique_name("sagaz_coll")
    try:
        yield name
    finally:
        await drop_postgres_schema(postgres_dsn, name)


async def _collations(dsn: str, schema: str) -> dict[tuple[str, str], str | None]:
    """The collation of every text column of ``schema`` (None: the database's default)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name, collation_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND data_type = 'text'",
            schema,
        )
    finally:
        await conn.close()
    return {(r["table_name"], r["column_name"]): r["collation_name"] for r in rows}


async def _files(dsn: str, schema: str) -> dict[str, int]:
    """Each table's file (a rewrite gives it a new one)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT c.relname, c.relfilenode FROM pg_class AS c JOIN pg_namespace AS n "
            "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
            schema,
        )
    finally:
        await conn.close()
    return {r["relname"]: r["relfilenode"] for r in rows}


async def test_a_new_schemas_key_columns_compare_in_byte_order(
    postgres_dsn: str, schema: str
) -> None:
    async with PostgresSagaStore(postgres_dsn, schema=schema):
        pass
    collations = await _collations(postgres_dsn, schema)
    keys = {(table, column) for table, columns in KEY_COLUMNS.items() for column in columns}
    assert {key: collations[key] for key in keys} == dict.fromkeys(keys, "C")
    # every table with a saga id holds it in "C": a join by saga_id can use each one's index
    saga_ids = {key for key in collations if key[1] == "saga_id"}
    assert saga_ids <= keys and len(saga_ids) == 8


async def test_a_version_11_schema_is_upgraded_in_place_with_its_rows(
    postgres_dsn: str, schema: str
) -> None:
    store = PostgresSagaStore(postgres_dsn, schema=schema)
    assert await make_outdated(store, 11) == 11  # one completed saga, "old"
    moment, old = utcnow(), utcnow() - timedelta(days=30)
    conn = await asyncpg.connect(postgres_dsn)
    s = f'"{schema}"'
    try:  # rows of every table with a key column, as sagaz 11 left them
        for key in _KEYS:
            await conn.execute(
                f"INSERT INTO {s}.saga_executions (saga_id, saga_name, status, context, "
                "attempt, trigger_id, owner, lease_expires_at, created_at, updated_at, "
                "finished_at) VALUES ($1, 'order', 'completed', '{}', 1, 't', 'w', NULL, $2, "
                "$2, $2)",
                key,
                old,
            )
            await conn.execute(
                f"INSERT INTO {s}.saga_steps (saga_id, name, status, attempts, updated_at) "
                "VALUES ($1, $1, 'completed', 1, $2)",
                key,
                old,
            )
            await conn.execute(
                f"INSERT INTO {s}.inbox (trigger_id, key, saga_id, owner, status, created_at, "
                "completed_at) VALUES ('t', $1, $1, 'w', 'completed', $2, $2)",
                key,
                moment,
            )
            await conn.execute(
                f"INSERT INTO {s}.saga_history (saga_id, at, action) VALUES ($1, $2, 'x')",
                key,
                old,
            )
            await conn.execute(
                f"INSERT INTO {s}.saga_requests (saga_id, action, attempt, requested_at) "
                "VALUES ($1, 'cancel', 1, $2)",
                key,
                moment,
            )
            await conn.execute(
                f"INSERT INTO {s}.outbox (saga_id, topic, headers, created_at, sent_at) "
                "VALUES ($1, 'topic', '{}', $2, $2)",
                key,
                old,
            )
    finally:
        await conn.close()
    files = await _files(postgres_dsn, schema)
    assert await store.upgrade_schema() == SchemaVersions(11, SCHEMA_VERSION)
    assert await _files(postgres_dsn, schema) == files  # no table rewritten
    assert (await _collations(postgres_dsn, schema))[("inbox", "key")] == "C"
    async with store:
        for key in _KEYS:
            saga = await store.get_saga(key)
            assert saga is not None and saga.status is SagaStatus.COMPLETED
            assert [step.name for step in await store.get_steps(key)] == [key]
            claim = await store.claim_inbox("t", key, "other", "w2", utcnow() + timedelta(days=1))
            assert (claim.outcome, claim.saga_id) == (ClaimOutcome.DUPLICATE, key)
            assert [h.action for h in await store.list_saga_history(key)] == ["x"]
            assert len(await store.list_saga_outbox(key)) == 1
        # oldest first, then by saga id in byte order
        requests = await store.list_saga_requests()
        assert [r.saga_id for r in requests] == sorted(_KEYS, key=str.encode)
        assert await store.finish_saga_request("é", SagaAction.CANCEL)
        # the new rows go beside the old ones, the old keys found through the new indexes
        record = SagaRecord("é2", "order", SagaStatus.RUNNING, {}, owner="w")
        await store.create_saga(record)
        await store.save_checkpoint(record, [StepRecord("é2", "é", StepStatus.RUNNING)])
        await store.add_saga_history(SagaHistoryRecord("é", "y"))
        assert [h.action for h in await store.list_saga_history("é")] == ["x", "y"]
        await store.add_saga_request(SagaControlRequest("é2", SagaAction.CANCEL))
        # the finished saga without an open request ("a" and "Z" have one), each table's
        # rows by saga id
        assert await store.purge_sagas(utcnow()) == 1
        assert await store.get_saga("é") is None and await store.get_steps("é") == []
        assert await store.list_saga_history("é") == []
        assert await store.get_saga("a") is not None
