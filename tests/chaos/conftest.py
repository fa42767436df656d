"""Fixtures of the chaos suite: the side-effect table, a PostgreSQL schema for the store,
and the seeded random source of the kill moments (``SAGAZ_CHAOS_SEED`` replays a run)."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.chaos.side_effects import SideEffectTable
from tests.services import drop_postgres_schema, unique_name


@pytest.fixture
def chaos_rng() -> random.Random:
    """The random source of the kill moments; its seed is printed (shown on failure)."""
    seed = int(os.environ.get("SAGAZ_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed: {seed} (replay with SAGAZ_CHAOS_SEED={seed})")
    return random.Random(seed)


@pytest.fixture
async def side_effects(postgres_dsn: str) -> AsyncIterator[SideEffectTable]:
    """A new side-effect table, dropped after the test."""
    conn = await asyncpg.connect(postgres_dsn)
    table = SideEffectTable(conn, unique_name("chaos_side").replace("-", "_"), postgres_dsn)
    await table.create()
    try:
        yield table
    finally:
        try:
            await table.drop()
        finally:
            await conn.close()


@pytest.fixture
async def postgres_store_url(postgres_dsn: str) -> AsyncIterator[str]:
    """A ``postgresql://...?schema=`` store URL on a new schema, dropped after the test."""
    schema = unique_name("chaos_store").replace("-", "_")
    yield f"{postgres_dsn}{'&' if '?' in postgres_dsn else '?'}schema={schema}"
    await drop_postgres_schema(postgres_dsn, schema)
