"""Databases left at an older schema version, as an older sagaz left them (the tests of
``sagaz db upgrade`` and of the stores that refuse to start on them)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sagaz.abc import SagaStore
from sagaz.records import SagaRecord
from sagaz.storage import PostgresSagaStore, RedisSagaStore, SQLiteSagaStore
from sagaz.types import SagaStatus

__all__ = ["make_outdated", "rewind_schema"]


async def make_outdated(store: SagaStore, version: int | None = None) -> int:
    """Build, at ``store``'s empty location, the schema of the version before this sagaz's
    (of ``version``, for a PostgreSQL store), holding one completed saga ``"old"``; return
    that version."""
    if isinstance(store, SQLiteSagaStore):
        from sagaz.storage import sqlite_schema as tables

        conn = sqlite3.connect(store.path, isolation_level=None)
        try:  # the DDL of every migration but the last, as an older sagaz left it
            conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at)")
            for version, statements in tables.MIGRATIONS[:-1]:
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version VALUES (?, '')", (version,))
            conn.execute(
                "INSERT INTO saga_executions (saga_id, saga_name, status, context, attempt, "
                "created_at, updated_at) VALUES ('old', 'order-saga', 'completed', '{}', 1, "
                "'2024-01-01T00:00:00.000000+00:00', '2024-01-01T00:00:00.000000+00:00')"
            )
        finally:
            conn.close()
        return tables.MIGRATIONS[-2][0]
    if isinstance(store, PostgresSagaStore):
        import asyncpg

        from sagaz.storage import postgres_schema as tables

        s = tables.quote_schema(store.schema)
        conn = await asyncpg.connect(store.dsn)
        try:
            await conn.execute(f"CREATE SCHEMA {s}")
            await conn.execute(f"CREATE TABLE {s}.schema_version (version integer PRIMARY KEY)")
            if version is None:
                version = tables.MIGRATIONS[-2][0]
            for number, statements in tables.MIGRATIONS:
                if number > version:
                    break
                for statement in statements:
                    await conn.execute(statement.replace("{s}", s))
                await conn.execute(f"INSERT INTO {s}.schema_version VALUES ($1)", number)
            await conn.execute(
                f"INSERT INTO {s}.saga_executions (saga_id, saga_name, status, context, attempt, "
                "created_at, updated_at) VALUES ('old', 'order-saga', 'completed', '{}', 1, "
                "now(), now())"
            )
        finally:
            await conn.close()
        return version
    assert isinstance(store, RedisSagaStore)
    import redis.asyncio as redis

    from sagaz.storage import redis_schema

    async with store:  # the layout has no DDL: a store of this version, its version set back
        await store.create_saga(SagaRecord("old", "order-saga", SagaStatus.COMPLETED, {}))
    client = redis.Redis.from_url(store.url)
    try:
        await client.set(f"{store.prefix}:schema_version", redis_schema.SCHEMA_VERSION - 1)
    finally:
        await client.aclose()
    return redis_schema.SCHEMA_VERSION - 1


async def rewind_schema(
    store: SagaStore,
    version: int,
    *,
    drop: Sequence[tuple[str, str]] = (),
    redis_keys: Sequence[str] = (),
) -> None:
    """Make ``store``'s (stopped) storage look as a sagaz of schema ``version`` left it: drop
    ``drop`` (``("TABLE", name)`` or ``("INDEX", name)``) from a SQL store, delete
    ``redis_keys`` (without the prefix) from a Redis one, and set the version back."""
    if isinstance(store, SQLiteSagaStore):
        conn = sqlite3.connect(store.path)
        try:
            for kind, name in drop:
                conn.execute(f"DROP {kind} {name}")
            conn.execute("DELETE FROM schema_version WHERE version > ?", (version,))
            conn.commit()
        finally:
            conn.close()
    elif isinstance(store, PostgresSagaStore):
        import asyncpg

        s = f'"{store.schema}"'
        conn = await asyncpg.connect(store.dsn)
        try:
            for kind, name in drop:
                await conn.execute(f"DROP {kind} {s}.{name}")
            await conn.execute(f"DELETE FROM {s}.schema_version WHERE version > $1", version)
        finally:
            await conn.close()
    else:
        import redis.asyncio as redis

        assert isinstance(store, RedisSagaStore)
        client = redis.Redis.from_url(store.url)
        try:
            if redis_keys:
                await client.delete(*(f"{store.prefix}:{key}" for key in redis_keys))
            await client.set(f"{store.prefix}:schema_version", version)
        finally:
            await client.aclose()
