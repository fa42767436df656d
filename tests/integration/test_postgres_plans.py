"""The PostgreSQL store's group statements look inbox keys up by the primary key whatever
plan the server caches: a generic plan made while the table is new (never analyzed, taken
for 10 pages) must not join the keys by a hash over a scan of the whole inbox, a scan that
grows with the table for as long as the plan stays cached."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from sagaz.storage.postgres import PostgresSagaStore
from tests.services import unique_name

_T = "'{2026-01-01 00:00:00+00}'"


@pytest.fixture
async def store(postgres_dsn: str) -> AsyncIterator[PostgresSagaStore]:
    schema = unique_name("sagaz_plan")
    async with PostgresSagaStore(postgres_dsn, schema=schema) as store:
        try:
            yield store
        finally:
            conn = await asyncpg.connect(postgres_dsn)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()


async def _generic_plan(dsn: str, sql: str, args: str) -> str:
    """The plan the server would cache for ``sql`` (run with the literals ``args``)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE probe AS {sql}")
        rows = await conn.fetch(f"EXPLAIN EXECUTE probe({args})")
        return "\n".join(row[0] for row in rows)
    finally:
        await conn.close()


async def test_a_group_of_claims_and_completions_finds_inbox_rows_by_their_key(
    store: PostgresSagaStore, postgres_dsn: str
) -> None:
    # claims (6 arrays), then checkpoints that only complete inbox keys (3 arrays)
    sql = store._build_group_sql((True, False, False, (False, False, False, True)))
    claims = f"'{{t}}', '{{k1}}', '{{s1}}', '{{o}}', {_T}, {_T}"
    plan = await _generic_plan(postgres_dsn, sql, f"{claims}, '{{t}}', '{{k2}}', {_T}")
    assert "Seq Scan on inbox" not in plan, plan
    assert plan.count("Index Scan using inbox_pkey") == 2, plan  # the snapshot's, the completion's


async def test_a_checkpoint_completing_its_inbox_key_finds_the_row_by_its_key(
    store: PostgresSagaStore, postgres_dsn: str
) -> None:
    sql = store._build_checkpoint_sql(False, False, False, True)
    plan = await _generic_plan(postgres_dsn, sql, f"'{{t}}', '{{k}}', {_T}")
    assert "Seq Scan on inbox" not in plan, plan
    assert "Index Scan using inbox_pkey" in plan, plan
