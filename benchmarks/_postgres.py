"""A throwaway PostgreSQL database for the benchmarks that run a store on the local server.

Each run gets a database of its own, created before and dropped (``WITH (FORCE)``) after, so
``pg_stat_database`` of that database counts the run's own transactions and nothing is left
behind. ``--postgres-dsn`` of the scripts names the server (any database on it: the maintenance
connections go there).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

__all__ = ["DEFAULT_DSN", "pg_commits", "pg_database", "throwaway_database"]

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


async def pg_commits(dsn: str, database: str) -> int:
    """``xact_commit`` of ``database`` (its backends report their counts when they exit)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database
        )
        return int(value or 0)
    finally:
        await conn.close()


async def pg_database(dsn: str, database: str, *, create: bool) -> None:
    """Create (or drop) the run's own database on the server of ``dsn``."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        if create:
            await conn.execute(f'CREATE DATABASE "{database}"')
        else:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def throwaway_database(dsn: str) -> AsyncIterator[str]:
    """A fresh database on the server of ``dsn``; yields its DSN, drops it on the way out."""
    database = f"sagaz_bench_{uuid.uuid4().hex[:8]}"
    await pg_database(dsn, database, create=True)
    try:
        yield dsn.rsplit("/", 1)[0] + f"/{database}"
    finally:
        await pg_database(dsn, database, create=False)
