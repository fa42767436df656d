"""The PostgreSQL store's saga rows are updated in place where they can be (schema 11): a
saga's start (pending -> running) changes no indexed column, so the server writes it as a
HOT update, without a new entry in any index; its finish must move it between the partial
indexes and is not. A schema 10 is upgraded to that layout with its rows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from sagaz.clock import utcnow
from sagaz.records import SagaRecord, SchemaVersions, StepRecord
from sagaz.storage.postgres import PostgresSagaStore
from sagaz.storage.postgres_schema import SCHEMA_VERSION
from sagaz.types import SagaStatus, StepStatus
from tests.schema_support import make_outdated
from tests.services import drop_postgres_schema, unique_name

_SAGAS = 10
_FINISHED = {SagaStatus.COMPENSATED, SagaStatus.FAILED, SagaStatus.CANCELLED}


@pytest.fixture
async def schema(postgres_dsn: str) -> AsyncIterator[str]:
    name = unique_name("sagaz_hot")
    try:
        yield name
    finally:
        await drop_postgres_schema(postgres_dsn, name)


async def _run_sagas(store: PostgresSagaStore, prefix: str) -> None:
    """``_SAGAS`` sagas through the engine's three writes: the event's claim with its pending
    row (keeping the event), the start (running, the event no longer kept), the finish."""
    lease = utcnow() + timedelta(minutes=5)
    for n in range(_SAGAS):
        saga_id = f"{prefix}{n}"
        record = SagaRecord(
            saga_id, "order", SagaStatus.PENDING, {"n": n}, trigger_id="t", event={"id": n},
            owner="w", lease_expires_at=lease,
        )  # fmt: skip
        await store.claim_event("t", saga_id, record)
        record.status, record.event = SagaStatus.RUNNING, None
        await store.save_checkpoint(record, [StepRecord(saga_id, "one", StepStatus.RUNNING)])
        record.status = SagaStatus.COMPLETED
        done = [StepRecord(saga_id, "one", StepStatus.COMPLETED)]
        await store.save_checkpoint(record, done, complete_inbox=("t", saga_id))


async def _updates(dsn: str, schema: str, expected: int) -> tuple[int, int]:
    """``saga_executions``' updates and HOT updates, once its ``expected`` updates are counted
    (each backend reports its counts by the time it exits: the store is stopped)."""
    conn = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(30):
            while True:
                row: Any = await conn.fetchrow(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                    "WHERE schemaname = $1 AND relname = 'saga_executions'",
                    schema,
                )
                if row["n_tup_upd"] >= expected:
                    return int(row["n_tup_upd"]), int(row["n_tup_hot_upd"])
                await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def test_a_sagas_start_is_a_hot_update_and_its_finish_is_not(
    postgres_dsn: str, schema: str
) -> None:
    async with PostgresSagaStore(postgres_dsn, schema=schema) as store:
        await _run_sagas(store, "s")
    updates, hot = await _updates(postgres_dsn, schema, 2 * _SAGAS)
    assert (updates, hot) == (2 * _SAGAS, _SAGAS)


async def test_a_version_10_schema_is_upgraded_with_its_rows_and_its_updates_are_hot(
    postgres_dsn: str, schema: str
) -> None:
    store = PostgresSagaStore(postgres_dsn, schema=schema)
    assert await make_outdated(store, 10) == 10  # one completed saga, "old"
    old = utcnow() - timedelta(days=30)
    conn = await asyncpg.connect(postgres_dsn)
    try:  # sagas of every status as sagaz 10 left them, a finished one keeping its event
        await conn.executemany(
            f'INSERT INTO "{schema}".saga_executions (saga_id, saga_name, status, context, '
            "attempt, event, owner, created_at, updated_at) "
            "VALUES ($1, 'order', $1, '{}', 1, $2::jsonb, $3, $4, $4)",
            [
                (status.value, '{"id": 1}', None if status in _FINISHED else "w", old)
                for status in SagaStatus
                if status is not SagaStatus.COMPLETED
            ],
        )
    finally:
        await conn.close()
    assert await store.upgrade_schema() == SchemaVersions(10, SCHEMA_VERSION)
    async with store:
        for status in SagaStatus:
            expected = ["old"] if status is SagaStatus.COMPLETED else [status.value]
            assert [r.saga_id for r in await store.list_sagas(status=status)] == expected
        recoverable = await store.list_recoverable(utcnow())
        assert [r.saga_id for r in recoverable] == ["pending", "running", "compensating"]
        assert await store.renew_leases("w", utcnow() + timedelta(minutes=1)) == 3
        # the finished sagas' events are found by the moment they finished
        assert await store.purge_expired(utcnow() - timedelta(days=1)) == 3
        failed, running = await store.get_saga("failed"), await store.get_saga("running")
        assert failed is not None and failed.event is None
        assert running is not None and running.event == {"id": 1}
        await _run_sagas(store, "new")
    # the renewals (HOT: only leases change), the events cleared (not), the new sagas
    updates = await _updates(postgres_dsn, schema, 3 + 3 + 2 * _SAGAS)
    assert updates == (3 + 3 + 2 * _SAGAS, 3 + _SAGAS)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        options = await conn.fetchval(
            "SELECT reloptions FROM pg_class WHERE oid = $1::regclass",
            f'"{schema}".saga_executions',
        )
    finally:
        await conn.close()
    assert "fillfactor=70" in options
